"""
The database agent: MariaDB role switching (promote, fence, rejoin) on a
database host, driven by the C{db} heartbeat group.

gtid (GTID positions and containment, pure), mariadb (the role operations
on one server, over PyMySQL in threads), machine (the agent's Automat state
machine, no I/O), agent (the service: checks, timers, actions), commands
(the control commands and clickpass-ctl words).
"""

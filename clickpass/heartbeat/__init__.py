"""
The heartbeat: peer groups that move virtual IP addresses.

wire (packets), machine (the per-group state machine), group (timers and
decisions around one machine), transport (UDP), actions (VIP, ARP, hooks),
engine (the heartbeat process), service (the node's side of it).
"""

"""
The MariaDB role operations the database agent needs, on one server: read
its GTID, replication and semi-sync state; configure it as a replica;
promote it; fence it; rejoin it; quarantine it.

Every operation opens a fresh PyMySQL connection in a thread of the agent's
own thread pool, with its own connect and read timeouts, and closes it
afterwards: a watchdog must never wait on a connection left half-way by a
server that froze or died. An operation of several steps (a promotion, a
rejoin's wait) runs them all on its one connection. Nothing here runs blocking code on the reactor
thread, and nothing here decides anything: L{clickpass.dbagent.agent}
decides, this module does what it is told and says what it saw.

This module must never turn semi-sync off while writes wait for an
acknowledgement on a server that may still be a primary (that would
acknowledge writes the replica never received); L{fence} kills the waiting
clients first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pymysql

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from clickpass.dbagent.gtid import Position, errant
from clickpass.storage.client_programs import dump_gtid_position, option_file

T = TypeVar("T")

# Milliseconds: long enough that MariaDB never falls back to asynchronous
# replication by itself. The agent decides when the primary goes on alone.
SEMISYNC_TIMEOUT_MS = 3_600_000

# Error 1236 from the primary: the replica asked for a GTID the primary's
# binlog does not hold (diverged history, or purged binlogs).
ER_MASTER_FATAL_READING_BINLOG = 1236

# The applier's GTID errors: a history that cannot continue from this
# primary, which another rejoin cannot mend (an operator decides).
# 1945: start GTID not in the binlog; 1947/1948: gtid_slave_pos conflicts
# with the local binlog; 1950: out-of-order GTID in strict mode (a local
# transaction the primary lacks); 1951: the primary's binlog has a hole.
GTID_APPLIER_ERRORS = (1945, 1947, 1948, 1950, 1951)


# Schemas of the server itself, never copied by a re-clone.
SYSTEM_SCHEMAS = ("information_schema", "performance_schema", "mysql", "sys")

# Called from the operation's thread with the name of the step just done.
Mark = Callable[[str], None]

# The named lock (GET_LOCK, one per server, released with its connection)
# that orders, on the server of a primary fenced by its peer, that primary
# lifting the fence (L{lift_fence}) against the peer's promotion checking
# the fence still holds (L{guard_fence}) and against any fence (L{fence}).
FENCE_LOCK = "clickpass_dbagent_fence"


class OperationFailed(Exception):
    """A role operation did not complete; the message is one line for operators."""


class ServerGone(Exception):
    """
    Nothing answered at the server's address. C{certain}: the connection
    was refused (nothing listens: the server is not running there).
    Otherwise it was reset before the server's greeting, which is what a
    forwarder or proxy whose target is closed does, but also what a
    connection ended by the server's own KILL can look like: worth asking
    again. Never a timeout: a frozen server or a cut link times out, and is
    not known to be gone.
    """

    def __init__(self, message: str, certain: bool) -> None:
        super().__init__(message)
        self.certain = certain


def nothing_listens(error: BaseException) -> bool | None:
    """
    Whether a failed connect says no server listens: True when refused
    (or the unix socket is missing), False when reset before the greeting,
    None when it says nothing of the kind (a timeout, a refusal by the
    server itself, a clean close).
    """
    if not isinstance(error, pymysql.err.OperationalError) or not error.args:
        return None
    code, text = error.args[0], str(error).lower()
    if code not in (2002, 2003, 2013) or "timed out" in text:
        return None
    if "refused" in text or "no such file" in text:
        return True
    if "reset by peer" in text:
        return False
    return None


def _noop(step: str) -> None:
    return None


@dataclass(frozen=True)
class ServerAddress:
    """How to reach a MariaDB server as an administrator."""

    host: str = "127.0.0.1"
    port: int = 3306
    unix_socket: str = ""
    user: str = "root"
    password: str = ""

    def describe(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ReplicaAccount:
    """What a replica needs to reach its primary (CHANGE MASTER TO)."""

    host: str
    port: int
    user: str
    password: str


@dataclass(frozen=True)
class ServerStatus:
    """One reading of a server's role state."""

    server_id: int = 0
    read_only: bool = True
    binlog_pos: Position = field(default_factory=Position)
    slave_pos: Position = field(default_factory=Position)
    current_pos: Position = field(default_factory=Position)
    replica_configured: bool = False
    io_running: str = "No"
    sql_running: str = "No"
    io_pos: Position = field(default_factory=Position)
    # Set from the primary's first event (its binlog's name): it accepted
    # the position asked for. Empty after CHANGE MASTER until then.
    master_log_file: str = ""
    master_host: str = ""
    master_port: int = 0
    last_io_errno: int = 0
    last_io_error: str = ""
    last_sql_errno: int = 0
    last_sql_error: str = ""
    seconds_behind: int | None = None
    semisync_master_enabled: bool = False
    semisync_master_active: bool = False
    semisync_master_clients: int = 0
    semisync_slave_enabled: bool = False
    semisync_slave_active: bool = False

    @property
    def replicating(self) -> bool:
        return self.io_running == "Yes" and self.sql_running == "Yes"

    @property
    def streaming(self) -> bool:
        """
        Replicating, and the primary has started sending its binlog: both
        threads run for a moment before a primary refuses our position
        (error 1236), so running alone does not say the rejoin worked.
        """
        return self.replicating and bool(self.master_log_file)

    @property
    def received_pos(self) -> Position:
        """
        What the replica holds in its relay log or has applied: what a
        semi-sync acknowledgement covers (C{Gtid_IO_Pos}, or the applied
        position where it is further, as right after a restart).
        """
        return self.io_pos.union(self.slave_pos)

    @property
    def applied_received(self) -> bool:
        """Whether everything the replica received has been applied."""
        return self.slave_pos.reached(self.io_pos)

    def as_dict(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "read_only": self.read_only,
            "gtid_binlog_pos": str(self.binlog_pos),
            "gtid_slave_pos": str(self.slave_pos),
            "gtid_current_pos": str(self.current_pos),
            "gtid_io_pos": str(self.io_pos),
            "replication": {
                "configured": self.replica_configured,
                "primary": f"{self.master_host}:{self.master_port}" if self.master_host else "",
                "io_running": self.io_running,
                "sql_running": self.sql_running,
                "seconds_behind": self.seconds_behind,
                "transactions_behind": self.slave_pos.transactions_behind(self.io_pos),
                "last_io_error": self.last_io_error,
                "last_sql_error": self.last_sql_error,
            },
            "semi_sync": {
                "master_enabled": self.semisync_master_enabled,
                "master_active": self.semisync_master_active,
                "master_clients": self.semisync_master_clients,
                "slave_enabled": self.semisync_slave_enabled,
                "slave_active": self.semisync_slave_active,
            },
        }


Cursor = Any


def _on(value: object) -> bool:
    return str(value).upper() in ("1", "ON", "YES", "TRUE")


def read_status(c: Cursor) -> ServerStatus:
    """Read a server's role state (blocking; in a pool thread)."""
    c.execute(
        "SELECT @@server_id, @@read_only, @@gtid_binlog_pos, @@gtid_slave_pos, "
        "@@gtid_current_pos, @@rpl_semi_sync_master_enabled, @@rpl_semi_sync_slave_enabled"
    )
    server_id, read_only, binlog, slave, current, ss_master, ss_slave = c.fetchone()
    c.execute(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_status', "
        "'Rpl_semi_sync_master_clients', 'Rpl_semi_sync_slave_status')"
    )
    counters = {str(name): value for name, value in c.fetchall()}
    c.execute("SHOW SLAVE STATUS")
    row = c.fetchone()
    replica: dict[str, Any] = {}
    if row is not None:
        replica = {d[0]: v for d, v in zip(c.description, row, strict=False)}
    behind = replica.get("Seconds_Behind_Master")
    return ServerStatus(
        server_id=int(server_id),
        read_only=_on(read_only),
        binlog_pos=Position.parse(binlog),
        slave_pos=Position.parse(slave),
        current_pos=Position.parse(current),
        replica_configured=row is not None,
        io_running=str(replica.get("Slave_IO_Running") or "No"),
        sql_running=str(replica.get("Slave_SQL_Running") or "No"),
        io_pos=Position.parse(replica.get("Gtid_IO_Pos") or ""),
        master_log_file=str(replica.get("Master_Log_File") or ""),
        master_host=str(replica.get("Master_Host") or ""),
        master_port=int(replica.get("Master_Port") or 0),
        last_io_errno=int(replica.get("Last_IO_Errno") or 0),
        last_io_error=str(replica.get("Last_IO_Error") or ""),
        last_sql_errno=int(replica.get("Last_SQL_Errno") or 0),
        last_sql_error=str(replica.get("Last_SQL_Error") or ""),
        seconds_behind=None if behind is None else int(behind),
        semisync_master_enabled=_on(ss_master),
        semisync_master_active=_on(counters.get("Rpl_semi_sync_master_status", "OFF")),
        semisync_master_clients=int(counters.get("Rpl_semi_sync_master_clients", 0) or 0),
        semisync_slave_enabled=_on(ss_slave),
        semisync_slave_active=_on(counters.get("Rpl_semi_sync_slave_status", "OFF")),
    )


def ping(c: Cursor) -> bool:
    """The fast health check: the server answers and says whether it is read-only."""
    c.execute("SELECT @@read_only")
    (read_only,) = c.fetchone()
    return _on(read_only)


def configure_replica(
    c: Cursor, primary: ReplicaAccount, from_own_binlog: bool, checked: Position | None = None
) -> None:
    """
    Make the server a read-only, semi-sync, GTID-strict replica of
    C{primary} and start replicating. With C{from_own_binlog}, replication
    resumes after everything this server's binlog holds (a former primary
    whose history was checked to be contained in the new primary's).
    C{checked}: the binlog position that check was made on; if the binlog
    holds anything else by now, nothing is started (L{OperationFailed}).
    """
    c.execute("SET GLOBAL read_only = ON")
    c.execute("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
    c.execute("STOP SLAVE")
    c.execute("SET GLOBAL gtid_strict_mode = ON")
    c.execute("SET GLOBAL sync_relay_log = 1")
    c.execute("SET GLOBAL rpl_semi_sync_slave_enabled = ON")
    if checked is not None:
        c.execute("SET GLOBAL gtid_slave_pos = %s", (str(checked),))
        c.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        (binlog,) = c.fetchone()
        if Position.parse(binlog) != checked:
            raise OperationFailed(
                f"the local binlog moved to {Position.parse(binlog)} after it was checked at "
                f"{checked}; not replicating"
            )
    elif from_own_binlog:
        c.execute("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos")
    c.execute(
        "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
        "MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, "
        "MASTER_HEARTBEAT_PERIOD = 0.5",
        (primary.host, primary.port, primary.user, primary.password),
    )
    c.execute("START SLAVE")


def _always() -> bool:
    return True


def promote(
    c: Cursor,
    wait_seconds: float,
    semisync: bool,
    mark: Mark = _noop,
    proceed: Callable[[], bool] = _always,
    guard: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> Position:
    """
    Turn a replica into the primary without losing what it received: stop
    receiving, wait until the relay log is applied (MASTER_GTID_WAIT to the
    received position), make it writable, then forget the old primary. Semi-sync
    master (AFTER_SYNC, no silent fallback) is enabled when C{semisync}.
    Returns the GTID position it started as primary from. C{mark} hears
    each step's name as it is done (the failover timeline); C{proceed} is
    asked (from this thread) right before the server is made writable, and
    C{guard} is held around that question and C{read_only = OFF} (the
    agent's L{guard_fence} on the old primary: it still refuses writes, and
    it cannot lift its fence until this server is writable).
    """
    status = read_status(c)
    if status.replica_configured:
        stop_receiving(c, status)
        mark("STOP SLAVE IO_THREAD")
        status = read_status(c)
        target = status.io_pos
        if target:
            c.execute("SELECT MASTER_GTID_WAIT(%s, %s)", (str(target), wait_seconds))
            (waited,) = c.fetchone()
            mark("MASTER_GTID_WAIT")
            if int(waited) != 0:
                after = read_status(c)
                raise OperationFailed(
                    f"the relay log was not applied within {wait_seconds:g}s (received "
                    f"{target}, applied {after.slave_pos}"
                    + (f"; applier error: {after.last_sql_error}" if after.last_sql_error else "")
                    + "); not promoting"
                )
        c.execute("STOP SLAVE")
        mark("STOP SLAVE")
    set_semisync_master(c, semisync)
    with guard():
        if not proceed():
            # The agent gave the promotion up meanwhile (demoted, server
            # down): its fence follows, and this connection is one it ends
            # first.
            raise OperationFailed("the promotion was given up; staying read-only")
        c.execute("SET GLOBAL read_only = OFF")
    mark("read_only OFF")
    if status.replica_configured:
        # Only once writable: a promotion given up before keeps its
        # replica's configuration (stopped), so the next one is again a
        # replica's promotion (the old primary fenced and guarded), never
        # taken for a first start's bootstrap, which a dead peer refuses.
        c.execute("RESET SLAVE ALL")
        mark("RESET SLAVE ALL")
    c.execute("SELECT @@gtid_binlog_pos")
    (binlog,) = c.fetchone()
    return Position.parse(binlog)


def stop_receiving(c: Cursor, status: ServerStatus | None = None) -> None:
    """
    Stop the replica's receiver, keeping its applier running. The receiver
    of a primary that vanished (a cut link) stops only when its read times
    out (slave_net_timeout) unless its thread is killed, as here; a
    promotion starts this as soon as it finds the old primary unreachable,
    while it waits for the fence.
    """
    status = status or read_status(c)
    if not status.replica_configured:
        return
    if status.sql_running != "Yes":
        # Start the applier while the receiver still runs: in GTID mode,
        # starting a slave whose two threads are both stopped throws the
        # relay log away and fetches again from gtid_slave_pos, from a
        # primary that may be gone (acknowledged writes would be lost).
        c.execute("START SLAVE SQL_THREAD")
    # STOP SLAVE IO_THREAD alone waits for the receiver's read to time out
    # on a cut link (measured 2 s with slave_net_timeout 1); KILL of the
    # receiver's thread ends that read at once, and the STOP that follows
    # only confirms it. What it had written to the relay log stays.
    c.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'")
    for (thread_id,) in c.fetchall():
        try:
            c.execute("KILL %s", (int(thread_id),))
        except pymysql.err.OperationalError as e:
            if not e.args or e.args[0] != 1094:  # unknown thread: it ended by itself
                raise
    c.execute("STOP SLAVE IO_THREAD")


def set_semisync_master(c: Cursor, on: bool) -> None:
    """Enable lossless semi-sync master (AFTER_SYNC, no silent fallback), or turn it off."""
    if on:
        c.execute("SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC")
        c.execute("SET GLOBAL rpl_semi_sync_master_timeout = %s", (SEMISYNC_TIMEOUT_MS,))
        c.execute("SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON")
        c.execute("SET GLOBAL rpl_semi_sync_master_enabled = ON")
    else:
        c.execute("SET GLOBAL rpl_semi_sync_master_enabled = OFF")


def kill_clients(c: Cursor) -> int:
    """
    End every client connection but this one and the replication threads,
    so that no write waiting on this server can still be acknowledged.
    Returns how many were killed.
    """
    c.execute("SELECT CONNECTION_ID()")
    (me,) = c.fetchone()
    c.execute(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> %s AND COMMAND NOT IN "
        "('Daemon', 'Binlog Dump', 'Slave_IO', 'Slave_SQL', 'Slave_worker') "
        "AND USER NOT IN ('system user', 'event_scheduler')",
        (me,),
    )
    killed = 0
    for (thread_id,) in c.fetchall():
        try:
            c.execute("KILL CONNECTION %s", (int(thread_id),))
            killed += 1
        except pymysql.err.OperationalError as e:
            if e.args and e.args[0] == 1094:  # unknown thread: it ended by itself
                continue
            raise
    return killed


def end_clients(c: Cursor, wait: float) -> int:
    """
    L{kill_clients}, then wait up to C{wait} seconds (every 10 ms) until
    the killed connections are gone: a KILL returns at once, and the
    connection closes only when its thread notices (a commit waiting for a
    semi-sync acknowledgement, a busy server). Returns how many were killed.
    """
    killed = kill_clients(c)
    deadline = time.monotonic() + wait
    while killed and time.monotonic() < deadline:
        c.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Killed'")
        (left,) = c.fetchone()
        if not left:
            break
        time.sleep(0.01)
    return killed


def drain_writes(c: Cursor, wait: float, lock_wait: int = 1) -> int:
    """
    A planned switchover's first step on the primary, ending nobody:
    read-only first (C{SET GLOBAL read_only} waits, at most C{lock_wait}
    seconds, for the writes and COMMITs under way, which get their OK),
    then up to C{wait} seconds, every 10 ms, for the clients' open
    transactions to end: from now on MariaDB refuses their writes and their
    COMMIT as read-only (1290) and rolls them back, a clean refusal the
    application runs again on the new primary, where a KILL would have cut
    a COMMIT with an unknown outcome. Returns how many client transactions
    were still open at the end. A 1205 (a COMMIT waiting for a semi-sync
    acknowledgement holds the commit lock) is raised: the fence then ends
    the clients first, as in a failover.
    """
    c.execute("SET SESSION lock_wait_timeout = %s", (max(1, int(lock_wait)),))
    c.execute("SET GLOBAL read_only = ON")
    c.execute("SELECT CONNECTION_ID()")
    (me,) = c.fetchone()
    deadline = time.monotonic() + wait
    while True:
        c.execute(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id <> %s",
            (me,),
        )
        (left,) = c.fetchone()
        if not left or time.monotonic() >= deadline:
            return int(left)
        time.sleep(0.01)


def resume_writes(c: Cursor, still_primary: Callable[[], bool]) -> bool:
    """
    Undo L{drain_writes} when the switchover it prepared did not happen:
    writable again only if C{still_primary()}, asked just before (this host
    still holds the role and hears no other primary), and only while
    holding L{FENCE_LOCK}: a peer promoting after all holds it at its last
    check (L{guard_fence}), and then this stays read-only (the agent's lift
    of a fence decides later). Returns whether it did.
    """
    c.execute("SELECT GET_LOCK(%s, 0)", (FENCE_LOCK,))
    (got,) = c.fetchone()
    if got != 1 or not still_primary():
        return False
    c.execute("SET GLOBAL read_only = OFF")
    return True


def fence(c: Cursor, attempts: int = 3, lock_wait: float = 1.0) -> int:
    """
    Make the server refuse writes. The clients are ended first: a write
    waiting for a semi-sync acknowledgement holds the commit lock that
    C{read_only = ON} needs, and ending its connection gives it an error,
    never an OK. Then read-only (each try bounded by C{lock_wait} seconds,
    ending the clients again between tries), then semi-sync master off.
    Replication is left as it is. Returns how many connections were ended.
    """
    c.execute("SET SESSION lock_wait_timeout = %s", (max(1, round(lock_wait)),))
    killed = 0
    for attempt in range(attempts):
        killed += kill_clients(c)
        if attempt == 0:
            # A lift of a fence (L{lift_fence}) holds the lock while it
            # decides: the KILL above ended its connection, and the lock is
            # free only once that connection's statement is over, so its
            # read_only = OFF can never land after ours. Best effort: a
            # fence never waits on the lock longer than this.
            c.execute("SELECT GET_LOCK(%s, %s)", (FENCE_LOCK, lock_wait))
            c.fetchone()
        try:
            c.execute("SET GLOBAL read_only = ON")
            break
        except pymysql.err.OperationalError as e:
            # 1205: lock wait timeout; a new write slipped in. End it and retry.
            if not e.args or e.args[0] != 1205 or attempt + 1 == attempts:
                raise
    c.execute("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
    return killed


def fence_if_writable(
    c: Cursor, fence_it: bool, attempts: int = 3, lock_wait: float = 1.0
) -> tuple[ServerStatus, bool]:
    """
    Read the server's state and, when it is writable and C{fence_it}, fence
    it (L{fence}) on the same connection. Returns the state read first and
    whether it was fenced.
    """
    status = read_status(c)
    if status.read_only or not fence_it:
        return status, False
    fence(c, attempts, lock_wait)
    return status, True


def guard_fence(c: Cursor, wait: float, attempts: int = 3, lock_wait: float = 1.0) -> bool:
    """
    A promotion's last look at the old primary, on a connection the
    promotion holds open while it makes its own server writable (see
    L{promote}'s C{guard}): take L{FENCE_LOCK} there (waiting up to
    C{wait} seconds for a lift under way to finish), then fence it again
    if it is writable by now (its agent lifted a fence an earlier, given
    up promotion left). While the lock is held its agent cannot lift the
    fence; once this server is writable, no lift will (L{lift_fence} finds
    it writable). Returns whether it had to fence again.
    """
    c.execute("SELECT GET_LOCK(%s, %s)", (FENCE_LOCK, wait))
    (got,) = c.fetchone()
    if got != 1:
        raise OperationFailed(
            f"the old primary's fence lock is held by another connection after {wait:g}s"
        )
    _, fenced = fence_if_writable(c, True, attempts, lock_wait)
    return fenced


def lift_fence(
    c: Cursor,
    read_peer: Callable[[], ServerStatus],
    still_primary: Callable[[], bool],
    semisync: bool,
) -> str:
    """
    Make a primary its peer fenced (and gave its promotion up) writable
    again, on one connection, holding L{FENCE_LOCK} from the moment it
    decides to the moment it is writable: a peer's promotion checks the
    fence under the same lock (L{guard_fence}) right before it makes its
    own server writable, so either it finds this server writable and
    fences it again, or this finds the peer writable and does nothing.

    C{read_peer} reads the peer's server (from this thread); it must
    answer, be read-only, and hold no transaction this server lacks (it
    took no writes as a primary). C{still_primary} is asked last, just
    before the change. Semi-sync master is set to C{semisync} before
    C{read_only = OFF}, so no write is acknowledged that the replica did
    not receive. Returns "" when writable again, else why not (nothing
    changed).
    """
    c.execute("SELECT GET_LOCK(%s, 0)", (FENCE_LOCK,))
    (got,) = c.fetchone()
    if got != 1:
        return "the fence lock is held (the peer is promoting)"
    try:
        try:
            peer = read_peer()
        except Exception as e:
            error = " ".join(str(e).split()) or type(e).__name__
            return f"the peer's server does not answer ({error})"
        if not peer.read_only:
            return "the peer's server is writable"
        local = read_status(c)
        if not local.read_only:
            return "already writable"
        if not local.binlog_pos.reached(peer.binlog_pos):
            return (
                f"the peer holds transactions this server lacks ({peer.binlog_pos} against "
                f"{local.binlog_pos})"
            )
        if not still_primary():
            return "no longer the primary"
        set_semisync_master(c, semisync)
        c.execute("SET GLOBAL read_only = OFF")
        return ""
    finally:
        c.execute("SELECT RELEASE_LOCK(%s)", (FENCE_LOCK,))
        c.fetchone()


def quarantine(c: Cursor) -> None:
    """Read-only and not replicating: held for an operator."""
    c.execute("SET GLOBAL read_only = ON")
    c.execute("STOP SLAVE")
    c.execute("SET GLOBAL rpl_semi_sync_master_enabled = OFF")


def stop_replica(c: Cursor) -> None:
    c.execute("STOP SLAVE")


def wait_replicating(c: Cursor, seconds: float, every: float = 0.02) -> ServerStatus:
    """
    Read the replica's status every C{every} seconds, on this one
    connection, until the primary streams to it (L{ServerStatus.streaming})
    with semi-sync acknowledging, its history cannot continue from the
    primary's (L{divergence}), or C{seconds} pass; returns the last
    reading (the caller decides which it was).
    """
    deadline = time.monotonic() + seconds
    while True:
        status = read_status(c)
        if (status.streaming and status.semisync_slave_active) or diverged(status):
            return status
        if time.monotonic() >= deadline:
            return status
        time.sleep(every)


def application_schemas(c: Cursor) -> list[str]:
    """The server's schemas that hold data (every one but the server's own)."""
    c.execute("SHOW DATABASES")
    return sorted(str(name) for (name,) in c.fetchall() if str(name) not in SYSTEM_SCHEMAS)


def drop_schemas(c: Cursor) -> list[str]:
    """Drop every application schema, outside the binlog (a re-clone's first step)."""
    c.execute("SET SESSION sql_log_bin = 0")
    schemas = application_schemas(c)
    for name in schemas:
        c.execute(f"DROP DATABASE `{name}`")
    return schemas


def reset_gtid_state(c: Cursor, position: str) -> Position:
    """
    After a re-clone: an empty binlog whose GTID state is the copy's
    position, and the replica position there too, so the server holds
    exactly the primary's history up to the copy and resumes after it.
    """
    target = Position.parse(position)
    c.execute("RESET MASTER")
    c.execute("SET GLOBAL gtid_binlog_state = %s", (str(target),))
    c.execute("SET GLOBAL gtid_slave_pos = %s", (str(target),))
    c.execute("SELECT @@gtid_binlog_pos")
    (binlog,) = c.fetchone()
    return Position.parse(binlog)


def forget_primary(c: Cursor) -> None:
    """Read-only, not replicating, no primary configured (a re-clone starts here)."""
    c.execute("SET GLOBAL read_only = ON")
    c.execute("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
    c.execute("STOP SLAVE")
    c.execute("RESET SLAVE ALL")


def dump_position(head: bytes) -> str:
    """The GTID position a C{mariadb-dump --gtid --master-data=2} copy was taken at."""
    found = dump_gtid_position(head)
    if not found:
        raise OperationFailed("the primary's dump names no GTID position (--gtid --master-data)")
    return str(Position.parse(found))


def _option_file(
    directory: Path, address: ServerAddress
) -> contextlib.AbstractContextManager[Path]:
    return option_file(
        directory, address.user, address.password, address.unix_socket, address.host, address.port
    )


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise OperationFailed(f"{names[0]} is not installed on this host (package mariadb-client)")


def copy_schemas(
    source: ServerAddress, target: ServerAddress, schemas: list[str], timeout: float
) -> str:
    """
    Copy C{schemas} from C{source} (the primary) into C{target} (read-only,
    not replicating, those schemas dropped): one consistent snapshot
    (C{mariadb-dump --single-transaction --gtid --master-data=2}) loaded
    outside the target's binlog. Blocking; returns the GTID position the
    snapshot was taken at.
    """
    dump = _tool("mariadb-dump", "mysqldump")
    client = _tool("mariadb", "mysql")
    with (
        tempfile.TemporaryDirectory(prefix="clickpass-reclone-") as scratch,
        _option_file(Path(scratch), source) as source_cnf,
        _option_file(Path(scratch), target) as target_cnf,
    ):
        copy = os.path.join(scratch, "copy.sql")
        started = time.monotonic()
        with open(copy, "wb") as out:
            done = subprocess.run(
                [
                    dump,
                    f"--defaults-extra-file={source_cnf}",
                    "--single-transaction",
                    "--gtid",
                    "--master-data=2",
                    "--routines",
                    "--events",
                    "--triggers",
                    "--databases",
                    *schemas,
                ],
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise OperationFailed(
                "dumping the primary failed: "
                + (" ".join(done.stderr.decode(errors="replace").split()) or "no message")
            )
        with open(copy, "rb") as f:
            position = dump_position(f.read(64 * 1024))
        left = max(1.0, timeout - (time.monotonic() - started))
        with open(copy, "rb") as source_sql:
            done = subprocess.run(
                [
                    client,
                    f"--defaults-extra-file={target_cnf}",
                    "--init-command=SET SESSION sql_log_bin = 0",
                    "--batch",
                ],
                stdin=source_sql,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=left,
                check=False,
            )
        if done.returncode != 0:
            raise OperationFailed(
                "loading the copy failed: "
                + (" ".join(done.stderr.decode(errors="replace").split()) or "no message")
            )
    return position


def rejoin_problems(local: ServerStatus, primary: ServerStatus) -> list[str]:
    """Why C{local} may not rejoin C{primary} as a replica (empty: it may)."""
    return errant(local.binlog_pos, primary.binlog_pos)


def rejoin(
    c: Cursor,
    primary: ReplicaAccount,
    primary_pos: Position | None,
    seconds: float,
    proceed: Callable[[], bool] = _always,
) -> tuple[list[str], ServerStatus]:
    """
    Rejoin C{primary} as its replica, on this one connection: read-only
    and not replicating first (so nothing but an administrator commits
    here any more, and a commit in flight has reached the binlog), then
    the local GTID state read now, never earlier, and checked against
    C{primary_pos} (None: not checked, an operator's rejoin --force), then
    replication from exactly the position checked. Returns the problems
    (nothing was started) or the replica's state after L{wait_replicating}.
    C{proceed} is asked (from this thread) before replication starts.
    """
    c.execute("SET GLOBAL read_only = ON")
    c.execute("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
    c.execute("STOP SLAVE")
    local = read_status(c)
    if primary_pos is not None:
        problems = errant(local.binlog_pos, primary_pos)
        if problems:
            return problems, local
    if not proceed():
        raise OperationFailed("the rejoin was given up; not replicating")
    configure_replica(c, primary, True, local.binlog_pos)
    return [], wait_replicating(c, seconds)


def divergence(status: ServerStatus) -> str:
    """
    Why the replica's history cannot continue from its primary's, from
    its replication errors (empty: no such error): the primary refused our
    position (1236 on connect), or the applier stopped on a GTID error
    (1950 out-of-order: a local transaction the primary lacks, and the
    like). Another rejoin cannot mend these.
    """
    if status.last_io_errno == ER_MASTER_FATAL_READING_BINLOG:
        return f"replication refused by the primary: {status.last_io_error}"
    sql_error = status.last_sql_error
    if status.last_sql_errno in GTID_APPLIER_ERRORS or (
        status.sql_running != "Yes" and "gtid" in sql_error.lower()
    ):
        return f"the applier stopped: error {status.last_sql_errno}: {sql_error}"
    return ""


def diverged(status: ServerStatus) -> bool:
    """The history cannot continue from the primary's (L{divergence})."""
    return bool(divergence(status))


class Server:
    """
    Role operations on one server, each on a fresh connection in a thread
    of C{pool}, returning Deferreds.
    """

    def __init__(
        self,
        reactor: Any,
        pool: ThreadPool,
        address: ServerAddress,
        connect_timeout: float = 1.0,
        read_timeout: float = 5.0,
    ) -> None:
        self.reactor = reactor
        self.pool = pool
        self.address = address
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def describe(self) -> str:
        return self.address.describe()

    def _connect(
        self, read_timeout: float, connect_timeout: float | None = None
    ) -> pymysql.connections.Connection[Any]:
        a = self.address
        options: dict[str, Any] = {
            "user": a.user,
            "password": a.password,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": min(self.connect_timeout, connect_timeout or read_timeout),
            "read_timeout": read_timeout,
            "write_timeout": read_timeout,
        }
        if a.unix_socket:
            options["unix_socket"] = a.unix_socket
        else:
            options["host"] = a.host
            options["port"] = a.port
        try:
            return pymysql.connect(**options)
        except pymysql.err.OperationalError as e:
            certain = nothing_listens(e)
            if certain is not None:
                raise ServerGone(
                    f"no server at {a.describe()} ({' '.join(str(e).split())})", certain
                ) from e
            raise

    def _blocking(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        read_timeout: float,
        connect_timeout: float | None = None,
    ) -> T:
        connection = self._connect(read_timeout, connect_timeout)
        try:
            with connection.cursor() as cursor:
                return fn(cursor, *args)
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Deferred[T]:
        """
        Run C{fn(cursor, *args)} on a fresh connection in the pool, within
        C{timeout} per read; connecting takes at most C{connect_timeout}
        (default: the server's, never more than C{timeout}).
        """
        d: Deferred[T] = deferToThreadPool(
            self.reactor,
            self.pool,
            self._blocking,
            fn,
            args,
            self.read_timeout if timeout is None else timeout,
            connect_timeout,
        )
        return d

    def in_thread(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run blocking C{fn(*args)} (no connection of ours) in the pool."""
        d: Deferred[T] = deferToThreadPool(self.reactor, self.pool, fn, *args)
        return d

    def blocking(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """
        C{fn(cursor, *args)} on a fresh connection, on the calling thread:
        only from inside another operation's thread (never the reactor's).
        """
        return self._blocking(fn, args, self.read_timeout if timeout is None else timeout)

    @contextlib.contextmanager
    def held(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> Iterator[T]:
        """
        C{fn(cursor, *args)} on a fresh connection, on the calling thread,
        the connection (and the locks it took) kept until the block ends.
        Only from inside another operation's thread.
        """
        connection = self._connect(self.read_timeout if timeout is None else timeout)
        try:
            with connection.cursor() as cursor:
                yield fn(cursor, *args)
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def status(self) -> Deferred[ServerStatus]:
        return self.call(read_status)

    def ping(self, timeout: float) -> Deferred[bool]:
        return self.call(ping, timeout=timeout)


__all__ = [
    "FENCE_LOCK",
    "SEMISYNC_TIMEOUT_MS",
    "SYSTEM_SCHEMAS",
    "Mark",
    "OperationFailed",
    "ReplicaAccount",
    "Server",
    "ServerAddress",
    "ServerGone",
    "ServerStatus",
    "application_schemas",
    "configure_replica",
    "copy_schemas",
    "diverged",
    "divergence",
    "drop_schemas",
    "dump_position",
    "end_clients",
    "fence",
    "fence_if_writable",
    "forget_primary",
    "guard_fence",
    "kill_clients",
    "lift_fence",
    "nothing_listens",
    "ping",
    "promote",
    "quarantine",
    "read_status",
    "rejoin",
    "rejoin_problems",
    "reset_gtid_state",
    "set_semisync_master",
    "stop_receiving",
    "wait_replicating",
]

"""
The database agent service: watches the local MariaDB with fast checks,
reports its health into the C{db} heartbeat group, and turns the group's
decisions into role changes through L{clickpass.dbagent.mariadb}.

The agent decides, in this order of precedence:
  - never two writable primaries: a host becomes writable only through a
    promotion, and a promotion makes the old primary read-only first (over
    the network). When the old primary cannot be reached, it promotes only
    once the old primary is known to take no writes: its server is gone
    (the connection is refused, or reset before the greeting) *and* its
    VIP is off it (the group hears it as not MASTER, so it released the
    address, or its last MASTER advert is older than the VIP's lease); or
    else C{fence_wait} seconds after the election, by which time the old
    primary's own agent has fenced it or killed its server. A refused port
    alone proves nothing about the VIP (a firewall, a wrong port), so it
    never suffices by itself;
  - no acknowledged write lost: the promotion applies everything received
    first; semi-sync never falls back by itself; the primary goes on alone
    (DEGRADED, visible in status) only when the group says the replica is
    gone and no replica is acknowledging;
  - no flapping: after an automatic failover, no other one until an
    operator runs C{db ack}, or C{flap_period} seconds have passed;
  - no primary left read-only by a promotion that was given up: a
    candidate that fenced the primary over the network and then lost its
    election (the primary's adverts came back) leaves it fenced while it
    still holds the VIP; the primary's agent lifts that fence itself
    (L{DbAgent._lift_fence}), ordered against any promotion of the peer
    by a lock on the primary's own server (see L{ops.lift_fence}).

Time comes from the injected clock; the SQL runs in the thread pool of the
L{Server} objects. This module must never block the reactor, and never let
an exception out of a timer: every failure is a log line and an input to
the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pymysql

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.dbagent import machine
from clickpass.dbagent import mariadb as ops
from clickpass.dbagent.gtid import Position
from clickpass.dbagent.machine import Role
from clickpass.dbagent.settings import DbAgentSettings
from clickpass.heartbeat.group import PeerView
from clickpass.heartbeat.wire import State

# The failover record lives in the replicated data, so whichever host is
# elected next knows about the last automatic failover.
HA_SCHEMA = "clickpass_ha"
ER_NO_SUCH_TABLE = 1146
ER_BAD_DB = 1049
CONNECTION_REFUSED_CODES = (2002, 2003)
# The longest a held database VIP is kept, once released, while the local
# server's client connections are ended (see VipGate.drain).
DRAIN_LIMIT = 0.8

# A planned switchover: how long the primary, read-only, waits for its
# clients' transactions in flight to end before it hands over (and its
# clients' connections are ended). They are refused at their next write or
# COMMIT, so this is about one transaction's length, not a commit cut off.
SWITCHOVER_DRAIN = 0.3

# The shortest connection attempt when fencing the peer, however close the
# deadline: a reachable peer's server accepts well within it.
MIN_FENCE_TRY = 0.1

# Tries of the local fence when the server ends its connection (see _fence).
FENCE_ATTEMPTS = 3


class HealthSink(Protocol):
    def set_health(self, name: str, ok: bool) -> None:
        """Report one health input into the heartbeat group."""


class VipLike(Protocol):
    """L{clickpass.heartbeat.group.VipControl}."""

    def take(self, up: Callable[[], None]) -> None: ...

    def renew(self) -> None: ...

    def release(self) -> None: ...

    def announce(self) -> None: ...

    def refresh(self) -> None: ...


@dataclass(frozen=True)
class AgentConfig(DbAgentSettings):
    """
    What the agent runs by: the [dbagent] section (its timing: see
    L{DbAgentSettings}, with server_pid_file resolved against the data
    directory), and what the node or a test adds to it.

    A replica the group has not heard as healthy for degrade_after is gone:
    the primary goes on alone (DEGRADED); a replica rejoining after a
    switchover or a restart is back well within it. A DEGRADED primary turns
    semi-sync on again when its returning replica has received all but a few
    transactions, or, under a write load the replica cannot outrun, after it
    has streamed for catchup_wait: writes then wait for the replica as it
    catches up (semi-sync paces them) instead of going on unprotected for as
    long as the load lasts.
    """

    node: str = "db1"
    # Seconds a re-clone (dump of the primary and load here) may take.
    reclone_timeout: float = 3600.0


def record_failover(c: Any, at: float, node: str, kind: str, table_exists: bool = False) -> None:
    # CREATE ... IF NOT EXISTS is binlogged (and synced) even when there is
    # nothing to create: skipped when the table is known to exist.
    if not table_exists:
        c.execute(f"CREATE DATABASE IF NOT EXISTS {HA_SCHEMA}")
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {HA_SCHEMA}.failover (id BIGINT NOT NULL "
            "AUTO_INCREMENT PRIMARY KEY, at DOUBLE NOT NULL, node VARCHAR(64) NOT NULL, "
            "kind VARCHAR(16) NOT NULL, acked TINYINT NOT NULL DEFAULT 0) ENGINE=InnoDB"
        )
    c.execute(
        f"INSERT INTO {HA_SCHEMA}.failover (at, node, kind) VALUES (%s, %s, %s)", (at, node, kind)
    )


def last_failover(c: Any) -> tuple[float, str, str, bool] | None:
    try:
        c.execute(
            f"SELECT at, node, kind, acked FROM {HA_SCHEMA}.failover ORDER BY id DESC LIMIT 1"
        )
    except pymysql.err.MySQLError as e:
        if e.args and e.args[0] in (ER_NO_SUCH_TABLE, ER_BAD_DB):
            return None
        raise
    row = c.fetchone()
    if row is None:
        return None
    return float(row[0]), str(row[1]), str(row[2]), bool(row[3])


def ack_failovers(c: Any) -> int:
    try:
        return int(c.execute(f"UPDATE {HA_SCHEMA}.failover SET acked = 1 WHERE acked = 0"))
    except pymysql.err.MySQLError as e:
        if e.args and e.args[0] in (ER_NO_SUCH_TABLE, ER_BAD_DB):
            return 0
        raise


def promote_and_record(
    c: Any,
    wait_seconds: float,
    semisync: bool,
    bootstrap: bool,
    at: float,
    node: str,
    mark: ops.Mark,
    proceed: Callable[[], bool] = lambda: True,
    guard: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> tuple[Position, str]:
    """
    The promotion on one connection: L{ops.promote} (writable, semi-sync
    off; C{proceed} and C{guard} as there), the failover record (what kind
    it was: bootstrap, a switchover completed, or automatic), then
    semi-sync master on when C{semisync}. Returns the starting position
    and the kind.
    """
    position = ops.promote(c, wait_seconds, False, mark, proceed, guard)
    record = last_failover(c)
    kind = "automatic"
    if bootstrap:
        kind = "bootstrap"
    elif record is not None and record[2] == "switchover" and not record[3]:
        kind = "switchover-done"
    record_failover(c, at, node, kind, table_exists=record is not None)
    if kind == "switchover-done":
        ack_failovers(c)
    mark("failover recorded")
    if semisync:
        ops.set_semisync_master(c, True)
        mark("semi-sync on")
    return position, kind


def one_line(error: BaseException | Failure) -> str:
    value = error.value if isinstance(error, Failure) else error
    text = str(value) or type(value).__name__
    return " ".join(text.split())


def refused(error: BaseException) -> bool:
    """
    The server's host answered that nothing listens (the connection was
    refused): its server is not running there. A timeout is never this.
    """
    if isinstance(error, ops.ServerGone):
        return error.certain
    return (
        isinstance(error, pymysql.err.OperationalError)
        and bool(error.args)
        and error.args[0] in CONNECTION_REFUSED_CODES
        and "refused" in str(error).lower()
    )


# MariaDB: the connection was killed; the statement was interrupted.
ER_CONNECTION_KILLED = 1927
ER_QUERY_INTERRUPTED = 1317
# Client: the server closed the connection (or lost it mid-query).
CR_SERVER_GONE = 2006
CR_SERVER_LOST = 2013


def connection_ended(error: BaseException) -> bool:
    """
    The server answered by ending our connection (a KILL: the peer's agent
    fencing this server ends every client connection, ours included), as
    opposed to a timeout, which says the server may be frozen.
    """
    if isinstance(error, pymysql.err.InterfaceError):
        return True  # the connection was already closed under us
    if not isinstance(error, pymysql.err.OperationalError) or not error.args:
        return False
    code = error.args[0]
    if code in (ER_CONNECTION_KILLED, ER_QUERY_INTERRUPTED):
        return True
    return code in (CR_SERVER_GONE, CR_SERVER_LOST) and "timed out" not in str(error).lower()


def reset(error: BaseException) -> bool:
    """Reset before the server's greeting: nothing listens, or our connection was killed."""
    return isinstance(error, ops.ServerGone) and not error.certain


def process_state(pid: int) -> str:
    """
    Process C{pid}'s state letter in /proc (T or t: stopped by a signal or
    a tracer; Z or X: exited); "" where there is no /proc or no such process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The state follows the command name, which is in parentheses and may
    # hold any character: read it after the last ")".
    fields = stat[stat.rfind(")") + 1 :].split()
    return fields[0] if fields else ""


def process_exited(pid: int) -> bool:
    """
    Whether process C{pid} has exited with all its threads (gone, or a
    zombie whose other threads are gone too): only then are its files, and
    so its connections, closed. A zombie leader alone is not enough.
    """
    if process_state(pid) not in ("", "Z", "X"):
        return False
    try:
        return os.listdir(f"/proc/{pid}/task") == [str(pid)]
    except OSError:
        return True


def peer_vip_off(view: PeerView | None, now: float, lease: float) -> bool:
    """
    Whether the peer holds the database VIP no longer, from what the group
    heard: its latest advert is not MASTER (a group leaving MASTER releases
    the address first; a HANDOVER still advertises MASTER), or its last
    MASTER advert is older than the address's lease plus one advert (it
    stopped renewing, so the address lapsed). Never heard: not known.
    """
    if view is None:
        return False
    if view.state != State.MASTER:
        return True
    return now - view.heard_at >= lease + view.interval


class VipGate:
    """
    The db group's VIP, held back until this host is writable: the group
    takes the address when it becomes MASTER, but clients are sent here
    only once the promotion has finished.
    """

    def __init__(self, inner: VipLike) -> None:
        self.inner = inner
        self.wanted: Callable[[], None] | None = None
        self.open = False
        self.held = False
        # Ends the local server's client connections before a held address
        # goes (L{DbAgent.drain_clients}): once it is gone this host can no
        # longer tell them (a FIN or RST from the VIP needs the VIP), and a
        # client waiting for an answer would wait out its read timeout.
        self.drain: Callable[[], Deferred[object]] | None = None
        self.draining = False

    def take(self, up: Callable[[], None]) -> None:
        self.wanted = up
        # The group may advertise MASTER at once: the promotion runs behind
        # that claim, and a peer that heard no MASTER would take over (and
        # fence this host mid-promotion). Nobody is writable meanwhile.
        up()
        if self.open and not self.held:
            self.held = True
            self.inner.take(up)

    def renew(self) -> None:
        if self.held:
            self.inner.renew()

    def release(self) -> None:
        # Always passed through: the group releases at start to clear a
        # stale address left by a previous run.
        self.wanted = None
        self._let_go()

    def hand_off(self) -> None:
        # A database client must learn that its server is no longer the
        # primary, not finish on it: the same as a release (clients ended first).
        self.release()

    def bridge(self, address: str) -> None:
        # Never: the old primary releases the address at once and ends its
        # clients (hand_off above), so there is nothing to bridge to.
        pass

    def unbridge(self) -> None:
        pass

    def _let_go(self) -> None:
        """Release the address, the clients' connections ended first when it was held."""
        was_held, self.held = self.held, False
        if self.draining:
            return  # released when the drain under way ends
        if not was_held or self.drain is None:
            self.inner.release()
            return

        def release(result: object) -> None:
            self.draining = False
            if not self.held:  # not taken again meanwhile
                self.inner.release()

        self.draining = True
        self.drain().addBoth(release)

    def announce(self) -> None:
        if self.held:
            self.inner.announce()

    def refresh(self) -> None:
        if self.held:
            self.inner.refresh()

    # What the heartbeat engine asks of a VipManager, passed through.

    def idle(self) -> Deferred[object]:
        idle = getattr(self.inner, "idle", None)
        return idle() if idle is not None else succeed(None)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def status_counters(self) -> dict[str, int]:
        counters = getattr(self.inner, "status_counters", None)
        result: dict[str, int] = counters() if counters is not None else {}
        return result

    def set_open(self, on: bool) -> None:
        self.open = on
        if on and self.wanted is not None and not self.held:
            self.held = True
            self.inner.take(self.wanted)
        elif not on and self.held:
            self._let_go()


class DbAgent(Service):
    """The database agent of one database host."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        config: AgentConfig,
        local: ops.Server,
        peer: ops.Server,
        peer_account: ops.ReplicaAccount,
        health: HealthSink,
        vip: VipGate | None = None,
        switchover: Callable[[], str] | None = None,
        kill_server: Callable[[], bool] | None = None,
        server_stopped: Callable[[], bool] | None = None,
    ) -> None:
        self.setName("dbagent")
        self.clock = clock
        self.config = config
        self.local = local
        self.peer = peer
        self.peer_account = peer_account
        self.health = health
        self.vip = vip
        self._switchover = switchover
        self.kill_server = kill_server or self._kill_from_pid_file
        self.server_stopped = server_stopped or self._stopped_from_pid_file
        self.machine, self.core = machine.build(self)
        self.counters: Counter[str] = Counter()
        self.group = State.INIT
        self.peer_present = False
        self.peer_master = False
        self.peer_absent_since = 0.0
        self.failures = 0
        self.last_status: ops.ServerStatus | None = None
        self.last_error = ""
        self.reason = ""
        self.problems: list[str] = []
        self.blocked = ""
        self.acked_locally_at = 0.0
        self.bootstrap_ok = False
        self.changed_at = 0.0
        self.elected_at = 0.0
        self.last_promotion = ""
        # The peer holds no VIP (L{peer_vip_off}), as the group last heard it.
        self.peer_vip_off = False
        self.peer_server_down = False
        # The peer's adverts are heard (any state, any health).
        self.peer_heard = False
        self._block_checked_at = -1e9
        # The steps of the last promotion (or reclone) with their times:
        # the failover timeline. events: the recent notable events.
        self.timeline: list[tuple[str, float]] = []
        self.events: deque[tuple[float, str]] = deque(maxlen=200)
        self._receiver_stopping: Deferred[None] | None = None
        self._check_started: float | None = None
        self._op: str | None = None
        # Counts the roles entered. An operation started in a role that is
        # no longer current was overtaken (demoted, the server restarted,
        # ...) and feeds nothing more into the machine.
        self._serial = 0
        self._op_token: object = None
        self._last_slow = -1e9
        self._slow_running = False
        # When the DEGRADED primary first saw its replica back and streaming.
        self._replica_back_since: float | None = None
        self._checks = LoopingCall(self._check)
        self._checks.clock = clock
        self._reported: bool | None = None
        # This host made itself read-only for a switchover not yet done.
        self._drained_for_switchover = False
        # A PRIMARY whose server was found read-only (fenced by a peer whose
        # promotion was given up): when it was first seen so, and whether a
        # lift of that fence is under way (L{_lift_fence}).
        self._fenced_seen_at: float | None = None
        self._lifting = False
        self._lift_refused = ""
        self._lift_next_at = 0.0

    # Service.

    def startService(self) -> None:
        super().startService()
        self.changed_at = self.clock.seconds()
        self._report()
        self._checks.start(self.config.check_interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._checks.running:
            self._checks.stop()

    @property
    def role(self) -> Role:
        return self.core.role

    # Inputs from the heartbeat group.

    def group_state(self, state: State) -> None:
        """The db group's state on this host changed (MASTER, BACKUP, FAULT...)."""
        before, self.group = self.group, state
        if state == State.MASTER and before == State.HANDOVER and self.role.writable:
            # A switchover that no peer took up in time: still the primary.
            self._resume_writes()
        elif state == State.MASTER and before != State.MASTER:
            self.elected_at = self.clock.seconds()
            self.timeline = []
            self._step("elected")
            self._spawn("election", self._consider_election())
        elif state not in (State.MASTER, State.HANDOVER):
            self.machine.demoted()

    def notify(self, group: str, state: State) -> None:
        """L{clickpass.heartbeat.group.Notifier}: feed the db group's changes in."""
        self.group_state(state)

    def set_peer_present(
        self,
        present: bool,
        master: bool = False,
        vip_off: bool = False,
        server_down: bool = False,
        heard: bool | None = None,
    ) -> None:
        """
        Whether the group hears a healthy peer (BACKUP or MASTER, health not
        FAULT), whether it hears the peer as MASTER (promoting or primary),
        whether the peer certainly holds no VIP (L{peer_vip_off}), whether
        the peer's own agent reports its server down (it advertises FAULT),
        and whether its adverts are heard at all, whatever their state or
        health (default: as C{present}).
        """
        if self.peer_present and not present:
            self.peer_absent_since = self.clock.seconds()
        self.peer_present = present
        self.peer_master = present and master
        self.peer_vip_off = vip_off
        self.peer_server_down = server_down
        self.peer_heard = present if heard is None else heard

    # Operator commands.

    async def ack(self) -> dict[str, Any]:
        self.acked_locally_at = self.clock.seconds()
        self.blocked = ""
        acked = 0
        if self.role.writable:
            acked = await self.local.call(ack_failovers)
        self._report()
        return {"acknowledged": True, "records": acked, "role": self.role.value}

    def release(self) -> dict[str, Any]:
        if self.role != Role.QUARANTINED:
            raise ValueError(f"this host is {self.role.value}, not quarantined")
        self.machine.release()
        return {"role": self.role.value}

    async def reclone(self) -> dict[str, Any]:
        """
        Replace the local data with a consistent copy of the primary's, then
        rejoin as its replica. Refused on the primary (or a host becoming
        it), and when the peer is not a writable primary to copy from.
        """
        role = self.role
        if role.writable or role in (Role.PROMOTING, Role.DEMOTING):
            raise ValueError(
                f"this host is {role.value}: reclone runs on a replica or a quarantined host, "
                "never on the primary"
            )
        if role not in (Role.QUARANTINED, Role.REPLICA, Role.FENCED):
            raise ValueError(f"this host is {role.value}; wait until it is fenced or quarantined")
        try:
            primary = await self.peer.call(ops.read_status, timeout=self.config.fence_timeout)
        except Exception as e:
            raise ValueError(
                f"the primary does not answer ({one_line(e)}); nothing to copy"
            ) from None
        if primary.read_only:
            raise ValueError("the peer is read-only: there is no primary to copy from")
        if self.role != role:
            raise ValueError(f"this host became {self.role.value} meanwhile; try again")
        self.machine.reclone()
        return {"role": self.role.value, "from": self.peer.describe()}

    async def switchover(self) -> str:
        """
        Hand the primary role to the replica, planned: the failover record
        first, then this server read-only with its transactions in flight
        drained (L{ops.drain_writes}: a client's COMMIT is refused cleanly,
        never cut by the KILL that follows), then the group hands the VIP
        over and the peer promotes, fencing this host as ever. When the
        group does not hand over, writes resume (L{_resume_writes}).
        """
        if not self.role.writable:
            raise ValueError(f"this host is {self.role.value}, not the primary")
        if self._switchover is None:
            raise ValueError("no heartbeat group is wired to this agent")
        if not self.peer_present or self.peer_master:
            raise ValueError("no healthy replica is heard to take over")
        await self.local.call(record_failover, self.clock.seconds(), self.config.node, "switchover")
        try:
            left = await self.local.call(
                ops.drain_writes,
                SWITCHOVER_DRAIN,
                1,
                timeout=self.config.fence_timeout + SWITCHOVER_DRAIN + 1,
            )
            self._drained_for_switchover = True
            self.counters["switchover_drained"] += 1
            self._step("read-only, in-flight transactions drained")
            self.log.info(
                "dbagent {node}: read-only for the switchover; {left} client transactions "
                "still open after {drain}s",
                node=self.config.node,
                left=left,
                drain=SWITCHOVER_DRAIN,
            )
        except Exception as e:
            # A COMMIT held waiting for the replica: the fences end the
            # clients first, as in a failover.
            self.counters["switchover_drain_failed"] += 1
            self.log.warn(
                "dbagent {node}: could not make the server read-only before the switchover "
                "({error}); its clients will be ended by the fence",
                node=self.config.node,
                error=one_line(e),
            )
        try:
            return self._switchover()
        except ValueError:
            self._resume_writes()
            raise

    def _resume_writes(self) -> None:
        """
        The switchover this host drained for did not happen (refused, or no
        peer took over in time): writable again, but only if it is still
        the primary, the group MASTER here and no peer heard as MASTER,
        asked on the server's thread just before (as a promotion does).
        """
        if not self._drained_for_switchover:
            return
        self._drained_for_switchover = False

        def still_primary() -> bool:
            return self.role.writable and self.group == State.MASTER and not self.peer_master

        async def resume() -> None:
            done = await self.local.call(ops.resume_writes, still_primary)
            self.counters["switchover_resumed" if done else "switchover_not_resumed"] += 1
            self.log.info(
                "dbagent {node}: the switchover did not happen; {outcome}",
                node=self.config.node,
                outcome="writable again" if done else "left read-only (no longer the primary)",
            )

        self._spawn("resume", resume())

    # Status.

    def status(self) -> dict[str, Any]:
        now = self.clock.seconds()
        status: dict[str, Any] = {
            "node": self.config.node,
            "role": self.role.value,
            "writable": self.role.writable,
            "degraded": self.role == Role.DEGRADED,
            "quarantined": self.role == Role.QUARANTINED,
            "in_role_seconds": round(now - self.changed_at, 3),
            "group": self.group.name,
            "peer_present": self.peer_present,
            "healthy": bool(self._reported),
            "failover_blocked": self.blocked,
            "operation": self._op,
            "reason": self.reason,
            "problems": list(self.problems),
            "last_error": self.last_error,
            "counters": dict(self.counters),
            "timeline": self.timeline_offsets(),
            # Wall-clock times (the injected clock): a benchmark lines them
            # up with the fault it injected from another process.
            "events": [[round(at, 3), what] for at, what in list(self.events)[-40:]],
        }
        if self.last_status is not None:
            status["server"] = self.last_status.as_dict()
        return status

    def timeline_offsets(self) -> list[list[Any]]:
        """The last promotion's steps, in milliseconds from the first."""
        if not self.timeline:
            return []
        start = self.timeline[0][1]
        return [[step, round((at - start) * 1000)] for step, at in self.timeline]

    def _step(self, name: str) -> None:
        """One step of the timeline (called from the operation's thread as well)."""
        at = self.clock.seconds()
        self.timeline.append((name, at))
        self.events.append((at, name))

    # The checks.

    def _check(self) -> None:
        now = self.clock.seconds()
        if self._check_started is not None:
            if now - self._check_started > self.config.check_timeout:
                self._check_started = None
                if self._op == "promote":
                    # A promoting server is busy (STOP SLAVE waits for a
                    # receiver stuck on a frozen old primary): slow is not
                    # down. The promotion has its own timeout; a refused
                    # connection still counts.
                    self.counters["slow_checks_while_promoting"] += 1
                    return
                self._check_failed("the local server did not answer in time")
            return
        self._check_started = now
        started = now
        d = self.local.ping(self.config.check_timeout)

        def ok(read_only: bool) -> None:
            if self._check_started != started:
                return  # a late answer after a timeout was counted
            self._check_started = None
            self.failures = 0
            if self.role in (Role.STARTING, Role.DOWN):
                self.machine.server_up()
            if self.role.writable and read_only:
                self.last_error = "the primary's server is read-only"
                self._consider_lift()
            elif not read_only:
                self._fenced_seen_at = None
            if (
                not self._slow_running
                and self.clock.seconds() - self._last_slow >= self.config.rejoin_interval
            ):
                self._last_slow = self.clock.seconds()
                self._spawn("status", self._slow_check())

        def failed(f: Failure) -> None:
            if self._check_started != started:
                return
            self._check_started = None
            gone = f.value is not None and refused(f.value)
            if self._op == "promote" and not gone:
                self.counters["slow_checks_while_promoting"] += 1
                return  # slow, not down: see above
            # Nothing listens on the local socket: the server is not
            # running, which a second try cannot change.
            self._check_failed(one_line(f), certain=gone)

        d.addCallbacks(ok, failed)

    def _check_failed(self, why: str, certain: bool = False) -> None:
        if not certain and self.server_stopped():
            # Stopped by a signal (SIGSTOP, a debugger): it cannot answer
            # until someone resumes it, which a second check cannot tell.
            certain = True
            why = f"{why}; its process is stopped"
        before = self.failures
        self.failures = max(self.failures + 1, self.config.check_fall if certain else 0)
        self.counters["check_failures"] += 1
        if before < self.config.check_fall <= self.failures:
            self.events.append((self.clock.seconds(), "local server down"))
            self.last_error = why
            self.log.warn(
                "dbagent {node}: local server not answering ({error})",
                node=self.config.node,
                error=why,
            )
            self.machine.server_down()
            self._report()

    async def _slow_check(self) -> None:
        """Every rejoin_interval: the full status, and what follows from it."""
        # One at a time: a reading that takes longer than the interval (a
        # busy server) is not overtaken by the next one.
        self._slow_running = True
        try:
            await self._slow_check_once()
        finally:
            self._slow_running = False

    async def _slow_check_once(self) -> None:
        role, serial = self.role, self._serial
        status = await self.local.status()
        self.last_status = status
        if self.role != role or self._serial != serial:
            # The role changed while the status was read (a rejoin
            # finished, a restart): judged at the next check, never on a
            # reading from before the change.
            self._report()
            return
        if self.group == State.MASTER and role in (Role.FENCED, Role.REPLICA) and self._op is None:
            # Elected while busy (rejoining, fencing): the election still stands.
            await self._consider_election()
        elif role == Role.FENCED and self._op is None:
            self.machine.retry()
        elif role == Role.REPLICA:
            divergence = ops.divergence(status)
            if divergence:
                # Not a broken replica to restart: its history cannot go on
                # from the primary's (a GTID error), so an operator decides.
                self._errant([divergence])
            elif status.sql_running != "Yes" or not status.replica_configured:
                self.reason = status.last_sql_error or "replication is not running"
                self.machine.failed()
            else:
                await self._update_block()
        elif role == Role.PRIMARY:
            # A primary whose server is read-only (a peer fenced it) has no
            # write to go on with alone; going DEGRADED would only mean its
            # fence, once lifted, acknowledges writes nobody received.
            if (
                not status.read_only
                and not self.peer_present
                and status.semisync_master_clients == 0
                and self.clock.seconds() - self.peer_absent_since >= self.config.degrade_after
            ):
                self.log.warn(
                    "dbagent {node}: the replica is gone (group agrees); going on alone, DEGRADED",
                    node=self.config.node,
                )
                self.counters["degraded"] += 1
                self.machine.peer_gone()
        elif role == Role.DEGRADED:
            await self._consider_lossless(status, serial)
        self._report()

    async def _consider_lossless(self, status: ops.ServerStatus, serial: int) -> None:
        """
        DEGRADED: semi-sync on again once the replica is back, streaming
        from this server with semi-sync, and has received all but a few
        transactions (what an acknowledgement covers is receipt, so writes
        barely wait when it goes on); or once it has streamed for
        C{catchup_wait} without getting there, as under a write load it
        cannot outrun: the writes then wait for it as it catches up.
        """
        if not self.peer_present:
            self.reason = "the replica is gone"
            self._replica_back_since = None
            return
        try:
            replica = await self.peer.status()
        except Exception as e:
            self.reason = f"the replica's status could not be read: {one_line(e)}"
            self._replica_back_since = None
            return
        if self._serial != serial:
            return
        if not (replica.streaming and replica.semisync_slave_enabled):
            self.reason = "the replica is back but not streaming with semi-sync"
            self._replica_back_since = None
            return
        now = self.clock.seconds()
        if self._replica_back_since is None:
            self._replica_back_since = now
        behind = replica.received_pos.transactions_behind(status.binlog_pos)
        streamed = now - self._replica_back_since
        if behind <= 10:
            why = f"{behind} transactions behind"
        elif streamed >= self.config.catchup_wait:
            why = (
                f"still {behind} transactions behind after {streamed:.1f}s of streaming; "
                "writes wait for it as it catches up"
            )
        else:
            self.reason = f"the replica is back, {behind} transactions behind"
            return
        # (_replica_back_since is cleared by entering PRIMARY.)
        self.reason = ""
        self.counters["replica_back"] += 1
        self.log.info(
            "dbagent {node}: the replica is back ({why}); semi-sync on again",
            node=self.config.node,
            why=why,
        )
        self.machine.peer_back()

    async def _update_block(self) -> None:
        record = await self.local.call(last_failover)
        self._block_checked_at = self.clock.seconds()
        self.blocked = ""
        if record is None:
            return
        at, node, kind, acked = record
        age = self.clock.seconds() - at
        if (
            kind == "automatic"
            and not acked
            and at > self.acked_locally_at
            and age < self.config.flap_period
        ):
            self.blocked = (
                f"automatic failover to {node} {age:.0f}s ago is not acknowledged "
                "(clickpass-ctl db ack)"
            )

    # Health.

    def _healthy(self) -> bool:
        role = self.role
        if role in (Role.PRIMARY, Role.DEGRADED, Role.PROMOTING):
            return True
        if role == Role.REPLICA:
            return not self.blocked
        if role in (Role.FENCED, Role.REJOINING):
            # A pair with no primary: one of the two must be electable.
            return self.bootstrap_ok
        return False

    def _report(self) -> None:
        ok = self._healthy()
        if ok != self._reported:
            self._reported = ok
            self.health.set_health(self.config.health_check, ok)

    # Elections.

    async def _consider_election(self) -> None:
        if self.role == Role.REPLICA:
            # The slow checks read the flap block every rejoin_interval:
            # read it again only when that reading is stale (under load a
            # round trip is a good part of the failover), or when it blocks:
            # a planned switchover's record, written on the primary just
            # before it hands over, lifts a block a reading from moments
            # ago still shows.
            stale = self.clock.seconds() - self._block_checked_at > 2 * self.config.rejoin_interval
            if stale or self.blocked:
                await self._update_block()
            if self.blocked:
                self.counters["failover_blocked"] += 1
                self.log.warn(
                    "dbagent {node}: elected, but not promoting: {reason}",
                    node=self.config.node,
                    reason=self.blocked,
                )
                self._report()
                return
        if self.group == State.MASTER:
            self.machine.elected()

    # AgentActions: the machine's outputs.

    def entered(self, role: Role) -> None:
        self.changed_at = self.clock.seconds()
        self._fenced_seen_at = None
        self._lift_refused = ""
        self._lift_next_at = 0.0
        if not role.writable:
            self._drained_for_switchover = False
        # Whatever was running for the role left behind is overtaken.
        self._serial += 1
        self._replica_back_since = None
        if role not in (Role.FENCED, Role.REJOINING):
            # Decided afresh by the next rejoin attempt; never carried over
            # from before this host was primary.
            self.bootstrap_ok = False
        self.counters[f"entered_{role.value}"] += 1
        self.events.append((self.changed_at, role.value.upper()))
        self.log.info("dbagent {node}: {role}", node=self.config.node, role=role.value.upper())
        self._report()

    def writable(self, on: bool) -> None:
        if self.vip is not None:
            self.vip.set_open(on)

    async def _until_server_exited(self) -> None:
        """Every 10 ms until the killed server's process has exited (the caller bounds it)."""
        while not self._server_exited():
            await deferLater(self.clock, 0.01, lambda: None)

    async def _end_clients(self) -> None:
        """
        Wait for the fence that follows (the gate closes just before it
        starts), then end whatever client connections are left. A write
        waiting for a semi-sync acknowledgement outlives its KILL until the
        fence turns semi-sync off (and then gets an error, never an OK):
        only then does its connection close.
        """
        started = self.clock.seconds()
        await deferLater(self.clock, 0, lambda: None)
        while self.role in (Role.PRIMARY, Role.DEGRADED, Role.DEMOTING, Role.FENCING):
            await deferLater(self.clock, 0.01, lambda: None)
        left = max(DRAIN_LIMIT - (self.clock.seconds() - started), 0.05)
        await self.local.call(ops.end_clients, left, timeout=left)

    def drain_clients(self) -> Deferred[object]:
        """
        End the local server's client connections while this host still
        holds the VIP, so they learn of it at once (L{VipGate.drain}): a
        stopped server is killed (and waited for until its process is
        gone), a running one has its clients' connections ended. Bounded
        by C{DRAIN_LIMIT}; whatever happens, the address goes afterwards.
        """
        if self.server_stopped() and self.kill_server():
            self.counters["server_killed"] += 1
            self.counters["stopped_killed"] += 1
            self.last_error = "the local server's process is stopped; killed it"
            self.log.error("dbagent {node}: {error}", node=self.config.node, error=self.last_error)
            d: Deferred[object] = Deferred.fromCoroutine(self._until_server_exited())
        else:
            d = Deferred.fromCoroutine(self._end_clients())
        d.addTimeout(DRAIN_LIMIT, self.clock).addErrback(lambda f: None)
        d.addCallback(lambda _: self.events.append((self.clock.seconds(), "VIP let go")))
        return d

    def fence(self) -> None:
        self._spawn("fence", self._fence(), report=True)

    def rejoin(self, force: bool) -> None:
        self._spawn("rejoin", self._rejoin(force), report=True)

    def promote(self) -> None:
        self._spawn("promote", self._promote(), report=True)

    def semisync(self, on: bool) -> None:
        self._spawn("semisync", self._semisync(on), report=True)

    def quarantine(self) -> None:
        self._spawn("quarantine", self._quarantine(), report=False)

    def copy_primary(self) -> None:
        self._spawn("reclone", self._reclone(), report=True)

    def _current(self, serial: int, name: str) -> bool:
        """
        Whether the operation started with C{serial} is still the one the
        machine waits for; logs it when it was overtaken.
        """
        if serial == self._serial:
            return True
        self.counters[f"{name}_overtaken"] += 1
        self.log.info(
            "dbagent {node}: {operation} overtaken (now {role}); its outcome is ignored",
            node=self.config.node,
            operation=name,
            role=self.role.value.upper(),
        )
        return False

    def _spawn(self, name: str, coroutine: Coroutine[Any, Any, Any], report: bool = False) -> None:
        token = object()
        if report:
            self._op, self._op_token = name, token
        serial = self._serial
        d = Deferred.fromCoroutine(coroutine)

        def finished(result: object) -> None:
            if report and self._op_token is token:
                self._op = None
            current = serial == self._serial
            if isinstance(result, Failure):
                self.last_error = one_line(result)
                self.counters[f"{name}_failed"] += 1
                self.log.warn(
                    "dbagent {node}: {operation} failed: {error}",
                    node=self.config.node,
                    operation=name,
                    error=self.last_error,
                )
                if report and current:
                    self.machine.failed()
            self._report()

        d.addBoth(finished)

    async def _fence(self) -> None:
        serial = self._serial
        if self.role == Role.DEMOTING and self.server_stopped() and self.kill_server():
            # A primary whose server process is stopped (SIGSTOP, a
            # debugger): a fence would wait fence_timeout on it while no
            # write is acknowledged anywhere, and the peer promotes only
            # once it is gone. Killed at once; the restarted server
            # recovers every commit (sync_binlog, flush at commit) and
            # rejoins.
            self.counters["server_killed"] += 1
            self.counters["stopped_killed"] += 1
            self.last_error = "the local server's process is stopped; killed it"
            self.log.error("dbagent {node}: {error}", node=self.config.node, error=self.last_error)
            raise ops.OperationFailed(self.last_error)
        attempt = 1
        while True:
            try:
                killed = await self.local.call(
                    ops.fence, 3, self.config.fence_timeout / 3, timeout=self.config.fence_timeout
                )
                break
            except Exception as e:
                # The peer taking over fences this server at the same time
                # (a switchover, an election it wins while this server still
                # answers), and each fence ends the other's connection: a
                # fence whose connection the server ended is tried again on
                # a new one. A timeout is not: the server may be frozen.
                if attempt < FENCE_ATTEMPTS and connection_ended(e):
                    attempt += 1
                    self.counters["fence_connection_ended"] += 1
                    self.log.info(
                        "dbagent {node}: the fence's connection was ended ({error}); fencing again",
                        node=self.config.node,
                        error=one_line(e),
                    )
                    continue
                self._fence_failed(e)
                raise
        self.counters["fenced"] += 1
        self.log.info(
            "dbagent {node}: fenced (read-only; {killed} client connections ended)",
            node=self.config.node,
            killed=killed,
        )
        if not self._current(serial, "fence"):
            return
        self.machine.done()
        if self.role == Role.FENCED and self.peer_master and self.group != State.MASTER:
            # The peer is taking over (a switchover, a failover): rejoin it
            # now rather than at the next slow check, so that its first
            # semi-sync write is acknowledged sooner.
            self.machine.retry()

    def _fence_failed(self, e: BaseException) -> None:
        self.last_error = f"fence failed: {one_line(e)}"
        if self.kill_server():
            self.counters["server_killed"] += 1
            self.log.error(
                "dbagent {node}: could not fence the local server ({error}); killed it",
                node=self.config.node,
                error=one_line(e),
            )

    async def _rejoin(self, force: bool) -> None:
        serial = self._serial
        try:
            primary = await self.peer.status()
        except Exception as e:
            if not self._current(serial, "rejoin"):
                return
            self.bootstrap_ok = False
            self.reason = f"the peer's server does not answer ({one_line(e)})"
            self.machine.failed()
            return
        if primary.read_only and self.peer_master:
            # The peer is promoting (a switchover, or a failover): it is
            # writable within moments, and the sooner this host replicates
            # from it, the sooner its first semi-sync write is acknowledged.
            primary = await self._wait_peer_writable(primary)
        if not self._current(serial, "rejoin"):
            return
        if primary.read_only:
            await self._no_primary_to_rejoin(serial, primary)
            return
        self.bootstrap_ok = False
        # The local history is read and checked against the primary's on
        # the connection that then starts replication, after read-only: a
        # reading taken earlier (before the wait above, before a restart's
        # recovery, before the fence's last commits) is never what decides.
        # One connection reads the replica's state every 20 ms until the
        # primary streams to it (or 5 s pass): no coarse polling.

        def proceed() -> bool:
            return self._serial == serial and self.role == Role.REJOINING

        problems, status = await self.local.call(
            ops.rejoin,
            self.peer_account,
            None if force else primary.binlog_pos,
            5.0,
            proceed,
            timeout=10.0,
        )
        self.last_status = status
        if not self._current(serial, "rejoin"):
            return
        if problems:
            problems, status = await self._recheck_errant(
                serial, primary, problems, status, proceed
            )
            if not self._current(serial, "rejoin"):
                return
        if problems:
            self._errant(problems)
            return
        divergence = ops.divergence(status)
        if divergence:
            self._errant([divergence])
            return
        if status.streaming and status.semisync_slave_active:
            self.problems = []
            self.reason = ""
            self.counters["rejoined"] += 1
            self.log.info(
                "dbagent {node}: rejoined as replica of {primary} at {position} (binlog {binlog})",
                node=self.config.node,
                primary=self.peer.describe(),
                position=str(status.slave_pos),
                binlog=str(status.binlog_pos),
            )
            self.machine.done()
            return
        self.reason = "replication did not start within 5s"
        self.machine.failed()

    async def _no_primary_to_rejoin(self, serial: int, primary: ops.ServerStatus) -> None:
        """
        No primary anywhere: this host may be the one to start it, if it is
        not behind the peer. Not while the group hears the peer as MASTER:
        it is promoting (a switchover, or a failover in progress), not absent.
        """
        local = await self.local.status()
        self.last_status = local
        if not self._current(serial, "rejoin"):
            return
        self.bootstrap_ok = not self.peer_master and local.binlog_pos.reached(primary.binlog_pos)
        self.reason = "the peer is read-only: no primary to rejoin"
        self.machine.failed()

    async def _recheck_errant(
        self,
        serial: int,
        primary: ops.ServerStatus,
        problems: list[str],
        status: ops.ServerStatus,
        proceed: Callable[[], bool],
    ) -> tuple[list[str], ops.ServerStatus]:
        """
        The rejoin's problems judged again against the primary's position
        read now. The first reading was taken before this server stopped
        applying: a replica that went on applying meanwhile (its agent
        restarted under writes) is "past" that reading with transactions the
        primary has too. Nothing moves here now (read-only, not
        replicating): read the primary again, and only if its history still
        lacks ours is it errant.
        """
        fresh = await self._fresh_primary_position()
        if not self._current(serial, "rejoin") or fresh is None or fresh == primary.binlog_pos:
            return problems, status
        self.counters["rejoin_rechecked"] += 1
        problems, status = await self.local.call(
            ops.rejoin, self.peer_account, fresh, 5.0, proceed, timeout=10.0
        )
        self.last_status = status
        return problems, status

    async def _fresh_primary_position(self) -> Position | None:
        """The primary's binlog position read now (None when it does not answer)."""
        try:
            status = await self.peer.call(ops.read_status, timeout=self.config.fence_timeout)
        except Exception as e:
            self.log.warn(
                "dbagent {node}: cannot read the primary's position again ({error})",
                node=self.config.node,
                error=one_line(e),
            )
            return None
        return status.binlog_pos

    async def _wait_peer_writable(self, primary: ops.ServerStatus) -> ops.ServerStatus:
        """Ask the promoting peer every 20 ms, for up to promote_timeout, until it is writable."""
        deadline = self.clock.seconds() + self.config.promote_timeout
        while primary.read_only and self.peer_master and self.clock.seconds() < deadline:
            await deferLater(self.clock, 0.02, lambda: None)
            try:
                primary = await self.peer.call(ops.read_status, timeout=self.config.fence_timeout)
            except Exception as e:
                self.reason = f"the promoting peer does not answer ({one_line(e)})"
        return primary

    def _errant(self, problems: list[str]) -> None:
        self.problems = problems
        self.reason = ""
        self.counters["quarantined"] += 1
        self.log.error(
            "dbagent {node}: errant transactions, QUARANTINED: {problems}",
            node=self.config.node,
            problems="; ".join(problems),
        )
        self.machine.errant()

    async def _quarantine(self) -> None:
        await self.local.call(ops.quarantine)

    async def _promote(self) -> None:
        serial = self._serial
        bootstrap = self.last_status is None or not self.last_status.replica_configured
        self._receiver_stopping = None
        if not bootstrap and not self.peer_present:
            self._stop_receiving()
        try:
            peer_alive = await self._fence_peer(bootstrap)
        except BaseException:
            # Not promoting: the rejoin that follows starts the receiver again.
            if self._receiver_stopping is not None:
                self._receiver_stopping.addErrback(lambda f: None)
            self._receiver_stopping = None
            raise
        stopping, self._receiver_stopping = self._receiver_stopping, None
        if stopping is not None:
            await stopping
            self._step("receiver stopped")
        if self.group != State.MASTER:
            self._gave_up_after_fence(peer_alive)
            raise ops.OperationFailed("no longer MASTER in the db group; not promoting")
        # A peer whose server answered (and is now read-only) will rejoin:
        # stay lossless and let the writes wait for it; the primary goes on
        # alone only when the group agrees it is gone (degrade_after).
        # A bootstrap has no replica yet: alone (DEGRADED) until one joins.
        semisync = self.config.semisync and peer_alive and not bootstrap
        # Every step on one connection: writable without semi-sync first,
        # so the failover record is not held waiting for a replica; the
        # VIP is still closed, so no client write reaches this server
        # before semi-sync is on.
        self._step("promotion starts")
        # The old primary answered (it was fenced, or found read-only): it
        # is checked again, under its fence lock, right before this server
        # becomes writable; its agent may have lifted a fence an earlier,
        # given-up promotion left (L{_old_primary_held}).
        guard = self._old_primary_held if peer_alive and not bootstrap else contextlib.nullcontext
        position, kind = await self.local.call(
            promote_and_record,
            self.config.promote_timeout,
            semisync,
            bootstrap,
            self.clock.seconds(),
            self.config.node,
            self._step,
            self._still_promoting,
            guard,
            timeout=self.config.promote_timeout + 5,
        )
        if not self._current(serial, "promote"):
            # Given up meanwhile (demoted, server down): the fence now
            # running makes the server read-only again.
            return
        self.counters["promoted"] += 1
        self.last_promotion = kind
        self._step("writable, VIP open")
        self.log.info(
            "dbagent {node}: PROMOTED ({kind}) at {position}, semi-sync {semisync}; "
            "timeline {timeline}",
            node=self.config.node,
            kind=kind,
            position=str(position),
            semisync="on" if semisync else "off",
            timeline=", ".join(f"{step} +{ms}ms" for step, ms in self.timeline_offsets()),
        )
        self.machine.done()
        if not semisync:
            self.counters["degraded"] += 1
            self.machine.peer_gone()

    async def _fence_peer(self, bootstrap: bool) -> bool:
        """
        Make sure the old primary accepts no writes before this host does.
        Returns whether the peer answered (and is now read-only).

        An unreachable peer is asked again until C{fence_wait} after the
        election: a frozen server killed by its own agent turns from a
        timeout into a refused connection, and a server gone whose VIP is
        off it (L{peer_vip_off}) takes no writes, so the wait ends there.
        """
        deadline = self.elected_at + self.config.fence_wait
        warned = False
        resets = 0
        while True:
            if self.group != State.MASTER:
                raise ops.OperationFailed("no longer MASTER in the db group; not promoting")
            try:
                fenced = await self._fence_peer_once(bootstrap, deadline)
                if fenced:
                    self.counters["peer_fenced"] += 1
                    self._step("old primary fenced")
                else:
                    self._step("old primary read-only")
                return True
            except ops.OperationFailed:
                raise
            except Exception as e:
                if bootstrap:
                    raise ops.OperationFailed(
                        f"bootstrap refused: the peer does not answer ({one_line(e)})"
                    ) from None
                # A reset may be our connection killed by the old primary
                # fencing itself, so it counts only when it happens twice
                # in a row; a refusal counts at once.
                # Its own agent reporting the server down (FAULT) makes one
                # reset enough.
                resets = resets + 1 if reset(e) else 0
                gone = refused(e) or resets >= (1 if self.peer_server_down else 2)
                if gone and self.peer_vip_off:
                    self.counters["peer_gone"] += 1
                    self._step("old primary gone (no server listens, VIP off it)")
                    self.log.info(
                        "dbagent {node}: the old primary's server is not running and its VIP "
                        "is off it; promoting",
                        node=self.config.node,
                    )
                    return False
                now = self.clock.seconds()
                if now >= deadline:
                    self.counters["fence_wait_over"] += 1
                    self._step("fence_wait over")
                    # Unreachable to the end (a first attempt may take the
                    # whole wait): its receiver's read from the cut link is
                    # killed, not waited out by the promotion's STOP SLAVE.
                    self._stop_receiving()
                    return False
                if not warned:
                    warned = True
                    self._step("old primary unreachable")
                    self._stop_receiving()
                    self.log.warn(
                        "dbagent {node}: cannot reach the old primary ({error}); asking again "
                        "for up to {wait}s while it fences itself",
                        node=self.config.node,
                        error=one_line(e),
                        wait=round(deadline - now, 3),
                    )
                # A timeout has already waited; a quick refusal or error
                # waits a little (a first reset is asked again at once).
                pause = 0.0 if resets == 1 else min(0.05, deadline - now)
                await deferLater(self.clock, pause, lambda: None)

    async def _fence_peer_once(self, bootstrap: bool, deadline: float) -> bool:
        """
        One connection reads the old primary's state and, if it is writable
        (and this is no bootstrap), fences it. Returns whether it fenced.
        """
        # A peer that does not take a connection before the deadline is
        # unreachable: by then its own agent has fenced it. One that does (a
        # live server, its node frozen or slow) is given the whole
        # fence_timeout to be fenced.
        reach = self.config.fence_timeout
        if not bootstrap:
            reach = min(reach, max(deadline - self.clock.seconds(), MIN_FENCE_TRY))
        status, fenced = await self.peer.call(
            ops.fence_if_writable,
            not bootstrap,
            3,
            self.config.fence_timeout / 3,
            timeout=self.config.fence_timeout,
            connect_timeout=reach,
        )
        if bootstrap:
            local = await self.local.status()
            if not status.read_only or not local.binlog_pos.reached(status.binlog_pos):
                raise ops.OperationFailed(
                    "bootstrap refused: the peer is writable or ahead of this host"
                )
        return fenced

    def _gave_up_after_fence(self, peer_alive: bool) -> None:
        """
        A promotion given up after the old primary answered its fence (the
        group heard it again and it kept MASTER). Its fence is not undone
        from here: only the old primary's agent knows whether it still
        holds the role and the VIP, and it lifts the fence itself
        (L{_lift_fence}) once this host is heard as not MASTER and its
        server is read-only. This host rejoins it meanwhile (the rejoin
        waits for the peer to be writable).
        """
        if not peer_alive:
            return
        self.counters["promotion_given_up_after_fence"] += 1
        self._step("given up; the old primary lifts its fence")
        self.log.warn(
            "dbagent {node}: no longer MASTER after fencing the old primary; promotion given "
            "up, its agent lifts the fence",
            node=self.config.node,
        )

    @contextlib.contextmanager
    def _old_primary_held(self) -> Iterator[None]:
        """
        Around the promotion's C{read_only = OFF} (from its thread): the old
        primary's fence lock held on a connection of its own, and the old
        primary fenced again if it is writable (L{ops.guard_fence}). Its
        agent cannot lift the fence meanwhile, and after this server is
        writable it never will (L{ops.lift_fence} finds it writable).

        An old primary that does not answer now (it answered moments ago)
        is gone or cut off, and then its agent cannot read this server to
        lift anything either: the promotion goes on, as after C{fence_wait}.
        A lock held past C{fence_timeout} (a lift stuck on the peer's read)
        fails the promotion.
        """
        timeout = self.config.fence_timeout
        with contextlib.ExitStack() as stack:
            try:
                fenced_again = stack.enter_context(
                    self.peer.held(ops.guard_fence, timeout, 3, timeout / 3, timeout=timeout)
                )
            except ops.OperationFailed:
                raise
            except Exception as e:
                self._step(f"old primary does not answer the last check ({one_line(e)})")
            else:
                self._step("old primary fenced again" if fenced_again else "old primary held")
            yield

    def _consider_lift(self) -> None:
        """
        A fast check found the PRIMARY's server read-only. A planned
        switchover (its own drain) or this host's own fence leaves it so on
        purpose; otherwise a peer fenced it for a promotion, and when the
        peer is heard, and not as MASTER, that promotion was given up (or
        is about to be decided under the fence lock): try to lift the fence,
        one attempt at a time, at the next check (after a refusal, every
        C{rejoin_interval}) while it holds.
        """
        now = self.clock.seconds()
        if self._fenced_seen_at is None:
            self._fenced_seen_at = now
            self.events.append((now, "primary's server found read-only"))
        if (
            self.role != Role.PRIMARY
            or self.group != State.MASTER
            or not self.peer_heard
            or self.peer_master
            or self._drained_for_switchover
            or self._lifting
            or self._op is not None
            or now < self._lift_next_at
        ):
            return
        self._lifting = True
        self._spawn("lift", self._lift_fence())

    def _still_primary_unfenced(self, serial: int) -> bool:
        """Asked from the lift's thread just before read_only OFF (attribute reads only)."""
        return (
            self._serial == serial
            and self.role == Role.PRIMARY
            and self.group == State.MASTER
            and self.peer_heard
            and not self.peer_master
            and not self._drained_for_switchover
        )

    async def _lift_fence(self) -> None:
        """
        Make this PRIMARY's server writable again after a peer fenced it
        and gave its promotion up (L{ops.lift_fence}), on these grounds:

          - this host still holds the role and the VIP (PRIMARY, the group
            MASTER here) and hears the peer's adverts, not as MASTER (the
            candidate handed the decision back by stepping down; a peer not
            heard at all may be promoting), asked just before;
          - the peer's server answers, is read-only, and holds nothing this
            server lacks: it took no write as a primary (no newer GTID of
            its own), so nothing it acknowledged is left out;
          - all that is decided under this server's fence lock, which the
            peer's promotion also takes (L{ops.guard_fence}) right before it
            makes its own server writable: a peer that promotes after all
            either finds this server writable and fences it again (its
            writes since the lift were never acknowledged: semi-sync on,
            and the peer's receiver stopped), or is found writable here
            and nothing is lifted. Never two writable servers;
          - semi-sync master on before read_only OFF (the peer's fence
            turned it off), so a write is acknowledged only once the
            replica has it, whatever happens next.

        A peer that does not answer (a partition, a dead host) is never
        taken for read-only: the server stays fenced, and the group
        decides as before (with a witness, a primary that is not heard
        steps down). A DEGRADED primary (acknowledging alone) is not
        lifted: a write acknowledged alone could be lost to a peer that
        promotes after all.
        """
        serial = self._serial
        seen = self._fenced_seen_at if self._fenced_seen_at is not None else self.clock.seconds()
        timeout = self.config.fence_timeout

        def read_peer() -> ops.ServerStatus:
            return self.peer.blocking(ops.read_status, timeout=timeout)

        try:
            why = await self.local.call(
                ops.lift_fence,
                read_peer,
                lambda: self._still_primary_unfenced(serial),
                self.config.semisync,
                timeout=timeout + 1,
            )
        finally:
            self._lifting = False
        if self._serial != serial:
            return
        if why:
            self.counters["fence_lift_refused"] += 1
            # Asked again at the pace of the full status reads, not every check.
            self._lift_next_at = self.clock.seconds() + self.config.rejoin_interval
            if why != self._lift_refused:
                self._lift_refused = why
                self.reason = f"the server is read-only and stays so: {why}"
                self.log.info(
                    "dbagent {node}: the primary's server is read-only; not lifting the fence: "
                    "{why}",
                    node=self.config.node,
                    why=why,
                )
            return
        took = self.clock.seconds() - seen
        self.counters["fence_lifted"] += 1
        self.reason = ""
        self.last_error = ""
        self._lift_refused = ""
        self._fenced_seen_at = None
        self.events.append((self.clock.seconds(), "fence lifted"))
        self.log.warn(
            "dbagent {node}: the primary's server had been fenced by a promotion that was "
            "given up; writable again {took}s after it was found read-only (semi-sync {semisync})",
            node=self.config.node,
            took=round(took, 3),
            semisync="on" if self.config.semisync else "off",
        )

    def _still_promoting(self) -> bool:
        """Asked from the promotion's thread before read_only OFF (attribute reads only)."""
        return self.role == Role.PROMOTING and self.group == State.MASTER

    def _stop_receiving(self) -> None:
        """
        Start stopping the receiver while the old primary is fenced or
        waited for: one reading from a cut link stops only when its read
        times out (slave_net_timeout). Started when the group does not hear
        the peer (a failover, not a switchover) or the peer is unreachable.
        Nothing acknowledged is lost: every write acknowledged to a client
        was in this relay log before its acknowledgement was sent. A live
        old primary's unacknowledged writes may then never reach this host
        (it rejoins quarantined, as after any loss of its link).
        """
        if self._receiver_stopping is None:
            self._step("stopping the receiver")
            self._receiver_stopping = self.local.call(
                ops.stop_receiving, timeout=self.config.promote_timeout
            )

    async def _reclone(self) -> None:
        serial = self._serial
        self.timeline = []
        self._step("reclone starts")
        self.problems = []
        await self.local.call(ops.forget_primary)
        schemas = await self.peer.call(ops.application_schemas)
        self._step("local server read-only, not replicating")
        dropped = await self.local.call(ops.drop_schemas, timeout=self.config.reclone_timeout)
        self._step("local schemas dropped")
        position = await self.local.in_thread(
            ops.copy_schemas,
            self.peer.address,
            self.local.address,
            schemas,
            self.config.reclone_timeout,
        )
        self._step("primary copied")
        binlog = await self.local.call(ops.reset_gtid_state, position)
        self._step("GTID state set")
        self.counters["recloned"] += 1
        self.log.info(
            "dbagent {node}: recloned from {primary} at {position} ({schemas}; dropped "
            "{dropped}); rejoining",
            node=self.config.node,
            primary=self.peer.describe(),
            position=str(binlog),
            schemas=", ".join(schemas) or "no schemas",
            dropped=", ".join(dropped) or "nothing",
        )
        if self._current(serial, "reclone"):
            self.machine.done()

    async def _semisync(self, on: bool) -> None:
        on = on and self.config.semisync
        await self.local.call(ops.set_semisync_master, on)
        self.counters["semisync_on" if on else "semisync_off"] += 1
        self.log.info(
            "dbagent {node}: semi-sync master {state}",
            node=self.config.node,
            state="ON (lossless)" if on else "OFF (DEGRADED: writes acknowledged alone)",
        )

    def _server_pid(self) -> int | None:
        path = self.config.server_pid_file
        if not path:
            return None
        try:
            return int(Path(path).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _stopped_from_pid_file(self) -> bool:
        pid = self._server_pid()
        return pid is not None and process_state(pid) in ("T", "t")

    def _server_exited(self) -> bool:
        """Whether the server of the pid file has exited (its connections are closed)."""
        pid = self._server_pid()
        return pid is None or process_exited(pid)

    def _kill_from_pid_file(self) -> bool:
        pid = self._server_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            return True
        return False


__all__ = ["AgentConfig", "DbAgent", "HealthSink", "VipGate"]

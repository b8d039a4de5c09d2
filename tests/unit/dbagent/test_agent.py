"""
The database agent service on a task.Clock, with fake servers that answer
on the clock (never synchronously, as the thread pool never does): bootstrap,
promotion behind a closed VIP gate, fencing an unreachable old primary by
waiting, anti-flapping, a frozen local primary, errant rejoin and
quarantine, and DEGRADED when the replica is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from clickpass.dbagent import agent as agentmod
from clickpass.dbagent import mariadb as ops
from clickpass.dbagent.agent import AgentConfig, DbAgent, VipGate
from clickpass.dbagent.gtid import Position, errant
from clickpass.dbagent.machine import Role
from clickpass.heartbeat.group import PeerView
from clickpass.heartbeat.wire import Health as Advertised
from clickpass.heartbeat.wire import State

CONFIG = AgentConfig(
    node="db2",
    check_interval=0.05,
    check_timeout=0.2,
    check_fall=2,
    fence_timeout=0.6,
    fence_wait=2.0,
    promote_timeout=5.0,
    rejoin_interval=0.25,
    flap_period=3600.0,
)


@dataclass
class Shared:
    """What both fake servers replicate between them: the failover record."""

    failovers: list[list[Any]] = field(default_factory=list)


class FakeServer:
    """
    One MariaDB server's role state. C{mode} is "up", "refused" (nothing
    listens) or "frozen" (never answers; the caller's timeout fires).
    """

    def __init__(self, clock: Clock, shared: Shared, name: str, **status: Any) -> None:
        self.clock = clock
        self.shared = shared
        self.name = name
        self.mode = "up"
        self.status_ = ops.ServerStatus(**status)
        self.calls: list[str] = []
        self.hanging: set[str] = set()  # these calls never answer
        # The next calls of a name fail with these, in order.
        self.failing: dict[str, list[BaseException]] = {}
        # Run inside a rejoin, after read-only (a late commit reaching the binlog).
        self.before_rejoin: Callable[[], None] | None = None
        # What the replica's state says once replication starts (errors).
        self.join_result: dict[str, Any] = {}
        # Who holds this server's fence lock (ops.FENCE_LOCK), if anyone.
        self.lock_holder: str | None = None
        # Seconds these calls take to answer (default 1 ms).
        self.delays: dict[str, float] = {}
        # Run once right after the next answer to a call of that name.
        self.after: dict[str, Callable[[], None]] = {}

    def set(self, **changes: Any) -> None:
        self.status_ = dataclasses.replace(self.status_, **changes)

    def describe(self) -> str:
        return self.name

    def _answer(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        s = self.status_
        if fn is ops.ping:
            return s.read_only
        if fn is ops.read_status:
            return s
        if fn is ops.fence_if_writable:
            fence_it = args[0]
            if s.read_only or not fence_it:
                return s, False
            self.set(read_only=True, semisync_master_enabled=False)
            return s, True
        if fn is ops.fence:
            self.set(read_only=True, semisync_master_enabled=False)
            return 0
        if fn is ops.drain_writes:
            self.set(read_only=True)
            return 0
        if fn is ops.resume_writes:
            (still_primary,) = args
            if self.lock_holder is not None or not still_primary():
                return False
            self.set(read_only=False)
            return True
        if fn is ops.configure_replica:
            self.set(
                read_only=True,
                semisync_master_enabled=False,
                replica_configured=True,
                io_running="Yes",
                sql_running="Yes",
                semisync_slave_enabled=True,
                semisync_slave_active=True,
            )
            return None
        if fn is ops.wait_replicating:
            return s
        if fn is ops.rejoin:
            # As the real one: read-only first, then the local history read
            # now (whatever changed since the agent last looked) and checked.
            _, primary_pos, _, proceed = args
            self.set(read_only=True, semisync_master_enabled=False)
            if self.before_rejoin is not None:
                self.before_rejoin()
            if primary_pos is not None:
                problems = errant(self.status_.binlog_pos, primary_pos)
                if problems:
                    return problems, self.status_
            if not proceed():
                raise ops.OperationFailed("the rejoin was given up")
            joined: dict[str, Any] = {
                "replica_configured": True,
                "io_running": "Yes",
                "sql_running": "Yes",
                "master_log_file": "bin.000001",
                "slave_pos": self.status_.binlog_pos,
                "semisync_slave_enabled": True,
                "semisync_slave_active": True,
            }
            self.set(**{**joined, **self.join_result})
            return [], self.status_
        if fn is ops.stop_receiving:
            self.set(io_running="No")
            return None
        if fn is ops.lift_fence:
            read_peer, still_primary, semisync = args
            if self.lock_holder is not None:
                return "the fence lock is held (the peer is promoting)"
            try:
                peer = read_peer()
            except Exception as e:
                return f"the peer's server does not answer ({e})"
            if not peer.read_only:
                return "the peer's server is writable"
            if not s.read_only:
                return "already writable"
            if not s.binlog_pos.reached(peer.binlog_pos):
                return "the peer holds transactions this server lacks"
            if not still_primary():
                return "no longer the primary"
            self.set(read_only=False, semisync_master_enabled=semisync)
            return ""
        if fn is agentmod.promote_and_record:
            _, semisync, bootstrap, at, node, mark, proceed, guard = args
            with guard():
                if not proceed():
                    raise ops.OperationFailed("the promotion was given up")
                self.set(read_only=False)
            self.set(
                replica_configured=False,
                io_running="No",
                sql_running="No",
                read_only=False,
                semisync_master_enabled=semisync,
            )
            record = self.shared.failovers[-1] if self.shared.failovers else None
            kind = "automatic"
            if bootstrap:
                kind = "bootstrap"
            elif record is not None and record[2] == "switchover" and not record[3]:
                kind = "switchover-done"
            self.shared.failovers.append([at, node, kind, kind == "switchover-done"])
            mark("read_only OFF")
            return s.binlog_pos, kind
        if fn is ops.set_semisync_master:
            self.set(semisync_master_enabled=args[0])
            return None
        if fn is ops.quarantine:
            self.set(read_only=True, io_running="No", sql_running="No")
            return None
        if fn is agentmod.last_failover:
            return tuple(self.shared.failovers[-1]) if self.shared.failovers else None
        if fn is agentmod.record_failover:
            at, node, kind = args
            self.shared.failovers.append([at, node, kind, False])
            return None
        if fn is agentmod.ack_failovers:
            for record in self.shared.failovers:
                record[3] = True
            return len(self.shared.failovers)
        raise AssertionError(f"unexpected call {fn.__name__}")

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Deferred[Any]:
        self.calls.append(fn.__name__)
        d: Deferred[Any] = Deferred()
        if self.mode == "frozen" or fn.__name__ in self.hanging:
            return d.addTimeout(timeout if timeout is not None else 5.0, self.clock)
        mode = self.mode
        failures = self.failing.get(fn.__name__)
        failure = failures.pop(0) if failures else None

        def answer() -> None:
            if failure is not None:
                d.errback(Failure(failure))
                return
            if mode == "reset":
                d.errback(Failure(ops.ServerGone("reset by peer", certain=False)))
                return
            if mode == "refused":
                d.errback(
                    Failure(
                        pymysql.err.OperationalError(2003, "Can't connect (Connection refused)")
                    )
                )
                return
            try:
                result = self._answer(fn, args)
            except Exception:
                d.errback(Failure())
                return
            hook = self.after.pop(fn.__name__, None)
            if hook is not None:
                hook()
            d.callback(result)

        self.clock.callLater(self.delays.get(fn.__name__, 0.001), answer)
        return d

    def _reachable(self, fn: Callable[..., Any]) -> None:
        """As a connection made from another operation's thread would find this server."""
        self.calls.append(fn.__name__)
        if self.mode == "frozen" or fn.__name__ in self.hanging:
            raise pymysql.err.OperationalError(2013, "Lost connection (timed out)")
        if self.mode == "refused":
            raise pymysql.err.OperationalError(2003, "Can't connect (Connection refused)")
        if self.mode == "reset":
            raise ops.ServerGone("reset by peer", certain=False)

    def blocking(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        self._reachable(fn)
        return self._answer(fn, args)

    @contextlib.contextmanager
    def held(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None
    ) -> Iterator[Any]:
        self._reachable(fn)
        assert fn is ops.guard_fence
        if self.lock_holder is not None:
            raise ops.OperationFailed("the old primary's fence lock is held")
        self.lock_holder = "guard"
        try:
            _, fenced = self._answer(ops.fence_if_writable, (True,))
            yield fenced
        finally:
            self.lock_holder = None

    def status(self) -> Deferred[ops.ServerStatus]:
        return self.call(ops.read_status)

    def ping(self, timeout: float) -> Deferred[bool]:
        return self.call(ops.ping, timeout=timeout)


@dataclass
class Health:
    reports: list[tuple[str, bool]] = field(default_factory=list)

    def set_health(self, name: str, ok: bool) -> None:
        self.reports.append((name, ok))

    @property
    def ok(self) -> bool:
        return self.reports[-1][1]


@dataclass
class FakeVip:
    log: list[str] = field(default_factory=list)

    def take(self, up: Callable[[], None]) -> None:
        self.log.append("take")
        up()

    def renew(self) -> None:
        pass

    def release(self) -> None:
        self.log.append("release")

    def announce(self) -> None:
        pass

    def refresh(self) -> None:
        pass


@dataclass
class World:
    clock: Clock
    local: FakeServer
    peer: FakeServer
    agent: DbAgent
    health: Health
    vip: FakeVip
    gate: VipGate
    killed: list[float]
    shared: Shared

    def run(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def until(
        self, predicate: Callable[[], bool], limit: float = 10.0, step: float = 0.01
    ) -> float:
        """Advance until C{predicate} holds; returns the simulated seconds it took."""
        start = self.clock.seconds()
        for _ in range(round(limit / step)):
            if predicate():
                return self.clock.seconds() - start
            self.clock.advance(step)
        raise AssertionError(f"not reached in {limit}s: {self.agent.status()}")

    @property
    def role(self) -> Role:
        return self.agent.role

    def agent_writable(self) -> bool:
        """Whether the local server takes writes now."""
        return not self.local.status_.read_only


def world(
    config: AgentConfig = CONFIG,
    local: dict[str, Any] | None = None,
    peer: dict[str, Any] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> World:
    clock = Clock()
    shared = Shared()
    lserver = FakeServer(clock, shared, "local", server_id=2, **(local or {}))
    pserver = FakeServer(clock, shared, "peer", server_id=1, **(peer or {}))
    health = Health()
    vip = FakeVip()
    gate = VipGate(vip)
    killed: list[float] = []

    def kill() -> bool:
        killed.append(clock.seconds())
        return True

    agent = DbAgent(
        clock,
        config,
        lserver,  # type: ignore[arg-type]
        pserver,  # type: ignore[arg-type]
        ops.ReplicaAccount("127.0.0.1", 3306, "repl", "pw"),
        health,
        gate,
        switchover=lambda: "handing over",
        kill_server=kill,
        server_stopped=stopped,
    )
    return World(clock, lserver, pserver, agent, health, vip, gate, killed, shared)


POS = Position.parse("0-1-10")


def replica_world(**kw: Any) -> World:
    """db2 a running replica of a writable db1 (the peer), both at 0-1-10."""
    w = world(
        local={"binlog_pos": POS},
        peer={"binlog_pos": POS, "read_only": False, "semisync_master_enabled": True},
        **kw,
    )
    w.agent.startService()
    w.agent.set_peer_present(True)
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.role == Role.REPLICA)
    return w


def primary_world() -> World:
    """db2 elected and promoted: PRIMARY, db1 its replica."""
    w = replica_world()
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role == Role.PRIMARY)
    return w


def test_a_new_host_is_fenced_first_and_rejoins_the_primary() -> None:
    """A server that appears is made read-only, then replicates from the writable peer."""
    w = replica_world()
    assert w.local.calls[:2] == ["ping", "fence"]
    assert "rejoin" in w.local.calls
    assert w.local.status_.read_only
    assert w.health.ok  # a healthy replica is electable


def test_bootstrap_promotes_behind_a_closed_vip_gate() -> None:
    """With no primary anywhere, the elected host promotes; the VIP waits for writability."""
    w = world(local={"binlog_pos": POS}, peer={"binlog_pos": POS})
    w.agent.startService()
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.agent.bootstrap_ok)
    assert w.role == Role.FENCED and w.health.ok
    # The group becomes MASTER and asks for the VIP at once...
    w.agent.group_state(State.MASTER)
    w.gate.take(lambda: None)
    assert w.vip.log == []
    # ...which it gets only once the promotion is done.
    w.until(lambda: w.role.writable)
    assert w.vip.log == ["take"]
    assert w.shared.failovers[-1][2] == "bootstrap"
    assert not w.local.status_.read_only
    # The peer is not present: promoted without semi-sync, visibly DEGRADED.
    w.until(lambda: w.role == Role.DEGRADED)
    assert w.agent.status()["degraded"]


def test_bootstrap_is_refused_when_the_peer_is_ahead() -> None:
    """A host behind its read-only peer is not electable, and refuses a promotion."""
    w = world(local={"binlog_pos": POS}, peer={"binlog_pos": Position.parse("0-1-11")})
    w.agent.startService()
    w.run(1.0)
    assert w.role == Role.FENCED
    assert not w.agent.bootstrap_ok and not w.health.ok
    w.agent.group_state(State.MASTER)
    w.run(1.0)
    assert not w.role.writable
    assert w.local.status_.read_only


def test_failover_when_the_old_primary_is_not_running() -> None:
    """Refused by the old primary whose VIP is off it: promote at once, without semi-sync."""
    w = replica_world()
    w.peer.mode = "refused"
    w.agent.set_peer_present(False, vip_off=True)
    w.agent.group_state(State.MASTER)
    took = w.until(lambda: w.role.writable)
    assert took < 0.5
    assert w.shared.failovers[-1][1:3] == ["db2", "automatic"]
    assert w.agent.counters["peer_gone"] == 1
    steps = [step for step, _ in w.agent.status()["timeline"]]
    assert steps[0] == "elected" and steps[-1] == "writable, VIP open"
    w.until(lambda: w.role == Role.DEGRADED)
    assert not w.local.status_.semisync_master_enabled


def test_a_refused_port_alone_does_not_skip_fence_wait() -> None:
    """Refused, but the group still hears the old primary as MASTER: wait out fence_wait."""
    w = replica_world()
    w.peer.mode = "refused"
    w.agent.set_peer_present(False, vip_off=False)
    elected = w.clock.seconds()
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role.writable, limit=CONFIG.fence_wait + 1)
    assert w.clock.seconds() - elected >= CONFIG.fence_wait
    assert w.agent.counters["fence_wait_over"] == 1


def test_a_frozen_old_primary_killed_by_its_agent_ends_the_wait() -> None:
    """Timeouts, then refused once its agent killed it and its VIP is off: no full fence_wait."""
    w = replica_world()
    w.peer.mode = "frozen"
    w.agent.set_peer_present(False)
    elected = w.clock.seconds()
    w.agent.group_state(State.MASTER)
    w.run(0.7)
    assert w.role == Role.PROMOTING
    w.peer.mode = "refused"
    w.agent.set_peer_present(False, vip_off=True)
    w.until(lambda: w.role.writable, limit=CONFIG.fence_wait)
    assert w.clock.seconds() - elected < CONFIG.fence_wait
    assert w.agent.counters["peer_gone"] == 1


def test_an_old_primary_unreachable_to_the_end_of_fence_wait_has_its_receiver_killed() -> None:
    """
    A first fence attempt that takes the whole fence_wait (its connect timeout
    ends with it) leaves no moment for the unreachable branch: the receiver is
    still stopped by killing its read (ops.stop_receiving) before the promotion,
    not by the promotion's STOP SLAVE waiting for the cut link's read to time out.
    """
    config = dataclasses.replace(CONFIG, fence_wait=0.5, fence_timeout=0.6)
    w = world(
        config,
        local={"binlog_pos": POS},
        peer={"binlog_pos": POS, "read_only": False, "semisync_master_enabled": True},
    )
    w.agent.startService()
    w.agent.set_peer_present(True)
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.role == Role.REPLICA)
    w.peer.mode = "frozen"
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role.writable, limit=3.0)
    calls = w.local.calls
    assert "stop_receiving" in calls
    assert calls.index("stop_receiving") < calls.index("promote_and_record")
    steps = [step for step, _ in w.agent.status()["timeline"]]
    assert steps.index("fence_wait over") < steps.index("receiver stopped")
    assert w.agent.counters["fence_wait_over"] == 1


def test_peer_vip_off_follows_the_group_and_the_lease() -> None:
    """A non-MASTER advert, or a MASTER silent past the lease, means the VIP is off the peer."""
    master = PeerView("db1", State.MASTER, 200, Advertised.OK, 0, 0.1, 10.0, "")
    assert not agentmod.peer_vip_off(None, 10.0, 2.0)
    assert not agentmod.peer_vip_off(master, 11.0, 2.0)
    assert agentmod.peer_vip_off(master, 12.2, 2.0)
    resigned = dataclasses.replace(master, priority=0)  # a handover still holds it
    assert not agentmod.peer_vip_off(resigned, 10.5, 2.0)
    faulted = dataclasses.replace(master, state=State.FAULT, health=Advertised.FAULT)
    assert agentmod.peer_vip_off(faulted, 10.0, 2.0)


def test_failover_fences_a_reachable_old_primary_first() -> None:
    """An old primary that answers is made read-only before this host becomes writable."""
    w = replica_world()
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role.writable)
    assert w.peer.status_.read_only
    assert w.agent.counters["peer_fenced"] == 1
    assert w.role == Role.PRIMARY  # the peer is present: lossless semi-sync stays on
    assert w.local.status_.semisync_master_enabled


def test_an_unreachable_old_primary_is_given_fence_wait_to_fence_itself() -> None:
    """A silent old primary: no promotion before fence_wait seconds after the election."""
    w = replica_world()
    w.peer.mode = "frozen"
    w.agent.set_peer_present(False)
    elected = w.clock.seconds()
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role == Role.PROMOTING)
    w.run(CONFIG.fence_wait - 0.1)
    assert w.role == Role.PROMOTING and w.local.status_.read_only
    w.until(lambda: w.role.writable, limit=1.0)
    assert w.clock.seconds() - elected >= CONFIG.fence_wait


def test_no_second_automatic_failover_until_acknowledged() -> None:
    """After an automatic failover, an elected replica does not promote until `db ack`."""
    w = replica_world()
    w.shared.failovers.append([w.clock.seconds(), "db1", "automatic", False])
    w.run(0.5)
    assert w.agent.blocked and not w.health.ok
    w.agent.group_state(State.MASTER)
    w.run(1.0)
    assert w.role == Role.REPLICA
    assert w.agent.counters["failover_blocked"] >= 1
    d = Deferred.fromCoroutine(w.agent.ack())
    w.run(0.1)
    assert d.called
    w.until(lambda: w.role.writable)


def test_a_switchover_after_an_automatic_failover_is_not_held_by_an_old_block_reading() -> None:
    """
    The switchover's record lifts the block at once: an election right after
    it reads the block again rather than trusting the reading from moments ago.
    """
    w = replica_world()
    w.shared.failovers.append([w.clock.seconds(), "db1", "automatic", False])
    w.run(0.5)
    assert w.agent.blocked
    w.run(0.01)
    w.shared.failovers.append([w.clock.seconds(), "db1", "switchover", False])
    w.agent.group_state(State.MASTER)
    w.run(0.05)
    assert w.role in (Role.PROMOTING, Role.PRIMARY)
    assert w.agent.counters["failover_blocked"] == 0
    w.until(lambda: w.role.writable)
    assert w.agent.last_promotion == "switchover-done"


def test_the_flap_block_ends_after_flap_period() -> None:
    """An unacknowledged automatic failover older than flap_period blocks nothing."""
    config = dataclasses.replace(CONFIG, flap_period=5.0)
    w = replica_world(config=config)
    w.shared.failovers.append([w.clock.seconds(), "db1", "automatic", False])
    w.run(0.5)
    assert w.agent.blocked
    w.run(5.0)
    assert not w.agent.blocked and w.health.ok


def test_a_frozen_local_primary_stops_being_writable_and_is_killed() -> None:
    """Checks time out: the VIP goes at once, the fence times out, the server is killed."""
    w = replica_world()
    w.agent.group_state(State.MASTER)
    w.gate.take(lambda: None)
    w.until(lambda: w.role == Role.PRIMARY)
    assert w.vip.log == ["take"]
    w.local.mode = "frozen"
    frozen = w.clock.seconds()
    w.until(lambda: w.role == Role.DEMOTING, limit=2.0)
    assert w.vip.log == ["take", "release"]
    detect = w.clock.seconds() - frozen
    assert detect <= CONFIG.check_fall * (CONFIG.check_interval + CONFIG.check_timeout) + 0.1
    w.until(lambda: bool(w.killed), limit=2.0)
    assert w.agent.counters["server_killed"] == 1
    assert w.killed[0] - frozen < detect + CONFIG.fence_timeout + 0.1


def test_a_stopped_local_primary_is_killed_before_its_vip_goes() -> None:
    """
    Its process stopped (SIGSTOP): down at the first unanswered check, and
    killed while the VIP is still here, so that its clients' connections end
    with a reset they can hear (sent from the VIP, which must still be there).
    """
    stopped = [False]
    w = replica_world(stopped=lambda: stopped[0])
    w.gate.drain = w.agent.drain_clients

    def kill() -> bool:
        w.vip.log.append("kill")
        stopped[0] = False  # killed: no longer a stopped process
        return True

    w.agent.kill_server = kill
    w.agent.group_state(State.MASTER)
    w.gate.take(lambda: None)
    w.until(lambda: w.role == Role.PRIMARY)
    w.local.mode = "frozen"
    stopped[0] = True
    frozen = w.clock.seconds()
    w.until(lambda: "release" in w.vip.log, limit=2.0)
    assert w.clock.seconds() - frozen <= CONFIG.check_interval + CONFIG.check_timeout + 0.1
    assert w.vip.log == ["take", "kill", "release"]
    assert w.agent.counters["stopped_killed"] == 1


def test_the_vip_gate_ends_the_clients_before_it_lets_the_address_go() -> None:
    """Released (by the group or the agent) while held: the drain first, then one release."""
    vip = FakeVip()
    gate = VipGate(vip)
    drained: list[Deferred[object]] = []

    def drain() -> Deferred[object]:
        drained.append(Deferred())
        return drained[-1]

    gate.drain = drain
    gate.take(lambda: None)
    gate.set_open(True)
    gate.set_open(False)
    gate.release()  # the group's own release, while the drain runs
    assert vip.log == ["take"] and len(drained) == 1
    drained[0].callback(None)
    assert vip.log == ["take", "release"]
    gate.release()  # not held: passed through, no drain
    assert vip.log == ["take", "release", "release"] and len(drained) == 1


def test_an_address_taken_again_while_draining_is_kept() -> None:
    vip = FakeVip()
    gate = VipGate(vip)
    pending: Deferred[object] = Deferred()
    gate.drain = lambda: pending
    gate.take(lambda: None)
    gate.set_open(True)
    gate.set_open(False)
    gate.set_open(True)
    pending.callback(None)
    assert vip.log == ["take", "take"] and gate.held


def test_process_states_are_read_from_proc() -> None:
    """Running, stopped (T), and exited with its threads (a zombie alone)."""
    import os
    import signal
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        # Just after exec the child may still be loading (D, uninterruptible
        # sleep on a busy disk): any state of a living process will do.
        assert agentmod.process_state(child.pid) in ("R", "S", "D")
        assert not agentmod.process_exited(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        for _ in range(200):
            if agentmod.process_state(child.pid) == "T":
                break
            time.sleep(0.01)
        assert agentmod.process_state(child.pid) == "T"
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(200):
            if agentmod.process_exited(child.pid):
                break
            time.sleep(0.01)
        assert agentmod.process_exited(child.pid)  # a zombie until reaped
    finally:
        child.kill()
        child.wait()
    assert agentmod.process_state(child.pid) == ""
    assert agentmod.process_exited(child.pid)


def test_errant_history_is_quarantined_until_released() -> None:
    """A returning host ahead of the primary is quarantined; rejoin --force releases it."""
    w = world(
        local={"binlog_pos": Position.parse("0-2-11")},
        peer={"binlog_pos": POS, "read_only": False},
    )
    w.agent.startService()
    w.until(lambda: w.role == Role.QUARANTINED)
    assert w.agent.problems and "past the primary" in w.agent.problems[0]
    assert "quarantine" in w.local.calls
    assert not w.health.ok
    w.run(2.0)
    assert w.role == Role.QUARANTINED  # no automatic way out
    assert w.agent.release() == {"role": "rejoining"}
    w.until(lambda: w.role == Role.REPLICA)


def test_release_refuses_a_host_that_is_not_quarantined() -> None:
    """rejoin --force on a healthy replica is a one-line error, not a state change."""
    w = replica_world()
    try:
        w.agent.release()
    except ValueError as e:
        assert "not quarantined" in str(e)
    else:
        raise AssertionError("release of a replica was accepted")
    assert w.role == Role.REPLICA


def test_primary_goes_degraded_when_the_replica_is_gone_and_back_when_it_returns() -> None:
    """DEGRADED only when the group agrees and no replica acks; lossless again when caught up."""
    w = primary_world()
    w.local.set(semisync_master_clients=1)
    w.agent.set_peer_present(False)
    w.run(1.0)
    assert w.role == Role.PRIMARY  # a replica still acknowledges: not alone
    w.local.set(semisync_master_clients=0)
    w.until(lambda: w.role == Role.DEGRADED)
    w.run(0.05)  # the semi-sync change runs after the role change
    assert not w.local.status_.semisync_master_enabled
    # The replica comes back, streaming with semi-sync and caught up.
    w.peer.set(**STREAMING, slave_pos=POS)
    w.agent.set_peer_present(True)
    w.until(lambda: w.role == Role.PRIMARY)
    w.run(0.05)
    assert w.local.status_.semisync_master_enabled


STREAMING: dict[str, Any] = {
    "read_only": True,
    "replica_configured": True,
    "io_running": "Yes",
    "sql_running": "Yes",
    "master_log_file": "bin.000001",
    "semisync_slave_enabled": True,
}


def degraded_world() -> World:
    w = primary_world()
    w.agent.set_peer_present(False)
    w.until(lambda: w.role == Role.DEGRADED)
    return w


def test_a_returning_replica_counts_as_caught_up_on_what_it_received() -> None:
    """A semi-sync acknowledgement covers receipt: an applier still behind does not keep it off."""
    w = degraded_world()
    w.local.set(binlog_pos=Position.parse("0-1-500"))
    w.peer.set(**STREAMING, slave_pos=POS, io_pos=Position.parse("0-1-495"))
    w.agent.set_peer_present(True)
    took = w.until(lambda: w.role == Role.PRIMARY)
    assert took < CONFIG.catchup_wait / 2
    assert w.agent.counters["replica_back"] == 1


def test_a_replica_that_cannot_catch_up_gets_semi_sync_after_catchup_wait() -> None:
    """
    Under a write load the returning replica cannot outrun, the primary does
    not stay unprotected for as long as the load lasts: after catchup_wait
    of streaming, semi-sync goes on and writes wait for the replica.
    """
    w = degraded_world()
    w.local.set(binlog_pos=Position.parse("0-1-5000"))
    w.peer.set(**STREAMING, slave_pos=POS, io_pos=Position.parse("0-1-3000"))
    w.agent.set_peer_present(True)
    w.run(CONFIG.catchup_wait - 1.0)
    assert w.role == Role.DEGRADED
    assert w.agent.status()["reason"] == "the replica is back, 2000 transactions behind"
    w.until(lambda: w.role == Role.PRIMARY, limit=2.0)
    w.run(0.05)
    assert w.local.status_.semisync_master_enabled


def test_the_catch_up_wait_starts_again_when_the_replica_stops_streaming() -> None:
    """Only time spent streaming counts; a replica that stops and starts again waits afresh."""
    w = degraded_world()
    w.local.set(binlog_pos=Position.parse("0-1-5000"))
    w.peer.set(**STREAMING, io_pos=Position.parse("0-1-3000"))
    w.agent.set_peer_present(True)
    w.run(CONFIG.catchup_wait - 1.0)
    w.peer.set(io_running="Connecting")
    w.run(1.0)
    assert w.agent.status()["reason"] == "the replica is back but not streaming with semi-sync"
    w.peer.set(io_running="Yes")
    w.run(CONFIG.catchup_wait - 1.0)
    assert w.role == Role.DEGRADED
    w.until(lambda: w.role == Role.PRIMARY, limit=2.0)


def test_an_unreadable_replica_keeps_the_primary_degraded() -> None:
    """A replica whose status cannot be read is not counted as back."""
    w = degraded_world()
    w.peer.set(**STREAMING, slave_pos=POS)
    w.peer.mode = "refused"
    w.agent.set_peer_present(True)
    w.run(CONFIG.catchup_wait + 2.0)
    assert w.role == Role.DEGRADED
    assert "could not be read" in w.agent.status()["reason"]
    w.peer.mode = "up"
    w.until(lambda: w.role == Role.PRIMARY)


def test_losing_the_election_fences_the_primary() -> None:
    """BACKUP/FAULT from the group while PRIMARY: read-only and the VIP released."""
    w = replica_world()
    w.agent.group_state(State.MASTER)
    w.gate.take(lambda: None)
    w.until(lambda: w.role == Role.PRIMARY)
    w.agent.group_state(State.FAULT)
    assert w.vip.log == ["take", "release"]
    w.until(lambda: w.role in (Role.FENCED, Role.REJOINING, Role.REPLICA))
    assert w.local.status_.read_only


ENDED = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
TIMED_OUT = pymysql.err.OperationalError(
    2013, "Lost connection to MySQL server during query (timed out)"
)


def test_a_fence_whose_connection_is_ended_is_tried_again() -> None:
    """
    The peer taking over fences this server too, and its fence ends every
    client connection, the local fence's included: the fence is tried again
    on a new connection, and the server is not killed.
    """
    w = primary_world()
    w.local.failing["fence"] = [ENDED, pymysql.err.OperationalError(1927, "Connection was killed")]
    before = w.local.calls.count("fence")
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.role in (Role.FENCED, Role.REJOINING, Role.REPLICA))
    assert w.local.status_.read_only
    assert w.killed == []
    assert w.agent.counters["fence_connection_ended"] == 2
    assert w.local.calls.count("fence") - before == 3


def test_a_fence_that_times_out_kills_the_server_at_once() -> None:
    """A timeout says the server may be frozen: no second try, the server is killed."""
    w = primary_world()
    w.local.failing["fence"] = [TIMED_OUT]
    before = w.local.calls.count("fence")
    w.agent.group_state(State.BACKUP)
    w.until(lambda: bool(w.killed))
    assert w.local.calls.count("fence") - before == 1
    assert w.agent.counters["fence_connection_ended"] == 0


def test_a_fence_ended_every_time_kills_the_server() -> None:
    """Ended on every try: the fence failed, and the server is killed."""
    w = primary_world()
    w.local.failing["fence"] = [ENDED, ENDED, ENDED]
    before = w.local.calls.count("fence")
    w.agent.group_state(State.BACKUP)
    w.until(lambda: bool(w.killed))
    assert w.local.calls.count("fence") - before == agentmod.FENCE_ATTEMPTS


def test_a_slow_server_is_not_down_while_it_promotes() -> None:
    """Checks timing out during a promotion do not abort it; its own timeout does."""
    w = replica_world()
    w.peer.mode = "refused"
    w.local.hanging = {"ping", "promote_and_record"}
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role == Role.PROMOTING)
    w.run(3.0)
    assert w.role == Role.PROMOTING
    assert w.agent.counters["slow_checks_while_promoting"] > 0
    w.until(lambda: w.role in (Role.FENCING, Role.DOWN), limit=CONFIG.promote_timeout + 6)
    assert not w.role.writable


def test_only_a_refusal_or_a_reset_says_nothing_listens() -> None:
    """Refused: certain; reset before the greeting: ask again; a timeout or a close: nothing."""
    error = pymysql.err.OperationalError
    assert ops.nothing_listens(error(2003, "Can't connect ([Errno 111] Connection refused)"))
    assert ops.nothing_listens(error(2002, "Can't connect ([Errno 2] No such file or directory)"))
    reset = ops.nothing_listens(error(2003, "Can't connect ([Errno 104] Connection reset by peer)"))
    assert reset is False
    for vague in (
        error(2013, "Lost connection to MySQL server during query (timed out)"),
        error(2003, "Can't connect to MySQL server on '10.0.0.1' (timed out)"),
        error(2013, "Lost connection to MySQL server during query"),  # killed: a clean close
        error(1045, "Access denied"),
    ):
        assert ops.nothing_listens(vague) is None
    assert agentmod.refused(ops.ServerGone("refused", certain=True))
    assert not agentmod.refused(ops.ServerGone("reset", certain=False))
    assert agentmod.reset(ops.ServerGone("reset", certain=False))


def test_a_reset_counts_once_when_the_peer_reports_its_server_down() -> None:
    """Reset before the greeting: gone at once if the peer advertises FAULT, else on a second."""
    for server_down, probes in ((True, 1), (False, 2)):
        w = replica_world()
        w.peer.mode = "reset"
        w.agent.set_peer_present(False, vip_off=True, server_down=server_down)
        before = w.peer.calls.count("fence_if_writable")
        w.agent.group_state(State.MASTER)
        w.until(lambda w=w: w.role.writable, limit=1.0)  # type: ignore[misc]
        assert w.peer.calls.count("fence_if_writable") - before == probes
        assert w.agent.counters["peer_gone"] == 1


def test_a_rejoin_checks_the_history_the_server_holds_when_replication_starts() -> None:
    """
    A commit that reaches the local binlog after the agent last read it (a
    fenced server's last commit, a restart's recovery) is seen by the check
    made on the rejoining connection: quarantined, never replicating.
    """
    w = world(
        local={"binlog_pos": POS},
        peer={"binlog_pos": POS, "read_only": False, "semisync_master_enabled": True},
    )
    w.local.before_rejoin = lambda: w.local.set(binlog_pos=Position.parse("0-2-11"))
    w.agent.startService()
    w.agent.set_peer_present(True)
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.role == Role.QUARANTINED)
    assert "past the primary" in w.agent.problems[0]
    assert w.agent.counters["rejoined"] == 0
    assert not w.local.status_.replica_configured


def test_a_replica_that_applied_past_an_earlier_reading_of_the_primary_rejoins() -> None:
    """
    A replica restarted under writes goes on applying after its agent read the
    primary's position: the rejoin's check finds it "past" that reading. The
    primary is read again (nothing moves here any more) and, as it holds every
    transaction this host has, the host rejoins instead of being quarantined.
    """
    w = world(
        local={"binlog_pos": POS},
        peer={"binlog_pos": POS, "read_only": False, "semisync_master_enabled": True},
    )

    def applied_meanwhile() -> None:
        w.local.set(binlog_pos=Position.parse("0-1-12"))
        w.peer.set(binlog_pos=Position.parse("0-1-14"))

    w.local.before_rejoin = applied_meanwhile
    w.agent.startService()
    w.agent.set_peer_present(True)
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.role in (Role.REPLICA, Role.QUARANTINED))
    assert w.role == Role.REPLICA, w.agent.problems
    assert w.agent.counters["quarantined"] == 0
    assert w.agent.counters["rejoin_rechecked"] == 1
    assert w.local.calls.count("rejoin") == 2


def test_a_rejoin_still_errant_against_the_primary_read_again_is_quarantined() -> None:
    """
    Read again, a primary whose history still lacks a transaction this host has
    (0-2-11, ours alone) leaves the host quarantined: the second reading saves
    only a host whose transactions the primary holds.
    """
    w = world(
        local={"binlog_pos": POS},
        peer={"binlog_pos": POS, "read_only": False, "semisync_master_enabled": True},
    )

    def diverged() -> None:
        w.local.set(binlog_pos=Position.parse("0-2-11"))
        w.peer.set(binlog_pos=Position.parse("0-1-11"))

    w.local.before_rejoin = diverged
    w.agent.startService()
    w.agent.set_peer_present(True)
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.role == Role.QUARANTINED)
    assert "0-2-11 here" in w.agent.problems[0]
    assert w.agent.counters["rejoin_rechecked"] == 1
    assert not w.local.status_.replica_configured


def test_a_rejoin_the_primary_refuses_is_quarantined_not_rejoined() -> None:
    """
    0-2-8 here and 0-1-10 on the primary may be contained by position; the
    primary's refusal (1236) when replication starts quarantines the host.
    """
    w = world(
        local={"binlog_pos": Position.parse("0-2-8")},
        peer={"binlog_pos": POS, "read_only": False, "semisync_master_enabled": True},
    )
    w.local.join_result = {
        "io_running": "No",
        "master_log_file": "",
        "last_io_errno": 1236,
        "last_io_error": "Got fatal error 1236 from master: GTID 0-2-8 not in the master's binlog",
    }
    w.agent.startService()
    w.agent.set_peer_present(True)
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.role == Role.QUARANTINED)
    assert "1236" in w.agent.problems[0]
    assert w.agent.counters["rejoined"] == 0


def test_a_replica_whose_applier_stops_on_a_gtid_error_is_quarantined() -> None:
    """
    A replica whose applier stops with out-of-order GTID (1950: a local
    transaction the primary lacks) is quarantined, not left broken and not
    restarted; it stays so until an operator decides.
    """
    w = replica_world()
    error = (
        "An attempt was made to binlog GTID 0-1-11 which would create an out-of-order "
        "sequence number with existing GTID 0-2-11, and gtid strict mode is enabled"
    )
    w.local.set(sql_running="No", last_sql_errno=1950, last_sql_error=error)
    w.until(lambda: w.role == Role.QUARANTINED, limit=2.0)
    assert "1950" in w.agent.problems[0] and "out-of-order" in w.agent.problems[0]
    assert w.agent.counters["quarantined"] == 1
    assert "quarantine" in w.local.calls
    w.run(2.0)
    assert w.role == Role.QUARANTINED
    assert not w.health.ok


def test_a_replica_refused_by_its_primary_on_reconnect_is_quarantined() -> None:
    """The receiver stopped by 1236 (the primary lacks our GTID) quarantines a replica."""
    w = replica_world()
    w.local.set(io_running="No", last_io_errno=1236, last_io_error="Got fatal error 1236")
    w.until(lambda: w.role == Role.QUARANTINED, limit=2.0)
    assert "refused by the primary" in w.agent.problems[0]


def test_a_replica_whose_applier_stops_on_another_error_rejoins() -> None:
    """An applier stopped by an error that is no GTID divergence is restarted by a rejoin."""
    w = replica_world()
    rejoins = w.agent.counters["rejoined"]
    w.local.set(sql_running="No", last_sql_errno=1205, last_sql_error="Lock wait timeout")
    w.until(lambda: w.agent.counters["rejoined"] > rejoins, limit=3.0)
    assert w.role == Role.REPLICA and w.agent.counters["quarantined"] == 0


def test_divergence_names_gtid_errors_only() -> None:
    """The replication errors that mean diverged history, and only those."""
    assert ops.divergence(ops.ServerStatus()) == ""
    assert ops.divergence(ops.ServerStatus(last_io_errno=2003, last_io_error="can't connect")) == ""
    assert ops.divergence(ops.ServerStatus(last_io_errno=1236, last_io_error="x"))
    for code in (1945, 1947, 1948, 1950, 1951):
        assert ops.divergence(ops.ServerStatus(last_sql_errno=code, last_sql_error="x"))
    stopped = ops.ServerStatus(last_sql_errno=1594, last_sql_error="GTID 0-2-8 out of order")
    assert ops.divergence(stopped)
    assert not ops.divergence(ops.ServerStatus(last_sql_errno=1062, last_sql_error="Duplicate"))


def test_an_overtaken_promotion_feeds_nothing_into_the_machine() -> None:
    """
    A promotion that completes after the host was demoted does not end the
    fence that followed it (its late "done" is not the fence's).
    """
    w = replica_world()
    w.peer.mode = "refused"
    w.agent.set_peer_present(False, vip_off=True)
    w.local.hanging.add("fence")
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role == Role.PROMOTING)
    w.agent.group_state(State.BACKUP)
    assert w.role == Role.FENCING
    w.run(0.3)
    # The promotion gave up after the demotion (its failure is late): the
    # fence started for the demotion is still what the machine waits for,
    # not taken for failed (DOWN, and a second fence).
    assert w.agent.counters["promote_failed"] == 1
    assert w.role == Role.FENCING and w.agent.counters["entered_down"] == 0
    assert w.local.calls.count("fence") == 2


def test_a_switchover_makes_the_primary_read_only_before_it_hands_over() -> None:
    """
    A planned switchover: the record, then the server read-only with its
    transactions drained (no client ended: they get a clean read-only
    refusal), and only then is the group asked to hand the VIP over.
    """
    w = primary_world()
    w.agent.set_peer_present(True)
    handed: list[list[str]] = []

    def hand_over() -> str:
        handed.append(list(w.local.calls))
        return "handing over"

    w.agent._switchover = hand_over
    w.local.calls.clear()
    d = Deferred.fromCoroutine(w.agent.switchover())
    w.run(0.1)
    assert d.result == "handing over"
    assert handed == [["record_failover", "drain_writes"]]
    assert w.local.status_.read_only
    assert w.agent.counters["switchover_drained"] == 1
    assert "fence" not in w.local.calls


def test_a_switchover_no_peer_takes_up_leaves_the_primary_writable_again() -> None:
    """
    The group hands over but no peer becomes MASTER in time (HANDOVER, then
    MASTER again): the primary, still PRIMARY, is made writable again.
    """
    w = primary_world()
    w.agent.set_peer_present(True)
    d = Deferred.fromCoroutine(w.agent.switchover())
    w.run(0.1)
    assert d.called and w.local.status_.read_only
    w.agent.group_state(State.HANDOVER)
    w.run(0.1)
    assert w.local.status_.read_only
    w.agent.group_state(State.MASTER)
    w.run(0.1)
    assert w.role == Role.PRIMARY
    assert not w.local.status_.read_only
    assert w.agent.counters["switchover_resumed"] == 1


def test_a_drained_primary_that_lost_its_role_is_not_made_writable_again() -> None:
    """
    Writes resume only on a host that is still the primary: one whose peer
    is heard as MASTER meanwhile stays read-only (never two writable).
    """
    w = primary_world()
    w.agent.set_peer_present(True)
    d = Deferred.fromCoroutine(w.agent.switchover())
    w.run(0.1)
    assert d.called
    w.agent.group_state(State.HANDOVER)
    w.agent.set_peer_present(True, master=True)
    w.agent.group_state(State.MASTER)
    w.run(0.1)
    assert w.local.status_.read_only
    assert w.agent.counters["switchover_not_resumed"] == 1


def test_a_switchover_with_no_healthy_replica_is_refused_before_anything_changes() -> None:
    """No peer heard to take over: refused in one line, the server left writable."""
    w = primary_world()
    w.agent.set_peer_present(False)
    d = Deferred.fromCoroutine(w.agent.switchover())
    w.run(0.1)
    seen: list[Failure] = []
    d.addErrback(seen.append)
    assert "no healthy replica is heard to take over" in str(seen[0].value)
    assert not w.local.status_.read_only
    assert "drain_writes" not in w.local.calls


# A primary fenced by a peer whose promotion was given up.


def fenced_primary_world() -> World:
    """
    db2 PRIMARY (writable, semi-sync on, the VIP held), db1 its read-only
    replica heard as BACKUP; then db1's agent, a candidate that missed
    adverts, fences db2's server over the network (read-only, semi-sync off)
    while the group still hears it as MASTER (promoting).
    """
    w = primary_world()
    w.gate.take(lambda: None)
    assert w.role == Role.PRIMARY and not w.local.status_.read_only
    w.agent.set_peer_present(True, master=True)
    w.local.set(read_only=True, semisync_master_enabled=False)
    return w


def test_a_primary_fenced_by_a_given_up_promotion_is_writable_again_at_once() -> None:
    """
    The candidate gives its promotion up (the group hears it as not MASTER
    any more, and its FENCED agent reports FAULT): the primary, still PRIMARY
    and MASTER, finds its server read-only, the peer read-only with nothing
    newer, and lifts the fence within a few checks, semi-sync on first.
    """
    w = fenced_primary_world()
    w.run(1.0)
    # Promoting (heard as MASTER): nothing is lifted.
    assert w.local.status_.read_only and w.agent.counters["fence_lifted"] == 0
    w.agent.set_peer_present(False, heard=True)
    took = w.until(lambda: not w.local.status_.read_only, limit=3.0)
    assert took <= 3 * CONFIG.check_interval
    assert w.local.status_.semisync_master_enabled
    assert w.role == Role.PRIMARY and w.vip.log == ["take"]
    assert w.agent.counters["fence_lifted"] == 1
    assert "fence lifted" in [what for _, what in w.agent.events]


def test_a_fenced_primary_is_neither_lifted_nor_degraded_while_the_peer_is_master() -> None:
    """A peer heard as MASTER is promoting: the primary stays read-only, and not DEGRADED."""
    w = fenced_primary_world()
    w.agent.set_peer_present(False, heard=True)
    w.agent.peer_master = True  # not heard as healthy, but its MASTER advert was
    w.run(CONFIG.degrade_after + 1)
    assert w.local.status_.read_only
    assert w.role == Role.PRIMARY
    assert w.agent.counters["fence_lifted"] == 0
    assert w.agent.counters["degraded"] == 0


def test_a_fenced_primary_is_not_lifted_when_the_peer_promoted_after_all() -> None:
    """
    The peer's server is writable (its adverts were lost: the group does not
    hear it as MASTER), or read-only again but holding transactions this
    server lacks (it took writes as a primary): the fence stays.
    """
    for peer in (
        {"read_only": False},
        {"read_only": True, "binlog_pos": Position.parse("0-1-11")},
        {"read_only": True, "binlog_pos": Position.parse("0-1-10,1-1-1")},
    ):
        w = fenced_primary_world()
        w.peer.set(**peer)
        w.agent.set_peer_present(True, master=False)
        w.run(2.0)
        assert w.local.status_.read_only, peer
        assert w.agent.counters["fence_lift_refused"] >= 1
        assert w.agent.counters["fence_lifted"] == 0
        assert "stays so" in w.agent.status()["reason"]
        # Refusals are asked again every rejoin_interval, not at every check.
        assert w.agent.counters["fence_lift_refused"] <= 2.0 / CONFIG.rejoin_interval + 1


def test_a_fenced_primary_cut_off_from_its_peer_stays_read_only() -> None:
    """
    A partition: the peer's adverts are not heard (it may be promoting), or
    they are but its server does not answer, or nothing listens there. The
    peer is never taken for read-only, and the primary stays fenced (and
    not DEGRADED) until the partition heals.
    """
    for mode, heard in (("up", False), ("frozen", True), ("refused", True)):
        w = fenced_primary_world()
        w.peer.mode = mode
        w.agent.set_peer_present(False, heard=heard)
        w.run(CONFIG.degrade_after + 1)
        assert w.local.status_.read_only, mode
        assert w.agent.counters["fence_lifted"] == 0
        assert w.role == Role.PRIMARY
        # The partition heals, the peer read-only with nothing newer: lifted.
        w.peer.mode = "up"
        w.agent.set_peer_present(False, heard=True)
        w.until(w.agent_writable, limit=2 * CONFIG.rejoin_interval + 0.5)


def test_a_fenced_primary_waits_while_the_peer_holds_its_fence_lock() -> None:
    """The peer's promotion holds the fence lock on this server: no lift until it lets go."""
    w = fenced_primary_world()
    w.local.lock_holder = "db1's promotion"
    w.agent.set_peer_present(False, heard=True)
    w.run(1.0)
    assert w.local.status_.read_only and w.agent.counters["fence_lift_refused"] >= 1
    w.local.lock_holder = None
    w.until(lambda: not w.local.status_.read_only, limit=1.0)


def test_a_primary_read_only_on_purpose_is_not_lifted() -> None:
    """A switchover's drain, a DEGRADED primary, a group no longer MASTER: left read-only."""
    w = fenced_primary_world()
    w.agent._drained_for_switchover = True
    w.agent.set_peer_present(False, heard=True)
    w.run(1.0)
    assert w.local.status_.read_only
    w = fenced_primary_world()
    w.agent.group_state(State.BACKUP)
    w.agent.set_peer_present(False, heard=True)
    w.run(1.0)
    assert w.role == Role.FENCED and w.local.status_.read_only
    assert w.agent.counters["fence_lifted"] == 0


def test_a_promotion_fences_again_an_old_primary_that_lifted_its_fence() -> None:
    """
    The old primary answered the first fence, then its agent lifted it (it
    had not heard this host as MASTER): right before this server becomes
    writable, the promotion takes the old primary's fence lock and fences it
    again, so the two are never writable together.
    """
    w = replica_world()
    w.peer.after["fence_if_writable"] = lambda: w.peer.set(read_only=False)
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role.writable)
    assert w.peer.status_.read_only and w.peer.lock_holder is None
    steps = [step for step, _ in w.agent.status()["timeline"]]
    assert steps.index("old primary fenced again") < steps.index("writable, VIP open")


def test_a_promotion_does_not_go_writable_while_a_lift_holds_the_lock() -> None:
    """The old primary's fence lock is held past fence_timeout: the promotion fails, read-only."""
    w = replica_world()
    w.peer.after["fence_if_writable"] = lambda: setattr(w.peer, "lock_holder", "its lift")
    w.agent.group_state(State.MASTER)
    w.run(1.0)
    assert w.local.status_.read_only and not w.role.writable
    assert w.agent.counters["promote_failed"] >= 1
    assert w.agent.counters["promoted"] == 0


def test_a_promotion_goes_on_when_the_old_primary_stops_answering_before_its_last_check() -> None:
    """Gone since it answered the first fence: its agent cannot lift anything either."""
    w = replica_world()
    w.peer.after["fence_if_writable"] = lambda: setattr(w.peer, "mode", "frozen")
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.role.writable)
    steps = [step for step, _ in w.agent.status()["timeline"]]
    assert any(step.startswith("old primary does not answer the last check") for step in steps)


def test_a_promotion_given_up_after_the_fence_hands_the_role_back() -> None:
    """No longer MASTER after fencing the old primary: given up, counted, rejoins it."""
    w = replica_world()
    w.local.delays["stop_receiving"] = 0.3
    w.agent.set_peer_present(False)
    w.agent.group_state(State.MASTER)
    w.until(lambda: w.peer.status_.read_only, limit=1.0)
    w.agent.group_state(State.BACKUP)
    w.until(lambda: w.agent.counters["promotion_given_up_after_fence"] == 1, limit=1.0)
    assert not w.role.writable and w.local.status_.read_only
    # The old primary's agent lifts its fence; this host then rejoins it.
    w.agent.set_peer_present(True, master=True)
    w.peer.set(read_only=False)
    w.until(lambda: w.role == Role.REPLICA, limit=2.0)


# Both agents of a pair on one clock, over the same two fake servers.


@dataclass
class Duo:
    clock: Clock
    s1: FakeServer
    s2: FakeServer
    a: DbAgent  # db1: its local server is s1
    b: DbAgent  # db2: its local server is s2
    both_writable: int = 0

    def run(self, seconds: float, step: float = 0.001) -> None:
        """Advance, counting every moment both servers take writes."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            if not self.s1.status_.read_only and not self.s2.status_.read_only:
                self.both_writable += 1

    def until(self, predicate: Callable[[], bool], limit: float = 5.0) -> float:
        start = self.clock.seconds()
        while not predicate():
            if self.clock.seconds() - start > limit:
                raise AssertionError(
                    f"not reached in {limit}s: {self.a.status()} {self.b.status()}"
                )
            self.run(0.001)
        return self.clock.seconds() - start


def duo() -> Duo:
    """db1 PRIMARY (lossless, semi-sync on) on s1, db2 its REPLICA on s2, each hearing the other."""
    clock = Clock()
    shared = Shared()
    s1 = FakeServer(clock, shared, "s1", server_id=1, binlog_pos=POS)
    s2 = FakeServer(clock, shared, "s2", server_id=2, binlog_pos=POS)

    def agent(node: str, local: FakeServer, peer: FakeServer) -> DbAgent:
        return DbAgent(
            clock,
            dataclasses.replace(CONFIG, node=node),
            local,  # type: ignore[arg-type]
            peer,  # type: ignore[arg-type]
            ops.ReplicaAccount("127.0.0.1", 3306, "repl", "pw"),
            Health(),
            VipGate(FakeVip()),
            kill_server=lambda: True,
        )

    d = Duo(clock, s1, s2, agent("db1", s1, s2), agent("db2", s2, s1))
    d.a.startService()
    d.a.group_state(State.BACKUP)
    d.until(lambda: d.a.bootstrap_ok)
    d.a.group_state(State.MASTER)  # bootstrap: DEGRADED until a replica joins
    d.until(lambda: d.a.role == Role.DEGRADED)
    d.b.startService()
    d.b.set_peer_present(True, master=True)
    d.b.group_state(State.BACKUP)
    d.until(lambda: d.b.role == Role.REPLICA)
    d.a.set_peer_present(True)
    d.until(lambda: d.a.role == Role.PRIMARY and s1.status_.semisync_master_enabled)
    assert not s1.status_.read_only and s2.status_.read_only
    assert d.both_writable == 0
    return d


def test_a_pair_recovers_from_a_candidate_that_gives_up_after_its_fence() -> None:
    """
    db2 misses db1's adverts, is elected, fences db1 and gives up when the
    adverts resume (db1 heard db2 as MASTER meanwhile): db1 lifts the fence
    once db2 is heard as not MASTER, db2 rejoins it, and the two servers are
    never writable together.
    """
    d = duo()
    d.s2.delays["stop_receiving"] = 0.3  # a loaded machine: the promotion is slow
    d.b.set_peer_present(False)
    d.a.set_peer_present(True, master=True)
    d.b.group_state(State.MASTER)
    d.until(lambda: d.s1.status_.read_only, limit=1.0)
    d.run(0.1)
    # db1's adverts are heard again: db2 steps down and gives up.
    d.b.set_peer_present(True, master=True)
    d.b.group_state(State.BACKUP)
    d.a.set_peer_present(False, heard=True)  # db2 FENCED advertises FAULT
    took = d.until(lambda: not d.s1.status_.read_only, limit=2.0)
    assert took <= 3 * CONFIG.check_interval
    assert d.a.role == Role.PRIMARY and d.s1.status_.semisync_master_enabled
    d.until(lambda: d.b.role == Role.REPLICA, limit=CONFIG.promote_timeout)
    d.run(0.5)  # the given-up promotion's coroutine ends when its receiver stop does
    assert d.b.counters["promotion_given_up_after_fence"] == 1
    assert d.a.counters["fence_lifted"] == 1
    assert d.b.counters["promoted"] == 0
    assert d.both_writable == 0


def test_a_pair_stays_single_writer_when_the_candidate_promotes_after_all() -> None:
    """
    db1 never heard db2 as MASTER (its adverts were lost) and lifts the fence
    while db2's promotion goes on: db2's last check finds db1 writable and
    fences it again before it becomes writable itself; db1's next lift finds
    db2 writable and leaves the fence. Never two writable servers.
    """
    d = duo()
    d.s2.delays["promote_and_record"] = 0.3
    d.b.set_peer_present(False)
    d.a.set_peer_present(True, master=False)
    d.b.group_state(State.MASTER)
    d.until(lambda: d.s1.status_.read_only, limit=1.0)
    d.until(lambda: d.a.counters["fence_lifted"] == 1, limit=1.0)
    assert not d.s1.status_.read_only
    d.until(lambda: d.b.role.writable, limit=2.0)
    assert d.s1.status_.read_only and not d.s2.status_.read_only
    steps = [step for step, _ in d.b.status()["timeline"]]
    assert "old primary fenced again" in steps
    d.run(1.0)
    assert d.s1.status_.read_only
    assert d.a.counters["fence_lift_refused"] >= 1
    assert d.both_writable == 0


def test_a_switchover_resumed_while_the_peer_holds_the_fence_lock_waits_for_the_lift() -> None:
    """
    The switchover no peer took up is undone only under the fence lock: a
    peer promoting after all holds it at its last check, and the primary
    stays read-only; once the lock is free and the peer is heard as not
    MASTER, the ordinary lift makes it writable.
    """
    w = primary_world()
    w.agent.set_peer_present(True)
    d = Deferred.fromCoroutine(w.agent.switchover())
    w.run(0.1)
    assert d.called and w.local.status_.read_only
    w.agent.group_state(State.HANDOVER)
    w.run(0.1)
    w.local.lock_holder = "db1's promotion"
    w.agent.group_state(State.MASTER)
    w.run(0.5)
    assert w.local.status_.read_only
    assert w.agent.counters["switchover_not_resumed"] == 1
    w.local.lock_holder = None
    w.until(w.agent_writable, limit=2 * CONFIG.rejoin_interval + 0.5)
    assert w.agent.counters["fence_lifted"] == 1 and w.role == Role.PRIMARY

"""
A two-host database cluster in one test process, on loopback: two real
MariaDB servers (L{tests.integration.dbagent.pair}), two real database
agents, two real heartbeat groups (and optionally a witness) talking over
an in-memory bus on the running reactor, and TCP forwarders standing in for
the network: one "link" per host (cut it and the host is off the network)
and one "VIP" that forwards to whichever host holds the database VIP
(moving it resets every connection, as a moved address does).

Used by the failover tests and by scripts/bench-db-failover. It listens on
127.0.0.1 only and never touches the machine's own MariaDB.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from twisted.internet import protocol
from twisted.internet.task import LoopingCall
from twisted.python.threadpool import ThreadPool

from clickpass.dbagent import mariadb as ops
from clickpass.dbagent.agent import AgentConfig, DbAgent, VipGate, peer_vip_off
from clickpass.dbagent.machine import Role
from clickpass.heartbeat.group import DOWN_ADVERTS, Group, WitnessGroup
from clickpass.heartbeat.settings import ClusterGroupSettings, HealthCheckSettings
from clickpass.heartbeat.wire import Health, Kind, Message, State
from tests.integration.dbagent.pair import Pair
from tests.support.waiting import eventually_on

# ---------------------------------------------------------------------------
# TCP forwarders.
# ---------------------------------------------------------------------------


class _Outbound(protocol.Protocol):
    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def connectionMade(self) -> None:
        self.inbound.outbound = self
        if self.inbound.forwarder.blackhole:
            transport: Any = self.transport
            transport.pauseProducing()
        for chunk in self.inbound.pending:
            self.transport.write(chunk)  # type: ignore[union-attr]
        self.inbound.pending = []
        if not self.inbound.forwarder.blackhole:
            self.inbound.transport.resumeProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.inbound.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.inbound.transport.loseConnection()  # type: ignore[union-attr]


class _Inbound(protocol.Protocol):
    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.outbound: _Outbound | None = None
        self.pending: list[bytes] = []
        self.connecting = False

    def connectionMade(self) -> None:
        self.forwarder.connections.add(self)
        self.transport.pauseProducing()  # type: ignore[union-attr]
        if self.forwarder.target is None:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if not self.forwarder.blackhole:
            self.connect()

    def connect(self) -> None:
        if self.connecting or self.forwarder.target is None:
            return
        self.connecting = True
        creator = protocol.ClientCreator(self.forwarder.reactor, _Outbound, self)
        d = creator.connectTCP("127.0.0.1", self.forwarder.target, timeout=2)
        d.addErrback(lambda f: self.transport.abortConnection())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.outbound is None:
            self.pending.append(data)
        else:
            self.outbound.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.forwarder.connections.discard(self)
        if self.outbound is not None:
            self.outbound.transport.loseConnection()  # type: ignore[union-attr]


class Forwarder(protocol.Factory):
    """Forwards 127.0.0.1:port to a target port; can move, or black-hole every packet."""

    def __init__(self, reactor: Any, target: int | None) -> None:
        self.reactor = reactor
        self.target = target
        self.blackhole = False
        self.connections: set[_Inbound] = set()
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.port: int = self.listening.getHost().port

    def buildProtocol(self, addr: Any) -> _Inbound:
        return _Inbound(self)

    def point_to(self, target: int | None) -> None:
        """Send new connections to C{target} (None: refuse them); reset the old ones."""
        self.target = target
        for conn in list(self.connections):
            conn.transport.abortConnection()  # type: ignore[union-attr]
            if conn.outbound is not None:
                conn.outbound.transport.abortConnection()  # type: ignore[union-attr]

    def cut(self) -> None:
        """Every packet dropped: connections stall, new ones never complete."""
        self.blackhole = True
        for conn in self.connections:
            conn.transport.pauseProducing()  # type: ignore[union-attr]
            if conn.outbound is not None:
                conn.outbound.transport.pauseProducing()  # type: ignore[union-attr]

    def heal(self) -> None:
        self.blackhole = False
        for conn in list(self.connections):
            conn.transport.resumeProducing()  # type: ignore[union-attr]
            if conn.outbound is not None:
                conn.outbound.transport.resumeProducing()  # type: ignore[union-attr]
            else:
                conn.connect()

    def close(self) -> None:
        self.point_to(None)
        self.listening.stopListening()


# ---------------------------------------------------------------------------
# The heartbeat bus.
# ---------------------------------------------------------------------------


class Bus:
    """Heartbeat messages between named nodes, delivered on the reactor; links can be cut."""

    def __init__(self, reactor: Any, interval: float) -> None:
        self.reactor = reactor
        self.interval = interval
        self.nodes: dict[str, Any] = {}
        self.cut: set[frozenset[str]] = set()

    def deliver(self, sender: str, message: Message, to: str | None) -> None:
        for name in list(self.nodes):
            if name == sender or (to is not None and name != to):
                continue
            if frozenset((sender, name)) in self.cut:
                continue
            self.reactor.callLater(0, self._arrive, name, message, sender)

    def _arrive(self, name: str, message: Message, sender: str) -> None:
        if frozenset((sender, name)) not in self.cut and name in self.nodes:
            self.nodes[name].receive(message, sender)

    def isolate(self, name: str) -> None:
        for other in self.nodes:
            if other != name:
                self.cut.add(frozenset((name, other)))

    def heal(self) -> None:
        self.cut.clear()


class BusOutbox:
    def __init__(self, bus: Bus, node: str) -> None:
        self.bus = bus
        self.node = node
        self.seq = 0

    def _message(
        self, kind: Kind, group: str, state: State, priority: int, health: Health
    ) -> Message:
        self.seq += 1
        return Message(
            kind,
            group,
            self.node,
            state,
            priority,
            int(self.bus.interval * 1000),
            1,
            self.seq,
            health,
        )

    def advert(
        self,
        group: str,
        state: State,
        priority: int,
        health: Health,
        failing: int,
        hears: tuple[str, ...] | None = None,
    ) -> bool:
        self.bus.deliver(
            self.node, self._message(Kind.ADVERT, group, state, priority, health), None
        )
        return True

    def vote_request(self, group: str) -> None:
        message = self._message(Kind.VOTE_REQUEST, group, State.CANDIDATE, 0, Health.OK)
        self.bus.deliver(self.node, message, "witness")

    def vote_answer(self, group: str, address: Any, granted: bool) -> None:
        kind = Kind.VOTE_GRANT if granted else Kind.VOTE_DENY
        self.bus.deliver(
            self.node, self._message(kind, group, State.WITNESS, 0, Health.OK), address
        )


@dataclass
class VipTarget:
    """The db VIP as seen by the group: taking it points the VIP forwarder here."""

    cluster: Cluster
    name: str

    def take(self, up: Callable[[], None]) -> None:
        self.cluster.vip_holder = self.name
        self.cluster.vip.point_to(self.cluster.access[self.name].port)
        self.cluster.events.append((time.monotonic(), self.name, "vip"))
        up()

    def release(self) -> None:
        if self.cluster.vip_holder == self.name:
            self.cluster.vip_holder = None
            self.cluster.vip.point_to(None)

    def renew(self) -> None:
        pass

    def announce(self) -> None:
        pass

    def refresh(self) -> None:
        pass


@dataclass
class Cluster:
    """db1 (priority 200) and db2 (100), agents, groups, links, VIP, optional witness."""

    reactor: Any
    base: Path
    semisync: bool = True
    witness: bool = False
    interval: float = 0.1
    # The agents' local check (3 misses: down). The tests use 1.0, as the
    # lab does: under load on a shared machine a 0.5 s check of a healthy
    # server sometimes times out, and an elected replica that takes itself
    # for down never promotes. The benchmark keeps 0.5 s.
    check_timeout: float = 0.5
    check_fall: int = 3
    pair: Pair = field(init=False)
    links: dict[str, Forwarder] = field(default_factory=dict)
    # The clients' way to each host (the VIP forwards through it): cut
    # together with the link for a link-down, left up for a partition.
    access: dict[str, Forwarder] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    agents: dict[str, DbAgent] = field(default_factory=dict)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    vip_holder: str | None = None

    def start_servers(self) -> None:
        """Blocking: start both MariaDB servers (before the reactor is needed)."""
        self.pair = Pair(self.base, semisync=self.semisync)
        self.pair.start()

    def start(self) -> None:
        """Links, VIP, bus, groups and agents (on the reactor thread)."""
        reactor = self.reactor
        self.pool = ThreadPool(4, 16, "dbagent-test")
        self.pool.start()
        self.vip = Forwarder(reactor, None)
        self.bus = Bus(reactor, self.interval)
        for name in ("db1", "db2"):
            self.links[name] = Forwarder(reactor, self.pair[name].port)
            self.access[name] = Forwarder(reactor, self.pair[name].port)
        for name, priority in (("db1", 200), ("db2", 100)):
            peer = "db2" if name == "db1" else "db1"
            settings = ClusterGroupSettings(
                name="db",
                vip="10.77.0.200/24",
                interface="lo",
                priority=priority,
                peers=["127.0.0.1"],
                advert_interval=self.interval,
                preempt=False,
                lease=2,
                check=[HealthCheckSettings("database", 0)],
            )
            gate = VipGate(VipTarget(self, name))
            local = ops.Server(reactor, self.pool, self.pair.admin(name), 0.5, 5.0)
            remote = ops.Server(
                reactor, self.pool, self.pair.tcp_admin(peer, self.links[peer].port), 0.5, 5.0
            )
            group_ref: list[Group] = []
            agent = DbAgent(
                reactor,
                AgentConfig(
                    node=name,
                    check_interval=0.05,
                    check_timeout=self.check_timeout,
                    check_fall=self.check_fall,
                    fence_timeout=0.6,
                    fence_wait=DOWN_ADVERTS * self.interval + self.interval + 0.6 + 0.3,
                    rejoin_interval=0.25,
                    flap_period=3600,
                    semisync=self.semisync,
                ),
                local,
                remote,
                self.pair.account(peer, self.links[peer].port),
                _Health(group_ref),
                gate,
                switchover=_switchover_of(group_ref),
                kill_server=_killer(self, name),
            )
            group = Group(
                settings,
                name,
                reactor,
                BusOutbox(self.bus, name),
                gate,
                agent,
                witness_required=self.witness,
            )
            # As the node wires it (clickpass.dbagent.service): the clients
            # of a server whose VIP goes are ended first, so they learn of
            # it at once rather than wait out their read timeout.
            gate.drain = agent.drain_clients
            group_ref.append(group)
            self.groups[name] = group
            self.agents[name] = agent
            self.bus.nodes[name] = group
        if self.witness:
            w = WitnessGroup(
                ClusterGroupSettings(name="db", peers=["127.0.0.1"], advert_interval=self.interval),
                reactor,
                BusOutbox(self.bus, "witness"),
            )
            self.bus.nodes["witness"] = w
            w.start()
        self._presence = LoopingCall(self._update_presence)
        self._presence.clock = reactor
        self._presence.start(self.interval / 2)

    def activate(self, name: str) -> None:
        """Start one host's heartbeat group and agent."""
        self.groups[name].set_health("database", False)
        self.groups[name].start()
        self.agents[name].startService()

    def _kill(self, name: str) -> bool:
        server = self.pair[name]
        if server.process is None or server.process.poll() is not None:
            return False
        self.events.append((time.monotonic(), name, "killed by its agent"))
        server.process.kill()
        return True

    def _update_presence(self) -> None:
        now = self.reactor.seconds()
        for name, agent in self.agents.items():
            peer = "db2" if name == "db1" else "db1"
            view = self.groups[name].peers.get(peer)
            agent.set_peer_present(
                view is not None
                and now - view.heard_at <= DOWN_ADVERTS * view.interval
                and view.state in (State.BACKUP, State.MASTER)
                and view.health != Health.FAULT,
                master=view is not None and view.state == State.MASTER,
                vip_off=peer_vip_off(view, now, float(self.groups[name].settings.lease)),
                server_down=view is not None and view.health == Health.FAULT,
                heard=view is not None and now - view.heard_at <= DOWN_ADVERTS * view.interval,
            )

    def link_down(self, name: str) -> None:
        """The host's link is down: peer, witness and clients hear nothing from it."""
        for link in self.links.values():  # the only paths between the two hosts
            link.cut()
        self.access[name].cut()
        self.bus.isolate(name)
        self.events.append((time.monotonic(), name, "link down"))

    def partition(self, name: str) -> None:
        """Cut from its peer and the witness, still reachable by the clients."""
        for link in self.links.values():
            link.cut()
        self.bus.isolate(name)
        self.events.append((time.monotonic(), name, "partitioned"))

    def heal(self) -> None:
        for forwarder in [*self.links.values(), *self.access.values()]:
            forwarder.heal()
        self.bus.heal()
        self.events.append((time.monotonic(), "-", "healed"))

    def roles(self) -> dict[str, Role]:
        return {name: agent.role for name, agent in self.agents.items()}

    def stop(self) -> None:
        if getattr(self, "_presence", None) is not None and self._presence.running:
            self._presence.stop()
        for name in self.agents:
            if self.agents[name].running:
                self.agents[name].stopService()
                self.groups[name].stop()
        for node in self.bus.nodes.values() if hasattr(self, "bus") else ():
            if isinstance(node, WitnessGroup):
                node.stop()
        for link in [*self.links.values(), *self.access.values()]:
            link.close()
        if hasattr(self, "vip"):
            self.vip.close()
        if hasattr(self, "pool"):
            self.pool.stop()

    def stop_servers(self) -> None:
        self.pair.stop()


def _switchover_of(group: list[Group]) -> Callable[[], str]:
    return lambda: group[0].switchover()


def _killer(cluster: Cluster, name: str) -> Callable[[], bool]:
    return lambda: cluster._kill(name)


@dataclass
class _Health:
    group: list[Group]

    def set_health(self, name: str, ok: bool) -> None:
        if self.group:
            self.group[0].set_health(name, ok)


# ---------------------------------------------------------------------------
# The Jepsen-style writer and the checks.
# ---------------------------------------------------------------------------


@dataclass
class Writer:
    """
    Inserts unique rows through the VIP from a thread, one at a time; each
    attempt ends ok (acknowledged), fail (refused for sure) or info (outcome
    unknown: the connection broke or timed out after the statement was sent).
    """

    port: int
    user: str
    password: str
    database: str = "app"
    timeout: float = 3.0
    ok: dict[int, float] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    unknown: set[int] = field(default_factory=set)
    attempted: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    connect_errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    next_id: int = 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def _connect(self) -> Any:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            autocommit=True,
            connect_timeout=0.5,
            read_timeout=self.timeout,
            write_timeout=self.timeout,
        )

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn = self._connect()
                except Exception as e:
                    conn = None
                    self.connect_errors.append(repr(e))
                    time.sleep(0.01)
                    continue
            row = self.next_id
            self.next_id += 1
            self.attempted.add(row)
            try:
                with conn.cursor() as c:
                    c.execute("INSERT INTO rows_ (id) VALUES (%s)", (row,))
                self.ok[row] = time.monotonic()
            except pymysql.err.OperationalError as e:
                code = e.args[0] if e.args else 0
                if code in (2006, 2013, 2014, 2055, 1927, 1053):
                    self.unknown.add(row)
                else:
                    self.failed.add(row)
                with_suppress_close(conn)
                conn = None
            except Exception as e:
                # Refused for sure (duplicate key, read-only...) or anything
                # else: the statement's outcome is known only for MySQL errors.
                if isinstance(e, pymysql.err.MySQLError):
                    self.failed.add(row)
                else:
                    self.unknown.add(row)
                self.errors.append(repr(e))
                with_suppress_close(conn)
                conn = None
            time.sleep(0.002)
        if conn is not None:
            with_suppress_close(conn)

    def first_ok_after(self, when: float) -> float | None:
        later = [t for t in self.ok.values() if t > when]
        return min(later) if later else None


def with_suppress_close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


class WritableWatch:
    """Samples both servers' read_only over their sockets; records any moment both are writable."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.both: list[float] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _writable(self, name: str) -> bool:
        try:
            conn = self.pair[name].admin_connection(connect_timeout=0.2, read_timeout=0.2)
        except Exception:
            return False
        try:
            with conn.cursor() as c:
                c.execute("SELECT @@read_only")
                return not int(c.fetchone()[0])
        except Exception:
            return False
        finally:
            with_suppress_close(conn)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._writable("db1") and self._writable("db2"):
                self.both.append(time.monotonic())
            self.samples += 1
            time.sleep(0.01)


def rows_on(pair: Pair, name: str) -> set[int]:
    conn = pair[name].admin_connection(database="app", read_timeout=10)
    try:
        with conn.cursor() as c:
            c.execute("SELECT id FROM rows_")
            return {int(r[0]) for r in c.fetchall()}
    finally:
        with_suppress_close(conn)


def check_history(writer: Writer, present: set[int]) -> dict[str, Any]:
    """The Jepsen set check: lost must be empty, unexpected must be empty."""
    acked = set(writer.ok)
    return {
        "acknowledged": len(acked),
        "lost": sorted(acked - present),
        "unexpected": sorted(present - writer.attempted),
        "recovered": len(present & writer.unknown),
        "unknown": len(writer.unknown),
        "failed": len(writer.failed),
    }


def wait_until(reactor: Any, predicate: Callable[[], bool], timeout: float) -> Any:
    """A Deferred that fires True when C{predicate} holds, False after C{timeout}."""
    return eventually_on(reactor, predicate, timeout)

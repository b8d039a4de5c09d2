"""
/metrics for the heartbeat and the database agent, read from their status
when the page is collected: group states and transitions, peers last
heard, heartbeat packets; the database role, replication lag and semi-sync.

The database agent and an inline heartbeat live on the node's reactor, so
their status is read at collection time. A heartbeat in its own process
(C{[cluster] process = "child"}, the default) answers only asynchronously,
over its pipe, and the page is collected synchronously: L{HeartbeatStatus}
asks it every L{HEARTBEAT_STATUS_INTERVAL} seconds and keeps the last
answer, and ages are corrected for the time since that answer. When the
heartbeat has not answered for L{HEARTBEAT_STALE_AFTER} seconds,
C{clickpass_cluster_heartbeat_up} is 0 and no group state is shown (a
stale state would be a lie).

This module must never block, never change what it reads, and never let a
status it cannot read break /metrics: a missing or odd field is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from clickpass.monitor.metrics import LabelValues, Registry

HEARTBEAT_STATUS_INTERVAL = 1.0
HEARTBEAT_STALE_AFTER = 5.0

# Every state a group can be in (clickpass.heartbeat.wire.State), so a state
# gauge shows 0 for the others and a query never finds a gap.
CLUSTER_STATES = ("INIT", "BACKUP", "CANDIDATE", "MASTER", "HANDOVER", "FAULT", "WITNESS")
# Packet counters of the heartbeat that are not drops.
_PACKETS_NOT_DROPPED = frozenset({"received", "accepted", "sent", "send_failed"})
# Server readings are stale while the agent cannot reach its server.
_SERVER_UNKNOWN_ROLES = frozenset({"starting", "down"})

Samples = dict[LabelValues, float]


class HeartbeatView(Protocol):
    """What /metrics reads of the node's ClusterService (clickpass.heartbeat.service)."""

    # The inline heartbeat's engine (with status()); None when it runs in
    # its own process.
    engine: Any
    # How many times the heartbeat process was restarted.
    restarts: int

    async def call(self, op: str, **args: Any) -> Any:
        """Ask the heartbeat process (C{op} "status": its groups' status)."""
        ...


class HeartbeatStatus(Service):
    """
    The heartbeat's last status, for /metrics: read at once from an inline
    engine, or asked of the heartbeat process every C{interval} seconds.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        cluster: HeartbeatView,
        interval: float = HEARTBEAT_STATUS_INTERVAL,
        stale_after: float = HEARTBEAT_STALE_AFTER,
    ) -> None:
        self.setName("heartbeat-status")
        self.clock = clock
        self.cluster = cluster
        self.interval = interval
        self.stale_after = stale_after
        self.last: dict[str, Any] | None = None
        self.fetched_at = 0.0
        self._asking: Deferred[Any] | None = None
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("heartbeat status for /metrics stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _engine(self) -> Any:
        return self.cluster.engine

    def refresh(self) -> None:
        """Ask the heartbeat process for its status (no-op when inline or still asking)."""
        if self._engine() is not None or self._asking is not None:
            return
        self._asking = d = Deferred.fromCoroutine(self.cluster.call("status"))

        def answered(status: object) -> None:
            if isinstance(status, dict):
                self.last = status
                self.fetched_at = self.clock.seconds()

        def failed(f: Any) -> None:
            # Restarting or busy: heartbeat_up goes to 0 once the answer is stale.
            self.log.debug("heartbeat status for /metrics: {error}", error=str(f.value))

        def done(_: object) -> None:
            self._asking = None

        d.addCallbacks(answered, failed).addBoth(done)

    def current(self) -> tuple[dict[str, Any] | None, float]:
        """(status, its age in seconds), or (None, 0) when there is no fresh one."""
        engine = self._engine()
        if engine is not None:
            status: dict[str, Any] = engine.status()
            return status, 0.0
        age = self.clock.seconds() - self.fetched_at
        if self.last is None or age > self.stale_after:
            return None, 0.0
        return self.last, max(0.0, age)

    def restarts(self) -> int:
        return self.cluster.restarts


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _groups(status: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    groups = status.get("groups") if status is not None else None
    if not isinstance(groups, list):
        return []
    return [g for g in groups if isinstance(g, Mapping) and isinstance(g.get("group"), str)]


class _HeartbeatReadings:
    """The clickpass_cluster_* samples, read from a L{HeartbeatStatus} when collected."""

    def __init__(self, source: HeartbeatStatus) -> None:
        self._source = source

    def up(self) -> Samples:
        status, _ = self._source.current()
        return {(): 1.0 if status is not None else 0.0}

    def restarts(self) -> Samples:
        return {(): float(self._source.restarts())}

    def states(self) -> Samples:
        out: Samples = {}
        for group in _groups(self._source.current()[0]):
            for state in CLUSTER_STATES:
                out[(group["group"], state)] = 1.0 if group.get("state") == state else 0.0
        return out

    def per_group(self, field: str, adds_age: bool = False) -> Callable[[], Samples]:
        def read() -> Samples:
            status, age = self._source.current()
            out: Samples = {}
            for group in _groups(status):
                value = _number(group.get(field))
                if value is not None:
                    out[(group["group"],)] = value + (age if adds_age else 0.0)
            return out

        return read

    def transitions(self) -> Samples:
        out: Samples = {}
        for group in _groups(self._source.current()[0]):
            for t in group.get("transitions") or []:
                count = _number(t.get("count")) if isinstance(t, Mapping) else None
                if count is not None:
                    out[(group["group"], str(t.get("from")), str(t.get("to")))] = count
        return out

    def peers(self) -> Samples:
        status, age = self._source.current()
        out: Samples = {}
        for group in _groups(status):
            for peer in group.get("peers") or []:
                if not isinstance(peer, Mapping):
                    continue
                heard = _number(peer.get("last_heard_seconds"))
                if heard is not None:
                    out[(group["group"], str(peer.get("node")))] = heard + age
        return out

    def group_events(self) -> Samples:
        out: Samples = {}
        for group in _groups(self._source.current()[0]):
            counters = group.get("counters")
            if not isinstance(counters, Mapping):
                continue
            for event, count in counters.items():
                value = _number(count)
                # entered_<state> is what the transitions counter says, better.
                if value is not None and not str(event).startswith("entered_"):
                    out[(group["group"], str(event))] = value
        return out

    def packets(self, select: Callable[[str], bool]) -> Callable[[], Samples]:
        def read() -> Samples:
            status = self._source.current()[0]
            counters = status.get("packets") if status is not None else None
            if not isinstance(counters, Mapping):
                return {}
            out: Samples = {}
            for name, count in counters.items():
                value = _number(count)
                if value is not None and select(str(name)):
                    out[(str(name),)] = value
            return out

        return read

    def one_packet_counter(self, name: str) -> Callable[[], Samples]:
        read = self.packets(lambda n: n == name)

        def one() -> Samples:
            found = read().get((name,))
            return {} if found is None else {(): found}

        return one


def install_heartbeat_metrics(registry: Registry, source: HeartbeatStatus) -> None:
    """Declare the clickpass_cluster_* metrics, read from C{source} at collection."""
    read = _HeartbeatReadings(source)
    _declare_heartbeat_groups(registry, read)
    _declare_heartbeat_packets(registry, read)


def _declare_heartbeat_groups(registry: Registry, read: _HeartbeatReadings) -> None:
    """The heartbeat's liveness and each group's state, priority, peers and events."""
    gauge = registry.gauge
    counter = registry.counter
    gauge(
        "clickpass_cluster_heartbeat_up",
        "1 when the heartbeat answered recently (its status below is current), else 0.",
        aggregate="max",
    ).set_function(read.up)
    counter(
        "clickpass_cluster_heartbeat_restarts_total",
        "Times the node restarted its heartbeat process.",
    ).set_function(read.restarts)
    gauge(
        "clickpass_cluster_state",
        "1 for the state each heartbeat group is in on this node, 0 for the others.",
        ("group", "state"),
        aggregate="max",
    ).set_function(read.states)
    gauge(
        "clickpass_cluster_state_seconds",
        "Seconds each group has been in its current state.",
        ("group",),
        aggregate="max",
    ).set_function(read.per_group("in_state_seconds", adds_age=True))
    gauge(
        "clickpass_cluster_priority",
        "The priority each group advertises (lowered by failing health checks).",
        ("group",),
        aggregate="max",
    ).set_function(read.per_group("priority"))
    counter(
        "clickpass_cluster_transitions_total",
        "State changes of each group since its heartbeat started, by from and to state.",
        ("group", "from", "to"),
    ).set_function(read.transitions)
    gauge(
        "clickpass_cluster_peer_last_heard_seconds",
        "Seconds since each peer's last advert was accepted, per group.",
        ("group", "peer"),
        aggregate="max",
    ).set_function(read.peers)
    gauge(
        "clickpass_cluster_witness_last_heard_seconds",
        "Seconds since the witness was last heard, per group (absent: never heard).",
        ("group",),
        aggregate="max",
    ).set_function(read.per_group("witness_last_heard_seconds", adds_age=True))
    counter(
        "clickpass_cluster_group_events_total",
        "Events of each group: failovers, takeovers, adverts, votes, VIP and hook actions.",
        ("group", "event"),
    ).set_function(read.group_events)


def _declare_heartbeat_packets(registry: Registry, read: _HeartbeatReadings) -> None:
    """The heartbeat's packet counters: received, sent, refused, dropped by reason."""
    counter = registry.counter
    counter(
        "clickpass_cluster_packets_received_total",
        "Heartbeat packets received.",
    ).set_function(read.one_packet_counter("received"))
    counter(
        "clickpass_cluster_packets_sent_total",
        "Heartbeat packets sent.",
    ).set_function(read.one_packet_counter("sent"))
    counter(
        "clickpass_cluster_packet_send_failures_total",
        "Heartbeat packets the kernel refused to send (peer unreachable, link down).",
    ).set_function(read.one_packet_counter("send_failed"))
    counter(
        "clickpass_cluster_packets_dropped_total",
        "Heartbeat packets received and dropped, by reason (bad signature, replayed...).",
        ("reason",),
    ).set_function(read.packets(lambda name: name not in _PACKETS_NOT_DROPPED))


class _DbAgentReadings:
    """The clickpass_db_* samples, read from the database agent's status when collected."""

    def __init__(self, agent: Callable[[], Any], roles: tuple[str, ...]) -> None:
        self._agent = agent
        self._roles = roles

    def status(self) -> dict[str, Any] | None:
        current = self._agent()
        if current is None:
            return None
        result: dict[str, Any] = current.status()
        return result

    def flag(self, field: str) -> Callable[[], Samples]:
        def read() -> Samples:
            s = self.status()
            value = _number(s.get(field)) if s is not None else None
            return {} if value is None else {(): value}

        return read

    def role(self) -> Samples:
        s = self.status()
        if s is None:
            return {}
        return {(r,): 1.0 if s.get("role") == r else 0.0 for r in self._roles}

    def blocked(self) -> Samples:
        s = self.status()
        return {} if s is None else {(): 1.0 if s.get("failover_blocked") else 0.0}

    def server(self, section: str, field: str, replica_only: bool = False) -> Callable[[], Samples]:
        def read() -> Samples:
            s = self.status()
            if s is None or s.get("role") in _SERVER_UNKNOWN_ROLES:
                return {}
            reading = s.get("server")
            if not isinstance(reading, Mapping):
                return {}
            values = reading.get(section) if section else reading
            if not isinstance(values, Mapping):
                return {}
            if replica_only:
                replication = reading.get("replication")
                if not isinstance(replication, Mapping) or not replication.get("configured"):
                    return {}
            value = _number(values.get(field))
            return {} if value is None else {(): value}

        return read

    def replication_running(self) -> Samples:
        s = self.status()
        if s is None or s.get("role") in _SERVER_UNKNOWN_ROLES:
            return {}
        reading = s.get("server")
        replication = reading.get("replication") if isinstance(reading, Mapping) else None
        if not isinstance(replication, Mapping) or not replication.get("configured"):
            return {}
        running = replication.get("io_running") == "Yes" and replication.get("sql_running") == "Yes"
        return {(): 1.0 if running else 0.0}

    def events(self) -> Samples:
        s = self.status()
        counters = s.get("counters") if s is not None else None
        if not isinstance(counters, Mapping):
            return {}
        out: Samples = {}
        for name, count in counters.items():
            value = _number(count)
            if value is not None:
                out[(str(name),)] = value
        return out


def install_dbagent_metrics(registry: Registry, agent: Callable[[], Any]) -> None:
    """
    Declare the clickpass_db_* metrics, read from the database agent's
    status at collection; C{agent} returns the L{clickpass.dbagent.agent.DbAgent}
    (or None before the node built it).
    """
    from clickpass.dbagent.machine import Role

    read = _DbAgentReadings(agent, tuple(role.value for role in Role))
    _declare_db_role(registry, read)
    _declare_db_server(registry, read)
    registry.counter(
        "clickpass_db_agent_events_total",
        "Events of the database agent: promotions, degradations, failed checks...",
        ("event",),
    ).set_function(read.events)


def _declare_db_role(registry: Registry, read: _DbAgentReadings) -> None:
    """What the agent says of this host: its role, writability, health, the peer."""
    gauge = registry.gauge
    gauge(
        "clickpass_db_role",
        "1 for the database agent's role here (primary, replica, degraded...), 0 for the others.",
        ("role",),
        aggregate="max",
    ).set_function(read.role)
    gauge(
        "clickpass_db_writable",
        "1 when this host's database is the writable primary (primary or degraded).",
        aggregate="max",
    ).set_function(read.flag("writable"))
    gauge(
        "clickpass_db_semisync_degraded",
        "1 when this host is primary without a semi-sync replica: writes are not replicated.",
        aggregate="max",
    ).set_function(read.flag("degraded"))
    gauge(
        "clickpass_db_quarantined",
        "1 when this host's server is quarantined (errant transactions; an operator decides).",
        aggregate="max",
    ).set_function(read.flag("quarantined"))
    gauge(
        "clickpass_db_healthy",
        "1 when the agent reports this host healthy to the db heartbeat group.",
        aggregate="max",
    ).set_function(read.flag("healthy"))
    gauge(
        "clickpass_db_peer_present",
        "1 when the db group hears the other database host as healthy.",
        aggregate="max",
    ).set_function(read.flag("peer_present"))
    gauge(
        "clickpass_db_failover_blocked",
        "1 when an unacknowledged automatic failover blocks the next one (clickpass-ctl db ack).",
        aggregate="max",
    ).set_function(read.blocked)


def _declare_db_server(registry: Registry, read: _DbAgentReadings) -> None:
    """The local server's last readings: read-only, semi-sync, replication."""
    gauge = registry.gauge
    gauge(
        "clickpass_db_read_only",
        "The local server's read_only (last reading).",
        aggregate="max",
    ).set_function(read.server("", "read_only"))
    gauge(
        "clickpass_db_semisync_master_enabled",
        "rpl_semi_sync_master_enabled on the local server (last reading).",
        aggregate="max",
    ).set_function(read.server("semi_sync", "master_enabled"))
    gauge(
        "clickpass_db_semisync_master_status",
        "Rpl_semi_sync_master_status: 1 while commits wait for a replica's acknowledgement.",
        aggregate="max",
    ).set_function(read.server("semi_sync", "master_active"))
    gauge(
        "clickpass_db_semisync_master_clients",
        "Rpl_semi_sync_master_clients: semi-sync replicas connected to the local server.",
        aggregate="max",
    ).set_function(read.server("semi_sync", "master_clients"))
    gauge(
        "clickpass_db_semisync_slave_status",
        "Rpl_semi_sync_slave_status: 1 while the local replica acknowledges semi-sync.",
        aggregate="max",
    ).set_function(read.server("semi_sync", "slave_active"))
    gauge(
        "clickpass_db_replication_running",
        "1 when the local replica's IO and SQL threads both run (absent: not a replica).",
        aggregate="max",
    ).set_function(read.replication_running)
    gauge(
        "clickpass_db_replication_lag_seconds",
        "Seconds_Behind_Master of the local replica (absent: not a replica or not running).",
        aggregate="max",
    ).set_function(read.server("replication", "seconds_behind", replica_only=True))
    gauge(
        "clickpass_db_replication_lag_transactions",
        "Transactions the local replica received but has not applied yet (by GTID).",
        aggregate="max",
    ).set_function(read.server("replication", "transactions_behind", replica_only=True))


__all__ = [
    "CLUSTER_STATES",
    "HEARTBEAT_STALE_AFTER",
    "HEARTBEAT_STATUS_INTERVAL",
    "HeartbeatStatus",
    "install_dbagent_metrics",
    "install_heartbeat_metrics",
]

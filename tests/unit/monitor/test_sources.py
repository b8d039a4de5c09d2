"""
/metrics of the heartbeat and the database agent (clickpass.monitor.sources),
read from real heartbeat groups on a task.Clock and from the agent's status
shape, inline and through a heartbeat process's asynchronous status call.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from clickpass.control.protocol import CommandError
from clickpass.dbagent.gtid import Position
from clickpass.dbagent.machine import Role
from clickpass.dbagent.mariadb import ServerStatus
from clickpass.monitor.metrics import Registry
from clickpass.monitor.sources import (
    CLUSTER_STATES,
    HeartbeatStatus,
    install_dbagent_metrics,
    install_heartbeat_metrics,
)
from tests.integration.monitor.promtext import Page, parse
from tests.unit.heartbeat.sim import Net


class InlineEngine:
    """What ClusterService.engine offers /metrics: status() of real groups."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.packets = {"received": 7, "accepted": 5, "sent": 9, "bad signature": 2, "replayed": 0}

    def status(self) -> dict[str, Any]:
        groups = [g.status() for g in self.net.nodes.values()]
        return {"groups": groups, "packets": dict(self.packets)}


class InlineCluster:
    def __init__(self, net: Net) -> None:
        self.engine: Any = InlineEngine(net)
        self.restarts = 0

    async def call(self, op: str, **args: Any) -> Any:
        raise AssertionError("an inline heartbeat is read, never asked")


class ChildCluster:
    """A ClusterService whose heartbeat runs in a process: status only by call()."""

    def __init__(self) -> None:
        self.engine = None
        self.restarts = 1
        self.answer: Any = None
        self.calls = 0
        self.pending: Deferred[Any] | None = None

    async def call(self, op: str, **args: Any) -> Any:
        assert op == "status"
        self.calls += 1
        if self.answer is None:
            raise CommandError("the heartbeat process is not running (restarting?)")
        if self.pending is not None:
            return await self.pending
        return self.answer


def page(registry: Registry) -> Page:
    return parse(registry.exposition())


def test_lone_group_state_and_transitions_on_metrics() -> None:
    """A lone node's group: INIT->BACKUP, then BACKUP->MASTER after the down timer, each
    counted once; the state gauge is 1 for MASTER only and 0 for every other state."""
    net = Net(0.1)
    group = net.add("app1", 200)
    cluster = InlineCluster(net)
    registry = Registry()
    install_heartbeat_metrics(registry, HeartbeatStatus(net.clock, cluster))
    group.start()
    before = page(registry)
    assert before.get("clickpass_cluster_state", group="app", state="BACKUP") == 1
    assert before.get("clickpass_cluster_state", group="app", state="MASTER") == 0
    assert (
        before.get(
            "clickpass_cluster_transitions_total", group="app", **{"from": "INIT", "to": "BACKUP"}
        )
        == 1
    )
    assert (
        before.get(
            "clickpass_cluster_transitions_total", group="app", **{"from": "BACKUP", "to": "MASTER"}
        )
        is None
    )
    net.run(1.0)
    after = page(registry)
    assert after.types["clickpass_cluster_transitions_total"] == "counter"
    assert after.types["clickpass_cluster_state"] == "gauge"
    assert {
        dict(labels)["state"]: value
        for labels, value in after.series("clickpass_cluster_state").items()
    } == {state: (1.0 if state == "MASTER" else 0.0) for state in CLUSTER_STATES}
    assert (
        after.get(
            "clickpass_cluster_transitions_total", group="app", **{"from": "BACKUP", "to": "MASTER"}
        )
        == 1
    )
    assert after.get("clickpass_cluster_heartbeat_up") == 1
    assert after.get("clickpass_cluster_priority", group="app") == 200
    assert after.get("clickpass_cluster_group_events_total", group="app", event="takeovers") == 1
    # Packets: received and sent as counters, drops by reason; accepted is not a drop.
    assert after.get("clickpass_cluster_packets_received_total") == 7
    assert after.get("clickpass_cluster_packets_sent_total") == 9
    assert after.series("clickpass_cluster_packets_dropped_total") == {
        (("reason", "bad signature"),): 2,
        (("reason", "replayed"),): 0,
    }


def test_peers_last_heard_and_a_failover_transition() -> None:
    """Two nodes: the backup's page shows the master heard recently; once the master is
    gone the age grows with the clock and the backup's BACKUP->MASTER transition shows."""
    net = Net(0.1)
    net.add("app1", 200)
    backup = net.add("app2", 100)
    net.nodes["app1"].start()
    backup.start()
    net.run(2.0)
    only_app2 = Net(0.1)
    only_app2.nodes["app2"] = backup
    cluster = InlineCluster(only_app2)
    registry = Registry()
    install_heartbeat_metrics(registry, HeartbeatStatus(net.clock, cluster))
    heard = page(registry).get(
        "clickpass_cluster_peer_last_heard_seconds", group="app", peer="app1"
    )
    assert heard is not None and heard <= 0.1
    net.dead.add("app1")
    net.run(2.0)
    now = page(registry)
    heard = now.get("clickpass_cluster_peer_last_heard_seconds", group="app", peer="app1")
    assert heard is not None and 1.9 <= heard <= 2.1
    assert now.get("clickpass_cluster_state", group="app", state="MASTER") == 1
    assert (
        now.get(
            "clickpass_cluster_transitions_total", group="app", **{"from": "BACKUP", "to": "MASTER"}
        )
        == 1
    )
    assert now.get("clickpass_cluster_group_events_total", group="app", event="failovers") == 1


def test_heartbeat_process_status_is_asked_and_aged() -> None:
    """With the heartbeat in its own process, the status is asked every interval; ages
    include the time since the answer; no answer for stale_after: up 0 and no states."""
    clock = Clock()
    cluster = ChildCluster()
    source = HeartbeatStatus(clock, cluster, interval=1.0, stale_after=5.0)
    registry = Registry()
    install_heartbeat_metrics(registry, source)
    source.startService()
    try:
        assert page(registry).get("clickpass_cluster_heartbeat_up") == 0
        clock.advance(1.0)  # asked; the process is not running yet
        assert cluster.calls == 1
        assert page(registry).get("clickpass_cluster_heartbeat_up") == 0
        assert page(registry).get("clickpass_cluster_heartbeat_restarts_total") == 1
        cluster.answer = {
            "groups": [
                {
                    "group": "app",
                    "state": "BACKUP",
                    "priority": 100,
                    "in_state_seconds": 3.0,
                    "peers": [{"node": "app1", "last_heard_seconds": 0.25}],
                    "transitions": [{"from": "INIT", "to": "BACKUP", "count": 1}],
                    "counters": {"entered_backup": 1, "adverts_sent": 40},
                }
            ],
            "packets": {"received": 3, "sent": 40},
        }
        clock.advance(1.0)
        first = page(registry)
        assert first.get("clickpass_cluster_heartbeat_up") == 1
        assert first.get("clickpass_cluster_state", group="app", state="BACKUP") == 1
        assert (
            first.get("clickpass_cluster_peer_last_heard_seconds", group="app", peer="app1") == 0.25
        )
        # entered_* counters are what the transitions say; not repeated as events.
        assert first.series("clickpass_cluster_group_events_total") == {
            (("event", "adverts_sent"), ("group", "app")): 40
        }
        # A slow answer: the last one is kept and aged; only one question at a time.
        cluster.pending = Deferred()
        clock.advance(0.5)
        aged = page(registry)
        assert (
            aged.get("clickpass_cluster_peer_last_heard_seconds", group="app", peer="app1") == 0.75
        )
        assert aged.get("clickpass_cluster_state_seconds", group="app") == 3.5
        calls = cluster.calls
        clock.advance(1.0)
        clock.advance(1.0)
        assert cluster.calls == calls + 1
        clock.advance(3.0)  # 5.5 s since the last answer
        stale = page(registry)
        assert stale.get("clickpass_cluster_heartbeat_up") == 0
        assert stale.series("clickpass_cluster_state") == {}
        assert stale.series("clickpass_cluster_transitions_total") == {}
        pending, cluster.pending = cluster.pending, None
        pending.callback(cluster.answer)
        assert page(registry).get("clickpass_cluster_heartbeat_up") == 1
    finally:
        source.stopService()


def test_unreadable_heartbeat_status_is_skipped() -> None:
    """Odd fields in a status (wrong types, missing names) leave /metrics readable."""
    clock = Clock()
    cluster = ChildCluster()
    cluster.answer = {
        "groups": [
            "nonsense",
            {"state": "MASTER"},
            {"group": "app", "state": "MASTER", "priority": "high", "peers": ["x", {"node": "p"}]},
        ],
        "packets": ["received"],
    }
    source = HeartbeatStatus(clock, cluster)
    registry = Registry()
    install_heartbeat_metrics(registry, source)
    source.refresh()
    result = page(registry)
    assert result.get("clickpass_cluster_state", group="app", state="MASTER") == 1
    assert result.series("clickpass_cluster_priority") == {}
    assert result.series("clickpass_cluster_peer_last_heard_seconds") == {}
    assert result.series("clickpass_cluster_packets_dropped_total") == {}


class FakeAgent:
    """The agent's status() shape (clickpass.dbagent.agent.DbAgent.status)."""

    def __init__(self, role: str, server: ServerStatus | None, **extra: Any) -> None:
        self.role = role
        self.server = server
        self.extra = extra

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "node": "db2",
            "role": self.role,
            "writable": self.role in ("primary", "degraded"),
            "degraded": self.role == "degraded",
            "quarantined": self.role == "quarantined",
            "peer_present": True,
            "healthy": True,
            "failover_blocked": "",
            "counters": {"promoted": 1, "check_failures": 3},
            **self.extra,
        }
        if self.server is not None:
            status["server"] = self.server.as_dict()
        return status


def test_replica_role_lag_and_semisync() -> None:
    """A replica: role gauge, Seconds_Behind_Master, the GTID backlog (received but not
    applied) and semi-sync slave status come from the agent's last server reading."""
    agent: list[Any] = [None]
    registry = Registry()
    install_dbagent_metrics(registry, lambda: agent[0])
    assert page(registry).series("clickpass_db_role") == {}  # no agent yet: nothing
    agent[0] = FakeAgent(
        "replica",
        ServerStatus(
            replica_configured=True,
            io_running="Yes",
            sql_running="Yes",
            seconds_behind=4,
            slave_pos=Position.parse("0-1-100"),
            io_pos=Position.parse("0-1-112"),
            semisync_slave_enabled=True,
            semisync_slave_active=True,
        ),
    )
    result = page(registry)
    assert result.get("clickpass_db_role", role="replica") == 1
    assert result.get("clickpass_db_role", role="primary") == 0
    assert {dict(labels)["role"] for labels in result.series("clickpass_db_role")} == {
        role.value for role in Role
    }
    assert result.get("clickpass_db_replication_lag_seconds") == 4
    assert result.get("clickpass_db_replication_lag_transactions") == 12
    assert result.get("clickpass_db_replication_running") == 1
    assert result.get("clickpass_db_semisync_slave_status") == 1
    assert result.get("clickpass_db_writable") == 0
    assert result.get("clickpass_db_agent_events_total", event="promoted") == 1
    assert result.types["clickpass_db_agent_events_total"] == "counter"


def test_degraded_primary_and_quarantined_and_down() -> None:
    """A degraded primary shows semi-sync off and no replication lag; a quarantined host
    shows 1; a host whose server is down shows no stale server reading."""
    agent: list[Any] = [
        FakeAgent(
            "degraded",
            ServerStatus(
                read_only=False,
                semisync_master_enabled=True,
                semisync_master_active=False,
                semisync_master_clients=0,
            ),
        )
    ]
    registry = Registry()
    install_dbagent_metrics(registry, lambda: agent[0])
    result = page(registry)
    assert result.get("clickpass_db_semisync_degraded") == 1
    assert result.get("clickpass_db_semisync_master_status") == 0
    assert result.get("clickpass_db_semisync_master_clients") == 0
    assert result.get("clickpass_db_writable") == 1
    assert result.get("clickpass_db_read_only") == 0
    assert result.get("clickpass_db_replication_lag_seconds") is None
    assert result.get("clickpass_db_replication_running") is None
    assert result.get("clickpass_db_quarantined") == 0
    agent[0] = FakeAgent("quarantined", ServerStatus(replica_configured=False))
    assert page(registry).get("clickpass_db_quarantined") == 1
    assert page(registry).get("clickpass_db_semisync_degraded") == 0
    agent[0] = FakeAgent(
        "down", ServerStatus(read_only=False, replica_configured=True, seconds_behind=0)
    )
    down = page(registry)
    assert down.get("clickpass_db_role", role="down") == 1
    assert down.get("clickpass_db_read_only") is None
    assert down.get("clickpass_db_replication_lag_seconds") is None

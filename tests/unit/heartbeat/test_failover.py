"""
Failover reports: a node that takes a VIP over from a master that failed
(went silent, or resigned because it is unhealthy) reports it once, with
details, and nothing is reported for elections, clean stops, switchovers or
preemption. Also the path of that report to the node's alerts.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from clickpass import config as configmod
from clickpass.heartbeat.child import ParentLink
from clickpass.heartbeat.engine import NODE_CHECK
from clickpass.heartbeat.group import Group
from clickpass.heartbeat.service import ALERT_FAILOVER, ClusterService, _ChildProtocol
from clickpass.heartbeat.wire import State

from .sim import Net


def collect(group: Group) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    group.on_failover = reports.append
    return reports


def pair(net: Net, **options: Any) -> tuple[Group, Group]:
    a = net.add("app1", 200, **options)
    b = net.add("app2", 100)
    a.start()
    b.start()
    net.run(1)
    assert net.masters() == ["app1"]
    return a, b


def test_backup_reports_a_failover_when_the_master_goes_silent() -> None:
    """The master dies (no more adverts): the backup takes the VIP and reports it once."""
    net = Net(0.1)
    _, b = pair(net)
    reports = collect(b)
    net.dead.add("app1")
    net.run(1)
    assert net.nodes["app2"].state == State.MASTER
    assert len(reports) == 1
    report = reports[0]
    assert report["from"] == "app1"
    assert report["node"] == "app2"
    assert report["reason"] == "missed adverts"
    assert report["vip"] == "10.77.0.100/24"
    # Declared down 3 intervals plus skew after the last advert, not before.
    assert 0.3 < report["last_heard_seconds"] < 0.4
    assert b.counters["failovers"] == 1
    assert b.status()["last_failover"]["from"] == "app1"
    net.run(5)
    assert len(reports) == 1  # once, not at every advert


def test_backup_reports_a_failover_when_the_master_faults() -> None:
    """A master whose weight-0 check fails resigns as FAULT: its peer reports a failover."""
    net = Net(0.1)
    a, b = pair(net, checks=(("workers", 0),))
    reports = collect(b)
    a.set_health("workers", False)
    net.run(0.5)
    assert net.masters() == ["app2"]
    assert [(r["from"], r["reason"]) for r in reports] == [("app1", "master fault")]


def test_first_election_is_not_a_failover() -> None:
    """Nodes that start together elect a master; nobody reports a failover."""
    net = Net(0.1)
    a = net.add("app1", 200)
    b = net.add("app2", 100)
    reports_a, reports_b = collect(a), collect(b)
    a.start()
    b.start()
    net.run(3)
    assert net.masters() == ["app1"]
    assert reports_a == reports_b == []


def test_clean_stop_switchover_and_preempt_are_not_failovers() -> None:
    """Planned moves (a clean stop, a switchover, preempting back) report nothing."""
    net = Net(0.1)
    a, b = pair(net)
    reports_b = collect(b)
    a.stop()
    net.dead.add("app1")
    net.run(1)
    assert net.masters() == ["app2"]
    a = net.add("app1", 200)
    reports_a = collect(a)
    net.dead.discard("app1")
    a.start()
    net.run(1)
    assert net.masters() == ["app1"]  # preempted back
    a.switchover()
    net.run(1)
    assert net.masters() == ["app2"]
    assert reports_a == reports_b == []
    assert b.counters["takeovers"] == 2


def test_master_heard_again_before_the_down_timer_is_no_failover() -> None:
    """Two adverts lost, then the master is heard again: no takeover and nothing reported;
    a longer silence is a takeover and is reported."""
    net = Net(0.1)
    _, b = pair(net)
    reports = collect(b)
    net.partition("app1", "app2")
    net.run(0.15)  # at most two adverts lost: less than 3 intervals + skew
    net.heal()
    net.run(2)
    assert net.masters() == ["app1"]
    assert reports == []
    net.partition("app1", "app2")
    net.run(0.5)
    assert net.masters() == ["app1", "app2"]
    assert [r["reason"] for r in reports] == ["missed adverts"]


# The report's way to the node's alerts.


class FakeAlerts:
    def __init__(self) -> None:
        self.raised: list[tuple[str, str, dict[str, Any]]] = []

    def raise_(self, key: str, summary: str, details: dict[str, Any] | None = None) -> None:
        self.raised.append((key, summary, dict(details or {})))


class FakeEngine:
    def __init__(self) -> None:
        self.health: list[tuple[str, bool]] = []
        self.on_failover: Any = None

    def set_health(self, name: str, ok: bool) -> None:
        self.health.append((name, ok))


DETAILS = {
    "group": "app",
    "vip": "10.77.0.100/24",
    "node": "app2",
    "from": "app1",
    "reason": "missed adverts",
    "last_heard_seconds": 0.36,
}


def test_heartbeat_process_sends_failovers_to_the_node() -> None:
    """The heartbeat process writes each failover to the node as one event line."""
    engine, transport = FakeEngine(), StringTransport()
    link = ParentLink(engine, Clock(), node_timeout=2.0)  # type: ignore[arg-type]
    link.makeConnection(transport)
    engine.on_failover(DETAILS)
    assert json.loads(transport.value()) == {"event": "failover", "details": DETAILS}


def test_stdin_closing_without_stop_faults_but_stop_does_not() -> None:
    """The node dying (stdin closes, no "stop") fails the node check, so the groups resign
    as FAULT and the peer reports a failover; a clean "stop" does not."""
    for lines, faulted in (([], True), ([b'{"op": "stop"}'], False)):
        engine = FakeEngine()
        link = ParentLink(engine, Clock(), node_timeout=2.0)  # type: ignore[arg-type]
        link.makeConnection(StringTransport())
        link.lineReceived(b'{"op": "ping", "ready": true}')
        for line in lines:
            link.lineReceived(line)
        link.connectionLost(None)
        assert link.finished.called
        assert (engine.health[-1] == (NODE_CHECK, False)) is faulted


def service(alerts: FakeAlerts | None) -> ClusterService:
    settings = configmod.parse({"node": {"name": "app2"}})
    return ClusterService(Clock(), settings, alerts=alerts)


def test_node_raises_failover_happened_for_an_event_line() -> None:
    """An event line from the heartbeat process raises failover.happened with its details;
    answers and junk lines raise nothing."""
    alerts = FakeAlerts()
    protocol = _ChildProtocol(service(alerts))
    protocol.outReceived(b'{"id": 3, "ok": true}\nnot json\n{"event": "failover", "details": ')
    assert alerts.raised == []
    protocol.outReceived(json.dumps(DETAILS).encode() + b"}\n")
    [(key, summary, details)] = alerts.raised
    assert key == ALERT_FAILOVER == "failover.happened"
    assert details == DETAILS
    assert "app2" in summary and "app1" in summary and "missed adverts" in summary


def test_failover_without_alerts_is_only_logged() -> None:
    """A node without an alerts service still handles the event (logged, no error)."""
    protocol = _ChildProtocol(service(None))
    protocol.outReceived(json.dumps({"event": "failover", "details": DETAILS}).encode() + b"\n")

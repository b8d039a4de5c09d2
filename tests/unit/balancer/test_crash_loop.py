"""
The supervisor's crash-loop alert and its metrics channel to the workers,
against the fake process reactor: workers.crash_loop fires after repeated
deaths at start and is resolved once a worker stays up; a worker's metrics
snapshot travels over its stdin/stdout pipes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from clickpass.balancer.supervisor import CRASH_LOOP_ALERT, QUICK_DEATH
from tests.unit.balancer.test_supervisor import exit_, make, ready


class Alerts:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.details: list[dict[str, Any]] = []

    def raise_(self, key: str, summary: str, details: dict[str, Any] | None = None) -> None:
        self.events.append(("raise", key))
        self.details.append(details or {})

    def resolve(self, key: str) -> None:
        self.events.append(("resolve", key))


def die_quickly(reactor: Any, times: int) -> None:
    """The newest worker dies at start C{times} times, each respawn waited for."""
    for _ in range(times):
        before = len(reactor.processes)
        exit_(reactor.processes[-1])
        for _ in range(400):
            if len(reactor.processes) > before:
                break
            reactor.advance(0.25)


def test_two_deaths_at_start_are_not_a_crash_loop(tmp_path: Any) -> None:
    """A worker that fails to start twice raises nothing."""
    reactor, _, supervisor = make(1, tmp_path)
    alerts = supervisor.alerts = Alerts()
    die_quickly(reactor, 2)
    assert alerts.events == []


def test_crash_loop_fires_then_resolves_once_a_worker_stays_up(tmp_path: Any) -> None:
    """
    The third death at start in a row raises workers.crash_loop (naming the
    slot); a later worker that becomes ready resolves it only after it has
    stayed up QUICK_DEATH seconds, not at once.
    """
    reactor, pool, supervisor = make(2, tmp_path)
    alerts = supervisor.alerts = Alerts()
    ready(reactor.processes[0])  # slot 0 is fine
    die_quickly(reactor, 3)
    assert alerts.events == [("raise", CRASH_LOOP_ALERT)]
    assert alerts.details[0]["slots"] == [1] and alerts.details[0]["deaths"] == 3
    assert supervisor.slots[1].crash_loop
    die_quickly(reactor, 1)
    assert alerts.events[-1] == ("raise", CRASH_LOOP_ALERT)  # repeats count on the key
    ready(reactor.processes[-1])
    assert len(pool.backends) == 2
    reactor.advance(QUICK_DEATH - 1)
    assert ("resolve", CRASH_LOOP_ALERT) not in alerts.events
    reactor.advance(1)
    assert alerts.events[-1] == ("resolve", CRASH_LOOP_ALERT)
    assert not supervisor.slots[1].crash_loop and supervisor.slots[1].quick_deaths == 0


def test_a_worker_that_dies_soon_after_ready_keeps_the_alert(tmp_path: Any) -> None:
    """Ready, then dead within QUICK_DEATH: still a crash loop, nothing resolved."""
    reactor, _, supervisor = make(1, tmp_path)
    alerts = supervisor.alerts = Alerts()
    die_quickly(reactor, 3)
    ready(reactor.processes[-1])
    reactor.advance(QUICK_DEATH / 2)
    die_quickly(reactor, 1)
    reactor.advance(QUICK_DEATH * 2)
    assert ("resolve", CRASH_LOOP_ALERT) not in alerts.events
    assert supervisor.slots[0].crash_loop


def test_worker_metrics_travel_over_the_pipes(tmp_path: Any) -> None:
    """
    collect_metrics asks each ready worker on stdin and takes the JSON line
    it answers on stdout; a worker that does not answer in time is left out.
    """
    reactor, _, supervisor = make(2, tmp_path)
    first, second = reactor.processes
    ready(first)
    ready(second)
    results: list[Any] = []
    d = supervisor.collect_metrics(timeout=2.0)
    Deferred.fromCoroutine(d).addCallback(results.append)
    assert first.stdin == [b"metrics\n"] and second.stdin == [b"metrics\n"]
    snapshot = b'{"m": {"type": "counter", "help": "h", "labels": [], "samples": [[[], 3]]}}'
    first.proto.childDataReceived(1, b"metrics " + snapshot[:20])
    first.proto.childDataReceived(1, snapshot[20:] + b"\n")
    assert results == []
    reactor.advance(2.0)
    assert results == [
        [{"m": {"type": "counter", "help": "h", "labels": [], "samples": [[[], 3]]}}, {}]
    ]

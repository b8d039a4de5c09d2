"""The prober's counting: alert after K consecutive bad rounds, never on a blip; recovery."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from clickpass.monitor.alerts import Alerts
from clickpass.monitor.prober import DOWN, SLOW, Prober, RoundResult

OK = RoundResult(True, 0.2)
DOWN_ROUND = RoundResult(False, 10.0, "GET http://site/: Connection refused")
SLOW_ROUND = RoundResult(True, 7.5)


def make() -> tuple[Prober, Alerts, Clock]:
    clock = Clock()
    alerts = Alerts(clock, "prober", [], group_wait=0)
    alerts.startService()
    prober = Prober(clock, alerts, "http://site/", lambda: Deferred(), failures=3, slow=5.0)
    return prober, alerts, clock


def feed(prober: Prober, clock: Clock, *results: RoundResult) -> None:
    for result in results:
        prober.record(result)
        clock.advance(1)


def sent(alerts: Alerts) -> list[tuple[str, str]]:
    return [(e.status, e.key) for b in alerts.sent for e in b.events]


def test_quiet_when_all_is_well_and_on_blips() -> None:
    """Good rounds, and bad or slow rounds fewer than K in a row, send nothing."""
    prober, alerts, clock = make()
    feed(prober, clock, OK, OK, DOWN_ROUND, DOWN_ROUND, OK, SLOW_ROUND, SLOW_ROUND, OK, OK)
    assert alerts.sent == [] and alerts.active == {}


def test_down_after_k_failures_then_recovery() -> None:
    """K consecutive failures raise probe.down once; the next good round announces recovery."""
    prober, alerts, clock = make()
    feed(prober, clock, OK, DOWN_ROUND, DOWN_ROUND, DOWN_ROUND, DOWN_ROUND, DOWN_ROUND)
    assert sent(alerts) == [("firing", DOWN)]
    assert "Connection refused" in alerts.sent[0].events[0].summary
    feed(prober, clock, OK)
    assert sent(alerts) == [("firing", DOWN), ("resolved", DOWN)]


def test_slow_after_k_slow_rounds_then_recovery() -> None:
    """K consecutive rounds over the threshold raise probe.slow; a fast round resolves it."""
    prober, alerts, clock = make()
    feed(prober, clock, SLOW_ROUND, SLOW_ROUND, SLOW_ROUND)
    assert sent(alerts) == [("firing", SLOW)]
    assert "7.50s (threshold 5s)" in alerts.sent[0].events[0].summary
    feed(prober, clock, OK)
    assert sent(alerts) == [("firing", SLOW), ("resolved", SLOW)]

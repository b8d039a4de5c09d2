"""Alerts: gathering, grouping of repeats, reminders, recoveries, retries (fake clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from clickpass.monitor.alerts import Alerts, Batch, signature, verify_signature


class FakeChannel:
    """Records batches; fails the first C{failures} sends."""

    name = "fake"

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[Batch] = []
        self.attempts = 0
        self.failures = failures

    def send(self, batch: Batch) -> Deferred[None]:
        self.attempts += 1
        if self.attempts <= self.failures:
            return fail(RuntimeError("connection refused"))
        self.batches.append(batch)
        return succeed(None)

    def statuses(self) -> list[list[tuple[str, str]]]:
        return [[(e.status, e.key) for e in b.events] for b in self.batches]


def make(**kwargs: Any) -> tuple[Alerts, FakeChannel, Clock]:
    clock = Clock()
    channel = FakeChannel(kwargs.pop("failures", 0))
    alerts = Alerts(clock, "node1", [channel], group_wait=10, repeat_interval=3600, **kwargs)
    alerts.startService()
    return alerts, channel, clock


def test_nothing_sent_when_all_is_well() -> None:
    """No alert raised: a day passes and no notification goes out."""
    _alerts, channel, clock = make()
    for _ in range(24 * 60):
        clock.advance(60)
    assert channel.batches == [] and channel.attempts == 0


def test_alert_sent_after_group_wait_and_repeats_grouped() -> None:
    """One notification after the gathering window; fifty repeats are counted, not sent."""
    alerts, channel, clock = make()
    alerts.raise_("backup.failed", "S3 refused", {"error": "AccessDenied"})
    clock.advance(9)
    assert channel.batches == []
    clock.advance(1)
    assert channel.statuses() == [[("firing", "backup.failed")]]
    for _ in range(50):
        alerts.raise_("backup.failed", "S3 refused again")
        clock.advance(1)
    assert len(channel.batches) == 1
    assert alerts.active["backup.failed"].count == 51


def test_burst_of_different_alerts_is_one_batch() -> None:
    """Several keys raised within the window go out together."""
    alerts, channel, clock = make()
    alerts.raise_("failover.happened", "db2 took over")
    alerts.raise_("semisync.degraded", "no replica acked")
    clock.advance(10)
    assert channel.statuses() == [
        [("firing", "failover.happened"), ("firing", "semisync.degraded")]
    ]
    assert channel.batches[0].subject == "[clickpass node1] 2 firing"


def test_recovery_announced() -> None:
    """A resolved key that was announced is announced as resolved, with its count."""
    alerts, channel, clock = make()
    alerts.raise_("backup.stale", "no backup for 27h")
    clock.advance(10)
    alerts.raise_("backup.stale", "no backup for 28h")
    alerts.resolve("backup.stale")
    clock.advance(10)
    assert channel.statuses() == [[("firing", "backup.stale")], [("resolved", "backup.stale")]]
    resolved = channel.batches[1].events[0]
    assert resolved.count == 2 and channel.batches[1].firing == ()
    assert "RESOLVED backup.stale" in channel.batches[1].subject


def test_blip_within_window_is_never_announced() -> None:
    """Raised and resolved before the window closes: nobody is woken."""
    alerts, channel, clock = make()
    alerts.raise_("probe.down", "timeout")
    clock.advance(5)
    alerts.resolve("probe.down")
    clock.advance(60)
    assert channel.batches == []
    alerts.resolve("never.raised")
    clock.advance(60)
    assert channel.batches == []


def test_still_firing_reminder_every_repeat_interval() -> None:
    """A key that stays firing is repeated once per repeat_interval, not more."""
    alerts, channel, clock = make()
    alerts.raise_("db.quarantined", "db1 quarantined")
    clock.advance(10)
    for _ in range(125):  # about 2h05m: the reminder loop ticks each minute
        clock.advance(60)
    assert channel.statuses() == [
        [("firing", "db.quarantined")],
        [("repeat", "db.quarantined")],
        [("repeat", "db.quarantined")],
    ]


def test_failed_delivery_is_retried_then_given_up() -> None:
    """A channel that fails is retried on the clock; the caller never sees an error."""
    alerts, channel, clock = make(failures=2, retry_delays=(5, 30))
    alerts.raise_("workers.crash_loop", "worker 3 restarted 5 times in 60s")
    clock.advance(10)
    assert channel.attempts == 1 and channel.batches == []
    clock.advance(5)
    assert channel.attempts == 2
    clock.advance(30)
    assert channel.attempts == 3 and len(channel.batches) == 1

    alerts2, channel2, clock2 = make(failures=100, retry_delays=(5,))
    alerts2.raise_("x", "y")
    clock2.advance(10)
    clock2.advance(5)
    clock2.advance(500)
    assert channel2.attempts == 2 and channel2.batches == []


def test_stop_flushes_gathered_alerts() -> None:
    """Stopping the service sends what was gathered rather than dropping it."""
    alerts, channel, _clock = make()
    alerts.raise_("node.stopping", "bye")
    alerts.stopService()
    assert channel.statuses() == [[("firing", "node.stopping")]]


def test_signature_round_trip() -> None:
    """Receivers can check the HMAC and the timestamp's freshness."""
    body = b'{"a": 1}'
    header = "sha256=" + signature(b"k" * 20, "1000", body)
    assert verify_signature(b"k" * 20, "1000", body, header, now=1100)
    assert not verify_signature(b"k" * 20, "1000", body + b" ", header, now=1100)
    assert not verify_signature(b"other key ok", "1000", body, header, now=1100)
    assert not verify_signature(b"k" * 20, "1000", body, header, now=5000)

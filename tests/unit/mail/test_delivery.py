"""
The mail delivery service on a fake clock, with a fake SMTP server that
answers on that clock: the backoff between attempts, give-up by age and by
permanent refusal, leases between two nodes and after a node's death, the
mail.delayed alert, the metrics, and the control commands.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, cast

import pytest

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from clickpass import config
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.mail import outbox
from clickpass.mail.outbox import Outbox
from clickpass.mail.service import MailDelivery, backoff, install_mail, next_attempt
from clickpass.mail.settings import MailSettings
from clickpass.mail.transport import Envelope, PermanentFailure, TemporaryFailure
from clickpass.monitor.metrics import Registry
from clickpass.storage.sql import DirectStorage, OutcomeUnknown, Transaction
from tests.support.storage import WritesRefused
from tests.unit.mail.conftest import BASE_URL, NOW

FAST = {"poll_interval": 1.0, "backoff_initial": 30.0, "backoff_max": 480.0}


class FakeServer:
    """
    An SMTP server that answers after C{latency} seconds on the clock:
    C{outcome(attempt)} says how ("ok", "temporary", "permanent" or
    "hold", which waits for the test to fire L{held}).
    """

    def __init__(self, clock: Clock, outcome: Any = "ok", latency: float = 0.5) -> None:
        self.clock = clock
        self.outcome = outcome if callable(outcome) else (lambda _: outcome)
        self.latency = latency
        self.attempts: list[tuple[float, Envelope]] = []
        self.delivered: list[Envelope] = []
        self.held: list[Deferred[None]] = []

    def describe(self) -> str:
        return "fake smtp"

    def send(self, envelope: Envelope) -> Deferred[None]:
        self.attempts.append((self.clock.seconds(), envelope))
        outcome = self.outcome(len(self.attempts))
        d: Deferred[None] = Deferred()
        if outcome == "hold":
            self.held.append(d)
            return d

        def answer() -> None:
            if outcome == "ok":
                self.delivered.append(envelope)
                d.callback(None)
            elif outcome == "permanent":
                d.errback(PermanentFailure("550 5.1.1 no such user"))
            else:
                d.errback(TemporaryFailure("451 4.3.0 try again later"))

        self.clock.callLater(self.latency, answer)
        return d


class FakeAlerts:
    def __init__(self) -> None:
        self.firing: dict[str, str] = {}
        self.history: list[tuple[str, str]] = []

    def raise_(self, key: str, summary: str, details: dict[str, Any] | None = None) -> None:
        if key not in self.firing:
            self.history.append(("raise", key))
        self.firing[key] = summary

    def resolve(self, key: str) -> None:
        if self.firing.pop(key, None) is not None:
            self.history.append(("resolve", key))


def settings(**values: Any) -> MailSettings:
    return MailSettings(**{**FAST, **values})


def delivery(
    clock: Clock,
    storage: DirectStorage,
    server: FakeServer,
    owner: str = "node1",
    alerts: FakeAlerts | None = None,
    **values: Any,
) -> MailDelivery:
    return MailDelivery(
        clock, storage, settings(**values), server, "no-reply@example.com", owner, alerts
    )


def enqueue(storage: DirectStorage, now: float, to: str = "p@example.org", **values: Any) -> int:
    box = Outbox(settings(**values), BASE_URL)
    row_id: int = storage.run_blocking(
        lambda tx: box.enqueue(tx, to, "Test", "test", {"node": "n1"}, now=int(now))
    )
    return row_id


def row(storage: DirectStorage, row_id: int) -> dict[str, Any]:
    found = storage.run_blocking(outbox.show, row_id)
    assert found is not None
    return found


def run_for(clock: Clock, seconds: int) -> None:
    for _ in range(seconds * 2):
        clock.advance(0.5)


def test_backoff_doubles_up_to_the_cap() -> None:
    """Waits double after every failure and stop at the maximum; never less than a second."""
    assert [backoff(n, 30, 480) for n in range(1, 8)] == [30, 60, 120, 240, 480, 480, 480]
    s = MailSettings(backoff_initial=0.2, backoff_max=1.0)
    assert next_attempt(NOW, 1, s) == NOW + 1


def test_retries_back_off_until_the_server_takes_the_message(
    clock: Clock, storage: DirectStorage
) -> None:
    """
    A server that fails for ten minutes gets the message on the first
    attempt after it is back, the attempts spaced 30, 60, 120, 240, 480 s;
    once: one delivery, the row sent, its body no longer kept.
    """
    server = FakeServer(clock, lambda n: "ok" if clock.seconds() >= NOW + 600 else "temporary")
    service = delivery(clock, storage, server)
    row_id = enqueue(storage, clock.seconds())
    service.startService()
    run_for(clock, 1200)
    service.stopService()
    times = [t - NOW for t, _ in server.attempts]
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx(
        [30.5, 60.5, 120.5, 240.5, 480.5], abs=1.0
    )
    assert len(server.delivered) == 1
    found = row(storage, row_id)
    assert found["state"] == "sent" and found["attempts"] == 6
    assert found["text"] is None and found["last_error"] == ""
    assert server.delivered[0].message_id == found["message_id"]
    assert service.counts.sent == 1 and service.counts.retried == 5


def test_every_attempt_sends_the_same_message(clock: Clock, storage: DirectStorage) -> None:
    """Retries carry the same bytes and Message-ID, so a receiver can tell a repeat."""
    server = FakeServer(clock, lambda n: "ok" if n == 3 else "temporary")
    service = delivery(clock, storage, server)
    enqueue(storage, clock.seconds())
    service.startService()
    run_for(clock, 200)
    service.stopService()
    assert len(server.attempts) == 3
    assert len({e.message for _, e in server.attempts}) == 1
    assert len({e.message_id for _, e in server.attempts}) == 1


def test_a_message_is_given_up_at_its_age(clock: Clock, storage: DirectStorage) -> None:
    """
    A server that never takes the message: the last attempt comes at the
    give-up time (not a backoff before it), then the message is given up,
    kept with its error and its body for a retry, and never tried again.
    """
    server = FakeServer(clock, "temporary")
    service = delivery(clock, storage, server, give_up_after=100)
    row_id = enqueue(storage, clock.seconds(), give_up_after=100)
    service.startService()
    run_for(clock, 1000)
    service.stopService()
    assert [round(t - NOW) for t, _ in server.attempts] == [0, 31, 92, 100]
    found = row(storage, row_id)
    assert found["state"] == "failed" and found["attempts"] == 4
    assert found["last_error"] == "451 4.3.0 try again later"
    assert found["text"] is not None
    assert service.counts.given_up == 1


def test_a_permanent_refusal_gives_up_at_once(clock: Clock, storage: DirectStorage) -> None:
    """A 5xx to the message (no such user) is not tried again; the next message still goes."""
    server = FakeServer(clock, lambda n: "permanent" if n == 1 else "ok")
    service = delivery(clock, storage, server)
    refused = enqueue(storage, clock.seconds(), to="gone@example.org")
    service.startService()
    run_for(clock, 5)
    later = enqueue(storage, clock.seconds())
    run_for(clock, 600)
    service.stopService()
    assert len(server.attempts) == 2
    assert row(storage, refused)["state"] == "failed"
    assert row(storage, refused)["last_error"] == "550 5.1.1 no such user"
    assert row(storage, later)["state"] == "sent"


def test_a_leased_message_is_not_sent_by_a_second_node(
    clock: Clock, storage: DirectStorage
) -> None:
    """While one node sends a message, another node's rounds pass it by."""
    slow = FakeServer(clock, "hold")
    other = FakeServer(clock)
    first = delivery(clock, storage, slow, owner="node1")
    second = delivery(clock, storage, other, owner="node2")
    enqueue(storage, clock.seconds())
    pending = first.run_once()
    assert len(slow.attempts) == 1
    clock.advance(30)
    assert second.run_once().result == 0
    assert other.attempts == []
    slow.held[0].callback(None)
    assert pending.result == 1
    clock.advance(100)
    assert second.run_once().result == 0
    assert other.attempts == []


def test_a_dead_nodes_messages_are_claimed_again_when_its_lease_expires(
    clock: Clock, storage: DirectStorage
) -> None:
    """
    A node that claimed a message and died (nothing recorded) holds it
    only until its lease runs out; then another node sends it, and the
    dead node's late word cannot undo that.
    """
    row_id = enqueue(storage, clock.seconds())
    (claimed,) = storage.run_blocking(outbox.claim, int(clock.seconds()), 70, 10, "dead")
    assert claimed.row_id == row_id
    server = FakeServer(clock)
    survivor = delivery(clock, storage, server, owner="node2", timeout=30.0)
    survivor.startService()
    run_for(clock, 60)
    assert server.attempts == []
    run_for(clock, 20)
    survivor.stopService()
    assert len(server.delivered) == 1
    assert row(storage, row_id)["state"] == "sent"
    late = storage.run_blocking(
        outbox.mark_failed, row_id, "dead", "stale", int(clock.seconds()) + 30, False
    )
    assert late is False
    assert row(storage, row_id)["state"] == "sent"


class ClaimCommitCut:
    """
    The storage of a node whose first claim commits but whose COMMIT's
    answer is lost (a database failover at that moment): the rows are
    leased to the node, and it is told the outcome is unknown.
    """

    def __init__(self, storage: DirectStorage) -> None:
        self.storage = storage
        self.cut = 0

    def run(self, fn: Any, *args: object) -> Deferred[Any]:
        d = self.storage.run(fn, *args)
        if fn is outbox.claim and not self.cut:
            self.cut += 1

            def lost(_: object) -> None:
                raise OutcomeUnknown("the database connection was lost while committing")

            d.addCallback(lost)
        return d


def test_a_claim_whose_commit_was_cut_holds_nothing_up(
    clock: Clock, storage: DirectStorage
) -> None:
    """
    A claim applied but answered with a lost connection (its outcome
    unknown to the node) leaves the message leased to that node: its next
    round takes it again at once, instead of waiting out the lease (200 s
    with the defaults); it is sent once. Another node still passes it by.
    """
    row_id = enqueue(storage, clock.seconds())
    cut = ClaimCommitCut(storage)
    server = FakeServer(clock)
    service = MailDelivery(
        clock, cast(Any, cut), settings(), server, "no-reply@example.com", "node1"
    )
    other = FakeServer(clock)
    second = delivery(clock, storage, other, owner="node2")
    service.startService()
    clock.advance(0)
    assert cut.cut == 1 and server.attempts == []
    assert row(storage, row_id)["lease_owner"] == "node1"
    assert second.run_once().result == 0
    run_for(clock, 5)
    service.stopService()
    assert len(server.delivered) == 1 and other.attempts == []
    assert row(storage, row_id)["state"] == "sent"


def test_a_message_recorded_only_after_failover_wait_is_sent_once(
    clock: Clock, storage: DirectStorage
) -> None:
    """
    The server said 250, then no writable primary answers for 60 s (six
    times failover_wait): the node keeps trying to mark the message sent
    while it holds the lease (200 s), looks at nothing else meanwhile (the
    message is leased to itself: claiming now would send it again), and it
    is sent once.
    """
    row_id = enqueue(storage, clock.seconds())
    db = WritesRefused(storage, clock)

    def outcome(attempt: int) -> str:
        db.refuse()
        return "ok"

    server = FakeServer(clock, outcome)
    service = MailDelivery(
        clock, cast(Any, db), settings(), server, "no-reply@example.com", "node1"
    )
    service.startService()
    run_for(clock, 60)
    assert len(server.delivered) == 1 and service.unmarked and db.refused >= 3
    assert row(storage, row_id)["state"] == "pending"
    db.recover()
    run_for(clock, 60)
    service.stopService()
    assert len(server.attempts) == 1 and not service.unmarked
    assert row(storage, row_id)["state"] == "sent"
    assert service.counts.sent == 1


def test_the_queue_is_committed_with_the_callers_change(storage: DirectStorage) -> None:
    """A message queued in a transaction that fails is not queued; in one that commits, it is."""
    box = Outbox(settings(), BASE_URL)

    def change_then_fail(tx: Transaction) -> None:
        tx.execute("INSERT INTO node_metadata (name, value) VALUES ('x', '1')")
        box.enqueue(tx, "p@example.org", "Test", "test", {"node": "n"}, now=NOW)
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        storage.run_blocking(change_then_fail)
    count = "SELECT COUNT(*) FROM mail_outbox"
    assert storage.run_blocking(lambda tx: tx.scalar(count)) == 0

    def change(tx: Transaction) -> None:
        tx.execute("INSERT INTO node_metadata (name, value) VALUES ('x', '1')")
        box.enqueue(tx, "p@example.org", "Test", "test", {"node": "n"}, now=NOW)

    storage.run_blocking(change)
    assert storage.run_blocking(lambda tx: tx.scalar(count)) == 1


def test_alert_and_metrics_follow_the_oldest_unsent_message(
    clock: Clock, storage: DirectStorage
) -> None:
    """
    mail.delayed fires once the oldest waiting message is older than
    alert_after and resolves when the outbox is empty again; the gauges
    and counters say the same on /metrics.
    """
    server = FakeServer(clock, lambda n: "ok" if clock.seconds() >= NOW + 400 else "temporary")
    alerts = FakeAlerts()
    registry = Registry()
    parent = MultiService()
    app = config.parse({"mail": {**FAST, "alert_after": 120}})
    service = install_mail(
        parent, clock, app, storage, CommandRegistry(), registry, alerts, transport=server
    )
    enqueue(storage, clock.seconds())
    parent.startService()
    run_for(clock, 100)
    assert alerts.firing == {}
    text = registry.exposition()
    assert "\nclickpass_mail_queued 1\n" in text
    run_for(clock, 60)
    assert "mail.delayed" in alerts.firing
    assert re.search(r"\nclickpass_mail_oldest_unsent_seconds 1[2-6]\d\n", registry.exposition())
    run_for(clock, 600)
    parent.stopService()
    assert alerts.history == [("raise", "mail.delayed"), ("resolve", "mail.delayed")]
    text = registry.exposition()
    assert "\nclickpass_mail_queued 0\n" in text
    assert "\nclickpass_mail_sent_total 1\n" in text
    assert service.counts.retried > 0
    assert f"\nclickpass_mail_retries_total {service.counts.retried}\n" in text


def test_old_sent_messages_are_removed(clock: Clock, storage: DirectStorage) -> None:
    """Sent and given-up messages go after the retention time; waiting ones never do."""
    server = FakeServer(clock, lambda n: "ok" if n == 1 else "temporary")
    service = delivery(clock, storage, server, retention=3600, give_up_after=10**6)
    sent = enqueue(storage, clock.seconds())
    service.startService()
    run_for(clock, 5)
    waiting = enqueue(storage, clock.seconds(), give_up_after=10**6)
    run_for(clock, 3600 * 2 + 10)
    service.stopService()
    assert storage.run_blocking(outbox.show, sent) is None
    assert row(storage, waiting)["state"] == "pending"


def commands(clock: Clock, storage: DirectStorage, server: FakeServer) -> CommandRegistry:
    registry = CommandRegistry()
    install_mail(
        MultiService(),
        clock,
        config.parse({"mail": FAST}),
        storage,
        registry,
        transport=server,
    )
    return registry


def call(registry: CommandRegistry, name: str, **args: Any) -> Any:
    d = Deferred.fromCoroutine(registry.dispatch(name, args))
    failures: list[Any] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    return d.result


def test_control_commands_status_show_retry_and_test(clock: Clock, storage: DirectStorage) -> None:
    """
    mail.test queues a message; mail.status counts it; mail.show shows its
    headers and text; mail.retry refuses a sent message and queues a
    given-up one again, due now, with a fresh give-up time.
    """
    server = FakeServer(clock, "permanent")
    registry = commands(clock, storage, server)
    queued = call(registry, "mail.test", to="ops@example.org")
    assert queued["transport"] == "fake smtp"
    row_id = queued["queued"]
    status = call(registry, "mail.status")
    assert status["counts"] == {"pending": 1, "sent": 0, "failed": 0}
    assert status["oldest_unsent_seconds"] == 0
    assert [m["id"] for m in status["unsent"]] == [row_id]
    shown = call(registry, "mail.show", id=row_id)
    assert shown["headers"]["To"] == "ops@example.org"
    assert "clickpass-ctl mail test" in shown["text"]
    service = delivery(clock, storage, server)
    service.run_once()
    clock.advance(1)
    assert row(storage, row_id)["state"] == "failed"
    clock.advance(1000)
    assert call(registry, "mail.retry", id=row_id) == {"queued": row_id}
    again = row(storage, row_id)
    assert again["state"] == "pending" and again["next_attempt"] == int(clock.seconds())
    assert again["give_up_at"] == int(clock.seconds()) + 24 * 3600
    server.outcome = lambda n: "ok"
    service.run_once()
    clock.advance(1)
    assert row(storage, row_id)["state"] == "sent"
    with pytest.raises(CommandError, match="already sent; it is never sent twice"):
        call(registry, "mail.retry", id=row_id)
    with pytest.raises(CommandError, match="no message 999 in the outbox"):
        call(registry, "mail.show", id=999)
    with pytest.raises(CommandError, match="positive integer"):
        call(registry, "mail.show", id="1")
    with pytest.raises(CommandError, match="not an email address"):
        call(registry, "mail.test", to="nobody")


def test_stopping_gives_back_what_has_not_started(clock: Clock, storage: DirectStorage) -> None:
    """
    A node stopping mid-round finishes the send in flight and gives the
    messages it had not started back at once (no lease to wait out), for
    the next node to send.
    """
    server = FakeServer(clock, "hold")
    service = delivery(clock, storage, server, parallel=1)
    row_ids = [enqueue(storage, clock.seconds()) for _ in range(3)]
    service.startService()
    clock.advance(0)
    assert len(server.attempts) == 1
    stopped = service.stopService()
    assert stopped is not None and not stopped.called
    server.held[0].callback(None)
    assert stopped.called
    assert len(server.attempts) == 1
    found = [row(storage, r) for r in row_ids]
    assert [f["state"] for f in found] == ["sent", "pending", "pending"]
    assert [f["leased_until"] for f in found[1:]] == [0, 0]
    other = FakeServer(clock)
    delivery(clock, storage, other, owner="node2").run_once()
    clock.advance(1)
    assert len(other.delivered) == 2


def test_the_lease_covers_a_whole_batch_sent_a_few_at_a_time(
    clock: Clock, storage: DirectStorage
) -> None:
    """
    A node that claimed a batch and sends it one at a time (parallel 1),
    each attempt taking nearly the timeout, still holds the last message
    when it gets to it: another node polling all along sends none of them.
    """
    slow = FakeServer(clock, latency=9.5)
    other = FakeServer(clock)
    first = delivery(clock, storage, slow, owner="node1", batch=4, parallel=1, timeout=10.0)
    second = delivery(clock, storage, other, owner="node2", batch=4, parallel=1, timeout=10.0)
    for _ in range(4):
        enqueue(storage, clock.seconds())
    first.run_once()
    for _ in range(50):
        second.run_once()
        clock.advance(1)
    assert len(slow.delivered) == 4
    assert other.attempts == []

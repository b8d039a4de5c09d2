"""
The webhook delivery service on a fake clock and a fake partner endpoint:
signatures, backoff, at-least-once delivery in order per person across
an hour-long outage, give-up, and leases between two nodes.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from clickpass.partners import sites, webhooks
from clickpass.partners.settings import PartnersSettings
from clickpass.partners.webhooks import WebhookDelivery, backoff, signature, verify
from clickpass.storage.sql import DirectStorage, OutcomeUnknown
from tests.support.logged_errors import ErrorCollector
from tests.support.storage import CommitCut, WritesRefused
from tests.unit.partners.conftest import NOW, add_account, make_site

SECRET = b"m" * 32


class FakePartner:
    """A webhook endpoint that is down until C{up_at} (clock time), then answers 200."""

    def __init__(self, clock: Clock, up_at: float = 0.0) -> None:
        self.clock = clock
        self.up_at = up_at
        self.attempts: list[tuple[float, dict[str, str], bytes]] = []
        self.received: list[dict[str, Any]] = []
        self.hold: Deferred[int] | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.attempts.append((self.clock.seconds(), headers, body))
        if self.hold is not None:
            return await self.hold
        if self.clock.seconds() < self.up_at:
            raise ConnectionRefusedError("partner is down")
        self.received.append(json.loads(body))
        return 200


def service(clock: Clock, storage: Any, partner: FakePartner, **settings: Any) -> WebhookDelivery:
    values = {
        "webhook_poll_interval": 1.0,
        "webhook_backoff_initial": 5.0,
        "webhook_backoff_max": 300.0,
        **settings,
    }
    return WebhookDelivery(clock, storage, PartnersSettings(**values), SECRET, partner.post)


def link_and_unlink(storage: DirectStorage, site: sites.Site, email: str, now: int) -> str:
    account = storage.run_blocking(add_account, email)
    opaque = email.split("@")[0].ljust(32, "a")[:32]
    identifier = "https://clickpass.example/id/" + opaque
    storage.run_blocking(sites.create_link, site, account, opaque, identifier, "register", now)
    link = storage.run_blocking(sites.get_link, site.id, account)
    storage.run_blocking(sites.unlink, site, link, identifier, "person", now + 1)
    return identifier


def test_signature_verifies_and_detects_tampering() -> None:
    """The receiver's check accepts our signature and nothing else."""
    sig = signature("whsec_x", "1000", b'{"a":1}')
    assert verify("whsec_x", "1000", b'{"a":1}', sig, now=1010)
    assert not verify("whsec_x", "1000", b'{"a":2}', sig, now=1010)
    assert not verify("whsec_y", "1000", b'{"a":1}', sig, now=1010)
    assert not verify("whsec_x", "1000", b'{"a":1}', sig, now=2000)  # too old: replay


def test_backoff_doubles_up_to_the_cap() -> None:
    """Waits double after every failure and stop at the maximum."""
    assert [backoff(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_partner_down_for_an_hour_loses_nothing(storage: DirectStorage) -> None:
    """
    Events made while the partner is down for an hour all arrive once it
    is back, each person's in the order they happened, each with the same
    id and body on every attempt, signed with the site's secret; the
    outage costs a bounded number of attempts (the site backs off as one).
    """
    clock = Clock()
    clock.advance(NOW)
    site = make_site(storage)
    partner = FakePartner(clock, up_at=NOW + 3600)
    delivery = service(clock, storage, partner)
    delivery.startService()
    people = [link_and_unlink(storage, site, f"p{i}@example.com", NOW + i) for i in range(3)]
    for _ in range(3700):
        clock.advance(1)
    delivery.stopService()
    got = [(e["data"]["identifier"], e["type"]) for e in partner.received]
    assert len(got) == 6
    for identifier in people:
        mine = [t for i, t in got if i == identifier]
        assert mine == ["user.linked", "user.unlinked"]
    # Retries of one event are byte-identical and carry one idempotency id.
    first_id = partner.received[0]["id"]
    tries = [(h, b) for _, h, b in partner.attempts if h["Clickpass-Event-Id"] == first_id]
    assert len(tries) > 1 and len({b for _, b in tries}) == 1
    for headers, body in tries:
        secret = sites.webhook_secret(SECRET, site.public_id, 1)
        assert headers["Clickpass-Signature"] == signature(
            secret, headers["Clickpass-Timestamp"], body
        )
    # Site-wide backoff: about 3600/300 + log2(300/5) attempts, not one per event per second.
    failed = [a for a in partner.attempts if a[0] < NOW + 3600]
    assert len(failed) < 25


def test_given_up_event_lets_the_next_one_through(storage: DirectStorage) -> None:
    """After the give-up age an event is abandoned and the person's next event goes."""
    clock = Clock()
    clock.advance(NOW)
    site = make_site(storage)
    partner = FakePartner(clock, up_at=NOW + 45)
    delivery = service(clock, storage, partner, webhook_give_up_after=30)
    account = storage.run_blocking(add_account, "g@example.com")
    opaque = "g" * 32
    storage.run_blocking(sites.create_link, site, account, opaque, "id-g", "register", NOW)
    clock.advance(40)
    link = storage.run_blocking(sites.get_link, site.id, account)
    storage.run_blocking(sites.unlink, site, link, "id-g", "person", NOW + 40)
    delivery.startService()
    for _ in range(200):
        clock.advance(1)
    delivery.stopService()
    assert [e["type"] for e in partner.received] == ["user.unlinked"]
    states = storage.run_blocking(sites.recent_events, site.id)
    assert sorted(e.state for e in states) == [sites.DELIVERED, sites.GIVEN_UP]


def test_a_leased_event_is_not_sent_by_a_second_node(storage: DirectStorage) -> None:
    """While one node is delivering an event, another node's round does not send it again."""
    clock = Clock()
    clock.advance(NOW)
    site = make_site(storage)
    account = storage.run_blocking(add_account, "l@example.com")
    storage.run_blocking(sites.create_link, site, account, "l" * 32, "id-l", "register", NOW)
    slow = FakePartner(clock)
    slow.hold = Deferred()
    other = FakePartner(clock)
    first = service(clock, storage, slow)
    second = service(clock, storage, other)
    pending = first.run_once()
    assert len(slow.attempts) == 1
    assert second.run_once().result == 0
    assert other.attempts == []
    slow.hold.callback(200)
    assert pending.result == 1
    assert second.run_once().result == 0


class FailingOverPartner(FakePartner):
    """A partner behind whose first 2xx the database loses its writable primary."""

    def __init__(self, clock: Clock, db: WritesRefused) -> None:
        super().__init__(clock)
        self.db = db

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        status = await super().post(url, body, headers)
        if len(self.received) == 1:
            self.db.refuse()
        return status


def test_a_delivery_recorded_only_after_failover_wait_is_sent_once(
    storage: DirectStorage,
) -> None:
    """
    The partner took the event, then no writable primary answers for 20 s
    (twice failover_wait): the node keeps trying to record it while it
    holds the lease, sends nothing meanwhile (not the event again, though
    it is leased to itself), and the partner gets it once.
    """
    clock = Clock()
    clock.advance(NOW)
    site = make_site(storage)
    account = storage.run_blocking(add_account, "f@example.com")
    storage.run_blocking(sites.create_link, site, account, "f" * 32, "id-f", "register", NOW)
    db = WritesRefused(storage, clock)
    partner = FailingOverPartner(clock, db)
    delivery = service(clock, db, partner, webhook_timeout=20.0)
    delivery.startService()
    for _ in range(20):
        clock.advance(1)
    assert len(partner.received) == 1 and delivery.unmarked and db.refused >= 2
    db.recover()
    for _ in range(60):
        clock.advance(1)
    delivery.stopService()
    assert len(partner.attempts) == 1 and not delivery.unmarked
    assert [e.state for e in storage.run_blocking(sites.recent_events, site.id)] == [
        sites.DELIVERED
    ]


def test_a_claim_whose_commit_was_cut_holds_nothing_up(
    storage: DirectStorage, logged_errors: ErrorCollector
) -> None:
    """
    A claim applied but answered with a lost connection (that round
    fails) leaves the event leased to the node: its next round takes it
    again at once instead of waiting out the lease (35 s); another node
    passes it by; sent once.
    """
    clock = Clock()
    clock.advance(NOW)
    site = make_site(storage)
    account = storage.run_blocking(add_account, "c@example.com")
    storage.run_blocking(sites.create_link, site, account, "c" * 32, "id-c", "register", NOW)
    cut = CommitCut(storage, webhooks._claim)
    partner = FakePartner(clock)
    other = FakePartner(clock)
    first = service(clock, cut, partner)
    second = service(clock, storage, other)
    first.startService()
    clock.advance(0)
    assert cut.cut == 1 and partner.attempts == []
    owner = storage.run_blocking(lambda tx: tx.scalar("SELECT lease_owner FROM partner_events"))
    assert owner == first.owner != second.owner
    assert second.run_once().result == 0
    for _ in range(3):
        clock.advance(1)
    first.stopService()
    assert [type(e["log_failure"].value) for e in logged_errors.events] == [OutcomeUnknown]
    assert len(partner.received) == 1 and other.attempts == []
    assert [e.state for e in storage.run_blocking(sites.recent_events, site.id)] == [
        sites.DELIVERED
    ]


def test_a_long_batch_never_outlives_its_lease(storage: DirectStorage) -> None:
    """
    A site whose endpoint takes nearly the whole timeout for every event
    gets no attempt that could end after the node's lease on it: the rest
    of its batch goes back to the outbox, and a second node polling all the
    while sends no event twice; everything arrives, in order per person.
    """
    clock = Clock()
    clock.advance(NOW)
    site = make_site(storage)
    people = [link_and_unlink(storage, site, f"s{i}@example.com", NOW) for i in range(6)]
    timeout = 10.0

    class SlowPartner(FakePartner):
        async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
            self.attempts.append((self.clock.seconds(), headers, body))
            waited: Deferred[None] = Deferred()
            self.clock.callLater(timeout - 0.5, waited.callback, None)
            await waited
            self.received.append(json.loads(body))
            return 200

    partner = SlowPartner(clock)
    nodes = [service(clock, storage, partner, webhook_timeout=timeout) for _ in range(2)]
    for node in nodes:
        node.startService()
    for _ in range(300):
        clock.advance(1)
    for node in nodes:
        node.stopService()
    # The batch (6 events of 9.5 s) is longer than one lease (35 s): the case under test.
    ids = [event["id"] for event in partner.received]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert len(partner.attempts) == 12
    for identifier in people:
        mine = [e["type"] for e in partner.received if e["data"]["identifier"] == identifier]
        assert mine == ["user.linked", "user.unlinked"]


def test_sites_without_webhook_url_queue_nothing(storage: DirectStorage) -> None:
    """No webhook URL, no outbox rows: nothing piles up for a site that does not listen."""
    site = make_site(storage, webhook=False)
    account = storage.run_blocking(add_account, "n@example.com")
    storage.run_blocking(sites.create_link, site, account, "n" * 32, "id-n", "register", NOW)
    assert storage.run_blocking(sites.recent_events, site.id) == []


def test_unverified_site_gets_no_webhooks_until_verified(storage: DirectStorage) -> None:
    """
    Events of a site whose realm is not verified are kept, not sent; once
    the site is verified they are all delivered, in order.
    """
    from tests.unit.partners.conftest import verify_site

    clock = Clock()
    clock.advance(NOW)
    site = make_site(storage, verified=False)
    assert not site.verified
    partner = FakePartner(clock)
    delivery = service(clock, storage, partner)
    delivery.startService()
    identifier = link_and_unlink(storage, site, "q@example.com", NOW)
    for _ in range(30):
        clock.advance(1)
    assert partner.attempts == []
    verify_site(storage, site)
    for _ in range(30):
        clock.advance(1)
    delivery.stopService()
    got = [(e["data"]["identifier"], e["type"]) for e in partner.received]
    assert got == [(identifier, "user.linked"), (identifier, "user.unlinked")]


def test_a_failure_does_not_free_an_event_another_node_is_sending(
    storage: DirectStorage,
) -> None:
    """
    One node's failed delivery holds back the site's other events, but one
    that another node holds a live lease on (it may be sending it right
    now) keeps its lease: a third node does not take it once the hold ends.
    """
    site = make_site(storage)
    link_and_unlink(storage, site, "first@example.com", NOW)
    link_and_unlink(storage, site, "second@example.com", NOW + 2)
    lease = 65
    [mine] = storage.run_blocking(webhooks._claim, NOW + 10, lease, 1, "node-a")
    [theirs] = storage.run_blocking(webhooks._claim, NOW + 10, lease, 1, "node-b")
    assert mine.subject != theirs.subject
    storage.run_blocking(webhooks._failed, mine, "refused", NOW + 11, NOW + 16, False, "node-a")
    leases = dict(
        storage.run_blocking(
            lambda tx: tx.fetchall(
                "SELECT id, lease_owner FROM partner_events WHERE lease_until > ?", NOW + 11
            )
        )
    )
    assert leases == {theirs.row_id: "node-b"}
    # Past the hold, within node-b's lease: a third node gets only node-a's event.
    taken = storage.run_blocking(webhooks._claim, NOW + 20, lease, 10, "node-c")
    assert [e.row_id for e in taken] == [mine.row_id]

"""
Webhook delivery: the node's service that empties the partner webhook
outbox (table C{partner_events}) into partners' webhook URLs.

At least once, in order per person: an event is sent only when every
earlier event for the same person at the same site was delivered (or
given up), and it is marked delivered only after the partner answered
2xx. A failure pushes back every pending event of that site with an
exponential backoff (the site is down, not the event), so a partner that
is down for an hour gets everything, in order, when it is back. Each
attempt carries the event's idempotency id (C{Clickpass-Event-Id}) and
an HMAC-SHA256 signature over C{timestamp + "." + body}.

Several nodes may run this at once: an event is leased in the database
before it is sent, to the node (C{lease_owner}), so two nodes do not send
it at the same moment. A node takes the events still leased to itself
again at its next look (a claim whose COMMIT a database failover cut off
may have been applied; the service's rounds never overlap, so none of
them is being sent). A delivery the database cannot record (no writable
primary for longer than C{[database] failover_wait}) is recorded later,
while the node still holds the event's lease, before the node sends
anything new (L{LeasedOutboxService.record_delivery}); an event is sent
again, with the same C{Clickpass-Event-Id}, only when that lease ran out
first, or the node restarted or died between the partner's answer and
the record.

This module must never block the reactor (database through the storage,
HTTP through treq), never drop an event it could not deliver before its
give-up age, and never send to a non-public address unless configured.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.monitor.metrics import Gauge, Registry
from clickpass.partners.settings import PartnersSettings
from clickpass.partners.sites import DELIVERED, GIVEN_UP, PENDING, webhook_secret
from clickpass.storage.outbox import Backoff, LeasedOutboxService, claim_rows, release_rows
from clickpass.storage.sql import Storage, Transaction, one_line

SIGNATURE_HEADER = "Clickpass-Signature"
TIMESTAMP_HEADER = "Clickpass-Timestamp"
EVENT_ID_HEADER = "Clickpass-Event-Id"
EVENT_TYPE_HEADER = "Clickpass-Event-Type"
MAX_RESPONSE_BYTES = 64 * 1024
CLEANUP_INTERVAL = 3600
# Seconds kept in hand at the end of a lease for recording an outcome: an
# attempt starts only if it can end (cut off at the timeout) this long before
# the lease does.
LEASE_MARGIN = 5

# (url, body, headers) -> the partner's HTTP status; raises when there was no answer.
Poster = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """C{sha256=} + hex HMAC-SHA256 over C{timestamp + "." + body}."""
    mac = hmac.new(secret.encode("ascii"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, header: str, now: float, tolerance: float = 300
) -> bool:
    """For receivers: the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the C{attempts}-th failed attempt (1, 2, ...)."""
    return Backoff(initial, maximum).wait(attempts)


@dataclass(frozen=True)
class Pending:
    row_id: int
    event_id: str
    site_id: int
    subject: str
    event_type: str
    body: str
    created: int
    attempts: int
    url: str
    public_id: str
    secret_version: int


def _waiting(tx: Transaction) -> int:
    """How many events wait to be delivered (the outbox depth)."""
    return int(tx.scalar("SELECT COUNT(*) FROM partner_events WHERE state = ?", PENDING) or 0)


def _claim(tx: Transaction, now: int, lease: int, limit: int, owner: str) -> list[Pending]:
    """
    Lease the due events that head their person's queue to C{owner}:
    those whose lease ran out, and those still leased to C{owner} itself
    (L{claim_rows}' C{own_again}).
    """
    rows = claim_rows(
        tx,
        "partner_events",
        "SELECT e.id, e.event_id, e.site_id, e.subject, e.event_type, e.body, e.created, "
        "e.attempts, s.webhook_url, s.public_id, s.webhook_secret_version "
        "FROM partner_events e JOIN partner_sites s ON s.id = e.site_id "
        # A site whose realm is not proven gets nothing; its events wait.
        "JOIN partner_verifications v ON v.site_id = s.id AND v.verified > 0 "
        "WHERE e.state = ? AND e.next_attempt <= ? "
        "AND (e.lease_until <= ? OR e.lease_owner = ?) "
        "AND NOT EXISTS (SELECT 1 FROM partner_events p WHERE p.site_id = e.site_id "
        "AND p.subject = e.subject AND p.state = ? AND p.id < e.id) "
        "ORDER BY e.id LIMIT ?",
        (PENDING, now, now, owner, PENDING, limit),
        now,
        lease,
        pending=PENDING,
        owner=owner,
        own_again=True,
        # The query joins the site's rows: locking would hold them too.
        lock=False,
    )
    return [
        Pending(
            int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]), int(r[6]),
            int(r[7]), str(r[8]), str(r[9]), int(r[10]),
        )
        for r in rows
    ]  # fmt: skip


def _delivered(tx: Transaction, row_id: int, now: int) -> None:
    tx.execute(
        "UPDATE partner_events SET state = ?, delivered = ?, attempts = attempts + 1, "
        "lease_until = 0, last_error = '' WHERE id = ?",
        DELIVERED,
        now,
        row_id,
    )


def _failed(
    tx: Transaction,
    event: Pending,
    error: str,
    now: int,
    retry_at: int,
    give_up: bool,
    owner: str,
) -> None:
    tx.execute(
        "UPDATE partner_events SET state = ?, attempts = attempts + 1, next_attempt = ?, "
        "lease_until = 0, lease_owner = '', last_error = ? WHERE id = ?",
        GIVEN_UP if give_up else PENDING,
        retry_at,
        error[:255],
        event.row_id,
    )
    # The site is down, not the event: hold back the site's other events
    # too, but not one another node holds a live lease on (it may be sending
    # it now: cleared, a third node could send it again once the hold ends).
    tx.execute(
        "UPDATE partner_events SET next_attempt = ?, lease_until = 0, lease_owner = '' "
        "WHERE site_id = ? AND state = ? AND next_attempt < ? "
        "AND (lease_until <= ? OR lease_owner = ?)",
        retry_at,
        event.site_id,
        PENDING,
        retry_at,
        now,
        owner,
    )


def _release(tx: Transaction, row_ids: list[int], owner: str) -> None:
    release_rows(tx, "partner_events", row_ids, pending=PENDING, owner=owner)


def _cleanup(tx: Transaction, before: int) -> int:
    return tx.execute(
        "DELETE FROM partner_events WHERE state <> ? AND created < ?", PENDING, before
    )


class DeliveryFailed(Exception):
    """The partner did not take the event."""


class WebhookDelivery(LeasedOutboxService):
    """Empties the webhook outbox: look, deliver, look again."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        storage: Storage,
        settings: PartnersSettings,
        master_secret: bytes,
        post: Poster,
        owner: str | None = None,
    ) -> None:
        super().__init__("partner-webhooks", clock, settings.webhook_poll_interval)
        # Whose leases are this service's: unique to the process.
        self.owner = owner or f"webhooks-{secrets.token_hex(4)}"
        self._storage = storage
        self._settings = settings
        self._master_secret = master_secret
        self._post = post
        self._backoff = Backoff(settings.webhook_backoff_initial, settings.webhook_backoff_max)
        self.rounds = 0
        self.delivered = 0
        self.depth: Gauge | None = None

    def round_failed(self, failure: Failure) -> None:
        self.log.failure("webhook delivery round failed", failure)

    async def clean(self, now: int) -> None:
        removed = await self._storage.run(_cleanup, now - self._settings.delivered_retention)
        if removed:
            self.log.info("webhook outbox: removed {count} old events", count=removed)

    async def deliver_due(self, now: int) -> int:
        """Claim what is due, deliver it; the number delivered."""
        self.rounds += 1
        if self.depth is not None:
            self.depth.set(await self._storage.run(_waiting))
        lease = int(self._settings.webhook_timeout * 3) + 5
        events = await self._storage.run(
            _claim, now, lease, self._settings.webhook_batch, self.owner
        )
        if not events:
            return 0
        sent = await self.deliver_in_order(
            events,
            lambda event: event.site_id,
            now + lease,
            self._settings.webhook_timeout + LEASE_MARGIN,
            self._deliver,
            lambda event: self._record_delivered(event, now + lease),
            self._record_failure,
            self._release,
            "webhook delivery to one site failed",
        )
        self.delivered += sent
        return sent

    async def _record_delivered(self, event: Pending, lease_ends: int) -> None:
        delivered_at = int(self._clock.seconds())
        await self.record_delivery(
            event.row_id,
            lease_ends,
            lambda: self._storage.run(_delivered, event.row_id, delivered_at),
            f"webhook {event.event_id} to site {event.public_id}",
        )

    async def _release(self, events: list[Pending]) -> None:
        await self._storage.run(_release, [event.row_id for event in events], self.owner)

    async def _deliver(self, event: Pending) -> None:
        if not event.url:
            raise DeliveryFailed("the site has no webhook URL")
        body = event.body.encode("utf-8")
        timestamp = str(int(self._clock.seconds()))
        secret = webhook_secret(self._master_secret, event.public_id, event.secret_version)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "clickpass-webhooks",
            EVENT_ID_HEADER: event.event_id,
            EVENT_TYPE_HEADER: event.event_type,
            "Idempotency-Key": event.event_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(secret, timestamp, body),
        }
        status = await self._post(event.url, body, headers)
        if not 200 <= status < 300:
            raise DeliveryFailed(f"{event.url} answered HTTP {status}")

    async def _record_failure(self, event: Pending, error: Exception) -> None:
        now = int(self._clock.seconds())
        attempts = event.attempts + 1
        wait = self._backoff.wait(attempts)
        retry = self._backoff.after_failure(
            now, attempts, event.created + self._settings.webhook_give_up_after
        )
        give_up = retry.give_up
        reason = one_line(error)
        await self._storage.run(_failed, event, reason, now, retry.at, give_up, self.owner)
        if give_up:
            self.log.warn(
                "webhook {event_id} ({event_type}) to site {site} given up after {attempts} "
                "attempts: {reason}",
                event_id=event.event_id,
                event_type=event.event_type,
                site=event.public_id,
                attempts=attempts,
                reason=reason,
            )
        else:
            self.log.info(
                "webhook {event_id} to site {site} failed (attempt {attempts}: {reason}); "
                "retrying in {wait}s",
                event_id=event.event_id,
                site=event.public_id,
                attempts=attempts,
                reason=reason,
                wait=wait,
            )


def treq_poster(reactor: Any, settings: PartnersSettings) -> Poster:
    """POST through treq, reaching only public addresses unless configured otherwise."""
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.http_headers import Headers

    from clickpass.openid.rp_discovery import CheckedEndpointFactory, system_resolver

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2
    factory = CheckedEndpointFactory(
        reactor,
        system_resolver(reactor),
        settings.allow_private_webhooks,
        settings.webhook_timeout,
    )
    client = HTTPClient(Agent.usingEndpointFactory(reactor, factory, pool=pool))

    async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        response = await client.post(
            url,
            data=body,
            headers=Headers({k.encode("ascii"): [v.encode("utf-8")] for k, v in headers.items()}),
            allow_redirects=False,
            timeout=settings.webhook_timeout,
        )
        seen = 0

        def collect(data: bytes) -> None:
            nonlocal seen
            seen += len(data)
            if seen > MAX_RESPONSE_BYTES:
                raise DeliveryFailed("the partner's answer is too large")

        await treq.collect(response, collect)
        return int(response.code)

    return post


def delivery_service(
    reactor: Any,
    settings: Any,
    storage: Storage,
    master_secret: bytes,
    metrics: Registry | None = None,
) -> WebhookDelivery:
    """The node's webhook delivery service, for C{Node} to add to its tree."""
    partners: PartnersSettings = settings.partners
    delivery = WebhookDelivery(
        reactor,
        storage,
        partners,
        master_secret,
        treq_poster(reactor, partners),
        f"{settings.node.name}-{secrets.token_hex(4)}"[:64],
    )
    if metrics is not None:
        delivery.depth = metrics.gauge(
            "clickpass_webhook_outbox_depth",
            "Partner webhook events waiting to be delivered.",
            aggregate="max",
        )
    return delivery

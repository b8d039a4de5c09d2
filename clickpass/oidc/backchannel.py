"""
Back-Channel Logout 1.0: when a Clickpass session ends, every client with
a back-channel logout URI that the session signed into gets a signed
logout token, POSTed to that URI from the node, durably.

How a session's end is noticed: when a client with a back-channel logout
URI is given a code, the session (its token's hash), the client, the
session id (C{sid}) and the person's subject there are recorded (table
C{oidc_session_clients}). A session ends by its row in C{sessions} going
away, whichever way (signing out, RP-initiated logout, "sign out
everywhere else", a password reset, the account deleted) or by expiring;
the delivery service looks for recorded sessions whose row is gone or
expired and turns each into a logout in the outbox (table
C{oidc_logouts}), in one transaction that deletes the record first, so
two nodes looking at once queue it once. Nothing outside this package has
to remember to call it.

The outbox is emptied like the partner webhook outbox
(L{clickpass.partners.webhooks}), with its settings (C{[partners]}
C{webhook_*}, C{allow_private_webhooks}): a logout is leased in the
database before it is sent, to the node (one delivery across nodes; the
node takes its own leased logouts again at its next look, after a claim
whose COMMIT a database failover cut off), marked delivered only after a
2xx answer (a mark no writable primary takes is kept and tried again
while the node holds the lease, before it sends anything new; a logout
is sent again only when that lease ran out first, or the node restarted
or died before the mark), and a failure pushes back every pending logout
of that client with an exponential backoff, until the give-up age. Each
attempt is a new token (its own C{jti}, C{iat} and C{exp}).

This module must never block the reactor, never put a C{nonce} in a
logout token, and never send to a non-public address unless configured.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.monitor.metrics import Gauge, Registry
from clickpass.partners.settings import PartnersSettings
from clickpass.partners.webhooks import LEASE_MARGIN, Poster, treq_poster
from clickpass.storage.outbox import Backoff, LeasedOutboxService, claim_rows, release_rows
from clickpass.storage.sql import Storage, Transaction, one_line

EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TYP = "logout+jwt"
# A logout token is good for two minutes: long enough for a slow receiver,
# short enough that a captured one is soon worthless.
LOGOUT_TOKEN_LIFETIME = 120
# Sessions found ended per look; the rest wait for the next look.
SWEEP_BATCH = 500
CLEANUP_INTERVAL = 3600
PENDING, DELIVERED, GIVEN_UP = 0, 1, 2


class Signer(Protocol):
    """Signs claims with the provider's current key (L{clickpass.oidc.keys.SigningKeys})."""

    async def sign(
        self, claims: Mapping[str, Any], alg: str = "RS256", typ: str | None = None
    ) -> str: ...


def session_sid(key: bytes, session_token_hash: str) -> str:
    """
    The OpenID Connect session id of the Clickpass session whose token
    hashes to C{session_token_hash}: the same for every client the session
    signs into, and telling nothing about the session's token.
    """
    mac = hmac.new(key, session_token_hash.encode("ascii"), hashlib.sha256)
    return mac.hexdigest()[:32]


def logout_claims(
    issuer: str, client_id: str, subject: str, sid: str, now: int, jti: str
) -> dict[str, Any]:
    """A logout token's claims (Back-Channel Logout 1.0 2.4): never a C{nonce}."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": client_id,
        "iat": now,
        "exp": now + LOGOUT_TOKEN_LIFETIME,
        "jti": jti,
        "events": {EVENT: {}},
        "sub": subject,
    }
    if sid:
        claims["sid"] = sid
    return claims


# ---------------------------------------------------------------------------
# Transactions.
# ---------------------------------------------------------------------------


def record_session(
    tx: Transaction, token_hash: str, client_id: str, sid: str, subject: str, now: int
) -> None:
    """Remember that the session C{token_hash} signed into C{client_id} (once)."""
    tx.execute(
        tx.dialect.insert_ignore() + " INTO oidc_session_clients "
        "(token_hash, client_id, sid, subject, created) VALUES (?, ?, ?, ?, ?)",
        token_hash,
        client_id,
        sid,
        subject,
        now,
    )


def queue_ended_sessions(tx: Transaction, now: int, limit: int = SWEEP_BATCH) -> int:
    """
    Queue a logout for each recorded session that has ended (its row gone,
    or expired); return how many were queued. The record is deleted first:
    of two nodes doing this at once, only the one whose delete counted
    queues the logout.
    """
    rows = tx.fetchall(
        "SELECT r.token_hash, r.client_id, r.sid, r.subject FROM oidc_session_clients r "
        "LEFT JOIN sessions s ON s.token_hash = r.token_hash "
        "WHERE s.token_hash IS NULL OR s.expires <= ? ORDER BY r.created LIMIT ?",
        now,
        limit,
    )
    queued = 0
    for token_hash, client_id, sid, subject in rows:
        if tx.execute(
            "DELETE FROM oidc_session_clients WHERE token_hash = ? AND client_id = ?",
            token_hash,
            client_id,
        ):
            tx.execute(
                "INSERT INTO oidc_logouts (client_id, sid, subject, created, next_attempt) "
                "VALUES (?, ?, ?, ?, ?)",
                client_id,
                sid,
                subject,
                now,
                now,
            )
            queued += 1
    return queued


@dataclass(frozen=True)
class PendingLogout:
    """A logout claimed for delivery, with where and how to sign it."""

    row_id: int
    client_id: str
    sid: str
    subject: str
    created: int
    attempts: int
    url: str
    alg: str


def waiting(tx: Transaction) -> int:
    """How many logouts wait to be delivered (the outbox depth)."""
    return int(tx.scalar("SELECT COUNT(*) FROM oidc_logouts WHERE state = ?", PENDING) or 0)


def claim(tx: Transaction, now: int, lease: int, limit: int, owner: str) -> list[PendingLogout]:
    """
    Lease the due logouts of clients that still have a back-channel logout
    URI to C{owner}: those whose lease ran out, and those still leased to
    C{owner} itself (L{claim_rows}' C{own_again}).
    """
    rows = claim_rows(
        tx,
        "oidc_logouts",
        "SELECT l.id, l.client_id, l.sid, l.subject, l.created, l.attempts, "
        "c.backchannel_logout_uri, c.id_token_alg FROM oidc_logouts l "
        "JOIN oidc_clients c ON c.client_id = l.client_id "
        "WHERE l.state = ? AND l.next_attempt <= ? "
        "AND (l.lease_until <= ? OR l.lease_owner = ?) ORDER BY l.id LIMIT ?",
        (PENDING, now, now, owner, limit),
        now,
        lease,
        pending=PENDING,
        owner=owner,
        own_again=True,
        # The query joins the client's row: locking would hold it too.
        lock=False,
    )
    return [
        PendingLogout(
            int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5]),
            str(r[6] or ""), str(r[7]),
        )
        for r in rows
    ]  # fmt: skip


def mark_delivered(tx: Transaction, row_id: int, now: int) -> None:
    tx.execute(
        "UPDATE oidc_logouts SET state = ?, delivered = ?, attempts = attempts + 1, "
        "lease_until = 0, last_error = '' WHERE id = ?",
        DELIVERED,
        now,
        row_id,
    )


def mark_failed(
    tx: Transaction,
    logout: PendingLogout,
    error: str,
    now: int,
    retry_at: int,
    give_up: bool,
    owner: str,
) -> None:
    tx.execute(
        "UPDATE oidc_logouts SET state = ?, attempts = attempts + 1, next_attempt = ?, "
        "lease_until = 0, lease_owner = '', last_error = ? WHERE id = ?",
        GIVEN_UP if give_up else PENDING,
        retry_at,
        error[:255],
        logout.row_id,
    )
    # The receiver is down, not the logout: hold back the client's others
    # too, but not one another node holds a live lease on (it may be
    # sending it now: cleared, a third node could send it again).
    tx.execute(
        "UPDATE oidc_logouts SET next_attempt = ?, lease_until = 0, lease_owner = '' "
        "WHERE client_id = ? AND state = ? AND next_attempt < ? "
        "AND (lease_until <= ? OR lease_owner = ?)",
        retry_at,
        logout.client_id,
        PENDING,
        retry_at,
        now,
        owner,
    )


def release(tx: Transaction, row_ids: list[int], owner: str) -> None:
    release_rows(tx, "oidc_logouts", row_ids, pending=PENDING, owner=owner)


def cleanup(tx: Transaction, before: int) -> int:
    """
    Forget logouts delivered or given up before C{before}, and what waits
    for a client that was removed or no longer takes logouts.
    """
    removed = tx.execute(
        "DELETE FROM oidc_logouts WHERE state <> ? AND created < ?", PENDING, before
    )
    gone = (
        "client_id NOT IN (SELECT client_id FROM oidc_clients "
        "WHERE backchannel_logout_uri IS NOT NULL AND backchannel_logout_uri <> '')"
    )
    removed += tx.execute(f"DELETE FROM oidc_logouts WHERE state = ? AND {gone}", PENDING)
    removed += tx.execute(f"DELETE FROM oidc_session_clients WHERE {gone}")
    return removed


@dataclass(frozen=True)
class LogoutRecord:
    """A logout in the outbox, for operators (no token: it is made at each attempt)."""

    client_id: str
    sid: str
    created: int
    state: str
    attempts: int
    next_attempt: int
    delivered: int
    last_error: str

    def describe(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "sid": self.sid,
            "created": self.created,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "delivered": self.delivered,
            "last_error": self.last_error,
        }


def recent_logouts(tx: Transaction, client_id: str | None, limit: int = 50) -> list[LogoutRecord]:
    """The newest logouts in the outbox (of C{client_id}, or of every client)."""
    where, args = ("WHERE client_id = ?", [client_id]) if client_id else ("", [])
    rows = tx.fetchall(
        "SELECT client_id, sid, created, state, attempts, next_attempt, delivered, last_error "
        f"FROM oidc_logouts {where} ORDER BY id DESC LIMIT ?",
        *args,
        limit,
    )
    names = {PENDING: "pending", DELIVERED: "delivered", GIVEN_UP: "given up"}
    return [
        LogoutRecord(
            str(r[0]), str(r[1]), int(r[2]), names.get(int(r[3]), "?"), int(r[4]), int(r[5]),
            int(r[6]), str(r[7]),
        )
        for r in rows
    ]  # fmt: skip


# ---------------------------------------------------------------------------
# The node's delivery service.
# ---------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """The client's back-channel logout URI did not take the logout token."""


class BackchannelDelivery(LeasedOutboxService):
    """Turns ended sessions into logouts and empties the logout outbox."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        storage: Storage,
        settings: PartnersSettings,
        signer: Signer,
        issuer: str,
        post: Poster,
        owner: str | None = None,
    ) -> None:
        super().__init__("oidc-backchannel-logout", clock, settings.webhook_poll_interval)
        # Whose leases are this service's: unique to the process.
        self.owner = owner or f"logouts-{secrets.token_hex(4)}"
        self._storage = storage
        self._settings = settings
        self._signer = signer
        self._issuer = issuer
        self._post = post
        self._backoff = Backoff(settings.webhook_backoff_initial, settings.webhook_backoff_max)
        self.delivered = 0
        self.depth: Gauge | None = None

    def round_failed(self, failure: Failure) -> None:
        self.log.failure("back-channel logout round failed", failure)

    async def clean(self, now: int) -> None:
        removed = await self._storage.run(cleanup, now - self._settings.delivered_retention)
        if removed:
            self.log.info("logout outbox: removed {count} old rows", count=removed)

    async def deliver_due(self, now: int) -> int:
        """Queue the ended sessions' logouts, deliver what is due; how many went."""
        queued = await self._storage.run(queue_ended_sessions, now)
        if queued:
            self.log.info("logout outbox: {count} logouts queued", count=queued)
        if self.depth is not None:
            self.depth.set(await self._storage.run(waiting))
        lease = int(self._settings.webhook_timeout * 3) + LEASE_MARGIN
        due = await self._storage.run(claim, now, lease, self._settings.webhook_batch, self.owner)
        if not due:
            return 0
        sent = await self.deliver_in_order(
            due,
            lambda logout: logout.client_id,
            now + lease,
            self._settings.webhook_timeout + LEASE_MARGIN,
            self._deliver,
            lambda logout: self._record_delivered(logout, now + lease),
            self._record_failure,
            self._release,
            "back-channel logout to one client failed",
        )
        self.delivered += sent
        return sent

    async def _record_delivered(self, logout: PendingLogout, lease_ends: int) -> None:
        delivered_at = int(self._clock.seconds())
        await self.record_delivery(
            logout.row_id,
            lease_ends,
            lambda: self._storage.run(mark_delivered, logout.row_id, delivered_at),
            f"logout token to {logout.client_id}",
        )
        self.log.info(
            "logout token delivered to {client} (attempt {attempts})",
            client=logout.client_id,
            attempts=logout.attempts + 1,
        )

    async def _release(self, logouts: list[PendingLogout]) -> None:
        await self._storage.run(release, [later.row_id for later in logouts], self.owner)

    async def _deliver(self, logout: PendingLogout) -> None:
        if not logout.url:
            raise DeliveryFailed("the client has no back-channel logout URI")
        now = int(self._clock.seconds())
        claims = logout_claims(
            self._issuer, logout.client_id, logout.subject, logout.sid, now,
            secrets.token_urlsafe(16),
        )  # fmt: skip
        token = await self._signer.sign(claims, logout.alg, typ=LOGOUT_TYP)
        body = urlencode({"logout_token": token}).encode("ascii")
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "clickpass-backchannel-logout",
            "Cache-Control": "no-store",
        }
        status = await self._post(logout.url, body, headers)
        if not 200 <= status < 300:
            raise DeliveryFailed(f"{logout.url} answered HTTP {status}")

    async def _record_failure(self, logout: PendingLogout, error: Exception) -> None:
        now = int(self._clock.seconds())
        attempts = logout.attempts + 1
        wait = self._backoff.wait(attempts)
        retry = self._backoff.after_failure(
            now, attempts, logout.created + self._settings.webhook_give_up_after
        )
        give_up = retry.give_up
        reason = one_line(error)
        await self._storage.run(mark_failed, logout, reason, now, retry.at, give_up, self.owner)
        if give_up:
            self.log.warn(
                "logout token to {client} given up after {attempts} attempts: {reason}",
                client=logout.client_id,
                attempts=attempts,
                reason=reason,
            )
        else:
            self.log.info(
                "logout token to {client} failed (attempt {attempts}: {reason}); "
                "retrying in {wait}s",
                client=logout.client_id,
                attempts=attempts,
                reason=reason,
                wait=wait,
            )


def delivery_service(
    reactor: Any, settings: Any, storage: Storage, signer: Signer, metrics: Registry | None = None
) -> BackchannelDelivery:
    """The node's back-channel logout service, for C{Node} to add to its tree."""
    partners: PartnersSettings = settings.partners
    # The issuer, as clickpass.oidc.web.issuer_of makes it: the public URL
    # without its trailing slash.
    issuer = str(settings.base_url).rstrip("/")
    delivery = BackchannelDelivery(
        reactor,
        storage,
        partners,
        signer,
        issuer,
        treq_poster(reactor, partners),
        f"{settings.node.name}-{secrets.token_hex(4)}"[:64],
    )
    if metrics is not None:
        delivery.depth = metrics.gauge(
            "clickpass_oidc_logout_outbox_depth",
            "OpenID Connect back-channel logout tokens waiting to be delivered.",
            aggregate="max",
        )
    return delivery

"""
Mail delivery: the node's service that empties the mail outbox
(L{clickpass.mail.outbox}) through a transport (SMTP, or the maildir of
the embedded default), and the node's C{mail.*} control commands, metrics
and alert.

At least once, and once in practice: a message is leased before it is
sent, for longer than one attempt may take (an attempt that runs out of
time is cut off), so two nodes never send it at the same time; it is
marked sent as soon as the server took it, through a database failover
if need be; when no writable primary takes that mark for longer than
C{[database] failover_wait}, the node keeps it in memory and tries it
again while it still holds the message's lease, and sends nothing new
until it went (L{LeasedOutboxService.record_delivery}). Only a node that
dies or restarts between the server's answer and that mark (or whose
mark no database took until the lease ran out), or an attempt cut off at
its timeout while the server's answer to the data was on its way, sends
a message twice, with the same Message-ID.
A failed attempt is tried again after an exponential backoff, until the
message's give-up time; a permanent refusal (5xx to MAIL, RCPT or DATA)
gives up at once.

This module must never block the reactor (the database through the
storage, the network through the transport) and never lose a message:
one that cannot be sent stays in the outbox, given up, for an operator's
C{clickpass-ctl mail retry ID}.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.mail import outbox
from clickpass.mail.message import envelope_sender, public_host
from clickpass.mail.settings import MailSettings
from clickpass.mail.transport import Envelope, PermanentFailure, Transport
from clickpass.monitor.metrics import Registry
from clickpass.storage.outbox import Backoff, LeasedOutboxService
from clickpass.storage.sql import Storage, one_line, run_through_failover
from clickpass.tls import load_trust_root

if TYPE_CHECKING:
    from clickpass.config import Settings

ALERT_KEY = "mail.delayed"
STATUS_LIMIT = 20


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the C{attempts}-th failed attempt (1, 2, ...): doubling, capped."""
    return Backoff(initial, maximum).wait(attempts)


def next_attempt(now: int, attempts: int, settings: MailSettings) -> int:
    """When to try again after the C{attempts}-th failure (whole seconds, never sooner)."""
    return Backoff(settings.backoff_initial, settings.backoff_max, minimum=1).retry_at(
        now, attempts
    )


def lease_seconds(settings: MailSettings) -> int:
    """
    How long a node holds the messages it claimed: a batch is sent
    C{parallel} at a time, each attempt cut off at C{timeout}, so the last
    message of a batch may start C{ceil(batch / parallel) - 1} timeouts
    after the claim. The lease outlives all of that (and recording the
    outcome through a database failover), so no other node takes a message
    this one may still send.
    """
    rounds = -(-settings.batch // settings.parallel)
    return int(settings.timeout * (rounds + 1)) + 20


class AlertSink(Protocol):
    """What the delivery service needs of the node's alerts."""

    def raise_(self, key: str, summary: str, details: dict[str, Any] | None = None) -> None: ...

    def resolve(self, key: str) -> None: ...


class Counts:
    """What this node's delivery did, for the metrics."""

    def __init__(self) -> None:
        self.sent = 0
        self.retried = 0
        self.given_up = 0
        self.queued = 0
        self.oldest_age = 0.0


class MailDelivery(LeasedOutboxService):
    """Empties the mail outbox: look, send, look again."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        storage: Storage,
        settings: MailSettings,
        transport: Transport,
        sender: str,
        owner: str,
        alerts: AlertSink | None = None,
    ) -> None:
        super().__init__("mail", clock, settings.poll_interval)
        self._storage = storage
        self._settings = settings
        self.transport = transport
        self._sender = sender
        self.owner = owner
        self._alerts = alerts
        self._limit = DeferredSemaphore(settings.parallel)
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max, minimum=1)
        self.counts = Counts()

    def startService(self) -> None:
        self.log.info(
            "mail delivery: {transport}; outbox checked every {interval}s",
            transport=self.transport.describe(),
            interval=self._settings.poll_interval,
        )
        super().startService()

    def look_again_now(self, done: int) -> bool:
        # A full batch was taken: there may be more due right now.
        return done >= self._settings.batch

    def round_failed(self, failure: Failure) -> None:
        self.log.warn(
            "mail delivery round failed ({error}); trying again in {delay}s",
            error=one_line(cast(BaseException, failure.value)),
            delay=self._settings.poll_interval,
        )

    # One round.

    async def clean(self, now: int) -> None:
        removed = await self._storage.run(outbox.cleanup, now - self._settings.retention)
        if removed:
            self.log.info("mail outbox: removed {count} old messages", count=removed)

    async def deliver_due(self, now: int) -> int:
        """Claim what is due, send it; the number of messages claimed."""
        await self._watch(now)
        lease = lease_seconds(self._settings)
        claimed = await self._storage.run(
            outbox.claim, now, lease, self._settings.batch, self.owner
        )
        if not claimed:
            return 0
        results = await DeferredList(
            [self._limit.run(self._attempt, message, now + lease) for message in claimed],
            consumeErrors=True,
        )
        for ok, value in results:
            if not ok:
                self.log.failure("mail delivery of one message failed", value)
        return len(claimed)

    async def _watch(self, now: int) -> None:
        found = await self._storage.run(outbox.depth)
        self.counts.queued = found.queued
        age = 0 if found.oldest_created is None else max(0, now - found.oldest_created)
        self.counts.oldest_age = float(age)
        if self._alerts is None:
            return
        if age > self._settings.alert_after:
            self._alerts.raise_(
                ALERT_KEY,
                f"{found.queued} messages wait to be sent; the oldest for {age}s",
                {"queued": found.queued, "oldest_seconds": age},
            )
        else:
            self._alerts.resolve(ALERT_KEY)

    def _attempt(self, message: outbox.Queued, lease_ends: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._send(message, lease_ends))

    async def _send(self, message: outbox.Queued, lease_ends: int) -> None:
        if self.stopping:
            # Stopping: what has not started yet goes back for the next node
            # (or this one, restarted) instead of holding up the stop.
            await self._storage.run(outbox.release, [message.row_id], self.owner)
            return
        envelope = Envelope(
            self._sender,
            message.recipient,
            message.message.encode("ascii"),
            message.message_id,
        )
        try:
            await self.transport.send(envelope)
        except Exception as e:
            await self._failed(message, e)
            return
        # Sent: record it even through a database failover, so that no
        # other node sends it again (marking sent twice is harmless); while
        # the lease holds if need be.
        sent_at = int(self._clock.seconds())
        await self.record_delivery(
            message.row_id,
            lease_ends,
            lambda: Deferred.fromCoroutine(
                run_through_failover(
                    self._clock,
                    self._storage,
                    outbox.mark_sent,
                    message.row_id,
                    sent_at,
                    idempotent=True,
                )
            ),
            f"mail {message.row_id}",
        )
        self.counts.sent += 1
        self.log.info(
            "mail {id} ({kind}) sent to {to} after {attempts} attempts",
            id=message.row_id,
            kind=message.kind,
            to=message.recipient,
            attempts=message.attempts + 1,
        )

    async def _failed(self, message: outbox.Queued, error: Exception) -> None:
        now = int(self._clock.seconds())
        attempts = message.attempts + 1
        reason = one_line(error)
        # The last try comes at the give-up time itself, not a backoff before it.
        retry = self._backoff.after_failure(
            now, attempts, message.give_up_at, last_try_at_give_up=True
        )
        retry_at = retry.at
        give_up = isinstance(error, PermanentFailure) or retry.give_up
        await run_through_failover(
            self._clock,
            self._storage,
            outbox.mark_failed,
            message.row_id,
            self.owner,
            reason,
            retry_at,
            give_up,
            idempotent=True,
        )
        if give_up:
            self.counts.given_up += 1
            self.log.warn(
                "mail {id} ({kind}) to {to} given up after {attempts} attempts: {reason} "
                "(clickpass-ctl mail retry {id} queues it again)",
                id=message.row_id,
                kind=message.kind,
                to=message.recipient,
                attempts=attempts,
                reason=reason,
            )
        else:
            self.counts.retried += 1
            self.log.info(
                "mail {id} to {to} not sent (attempt {attempts}: {reason}); retrying in {wait}s",
                id=message.row_id,
                to=message.recipient,
                attempts=attempts,
                reason=reason,
                wait=retry_at - now,
            )


def build_transport(reactor: Any, settings: Settings) -> Transport:
    """
    The transport C{[mail]} configures: SMTP when smtp_host is set, else the
    maildir under the data directory. Reads the password and CA files
    (L{clickpass.config.ConfigError} naming the key when they cannot be used).
    """
    from clickpass.config import ConfigError, read_secret_file
    from clickpass.mail.transport import MaildirTransport, SMTPTransport

    mail: MailSettings = settings.mail
    if not mail.smtp_host:
        return MaildirTransport(reactor, settings.data_path(mail.maildir))
    password = ""
    if mail.password_file:
        password = read_secret_file(settings.data_path(mail.password_file), "[mail] password_file")
    trust = None
    if mail.ca_bundle and mail.verify_certificate:
        try:
            trust = load_trust_root(settings.data_path(mail.ca_bundle))
        except (OSError, ValueError) as e:
            raise ConfigError(f"[mail] ca_bundle: {e}") from None
    return SMTPTransport(
        reactor,
        mail,
        password=password,
        trust=trust,
        helo=mail.helo_name or public_host(settings.base_url),
    )


def install_mail(
    parent: IServiceCollection,
    reactor: Any,
    settings: Settings,
    storage: Storage,
    commands: CommandRegistry,
    metrics: Registry | None = None,
    alerts: AlertSink | None = None,
    transport: Transport | None = None,
) -> MailDelivery:
    """
    Build the node's mail delivery under C{parent}, with its C{mail.*}
    control commands and its metrics (C{metrics}: a
    L{clickpass.monitor.metrics.Registry}).
    """
    mail: MailSettings = settings.mail
    delivery = MailDelivery(
        reactor,
        storage,
        mail,
        transport or build_transport(reactor, settings),
        envelope_sender(mail, settings.base_url),
        f"{settings.node.name}-{secrets.token_hex(4)}"[:64],
        alerts,
    )
    if metrics is not None:
        _install_metrics(metrics, delivery.counts)
    from clickpass.mail.outbox import Outbox

    register_commands(
        commands, reactor, storage, mail, Outbox(mail, settings.base_url), delivery, settings
    )
    delivery.setServiceParent(parent)
    return delivery


def _install_metrics(metrics: Registry, counts: Counts) -> None:
    def gauge(name: str, help: str, read: Callable[[], float]) -> None:
        metrics.gauge(name, help, aggregate="max").set_function(read)

    def counter(name: str, help: str, read: Callable[[], float]) -> None:
        metrics.counter(name, help).set_function(lambda: {(): read()})

    gauge(
        "clickpass_mail_queued",
        "Messages in the mail outbox waiting to be sent (all nodes).",
        lambda: counts.queued,
    )
    gauge(
        "clickpass_mail_oldest_unsent_seconds",
        "Age of the oldest message waiting to be sent.",
        lambda: counts.oldest_age,
    )
    counter("clickpass_mail_sent_total", "Messages this node sent.", lambda: counts.sent)
    counter(
        "clickpass_mail_failed_total",
        "Messages this node gave up on (refused for good, or too old).",
        lambda: counts.given_up,
    )
    counter(
        "clickpass_mail_retries_total",
        "Failed attempts this node will try again.",
        lambda: counts.retried,
    )


def register_commands(
    commands: CommandRegistry,
    clock: IReactorTime,
    storage: Storage,
    mail: MailSettings,
    queue: outbox.Outbox,
    delivery: MailDelivery,
    settings: Settings,
) -> None:
    """C{mail.status}, C{mail.show}, C{mail.retry}, C{mail.test} on the control port."""

    def message_id(args: Any) -> int:
        value = args.get("id")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CommandError("needs the message's id (a positive integer)")
        return value

    async def status(args: Any) -> dict[str, Any]:
        found = await storage.run(outbox.status, STATUS_LIMIT)
        now = int(clock.seconds())
        oldest = found.pop("oldest_unsent_created")
        return {
            "transport": delivery.transport.describe(),
            "now": now,
            "oldest_unsent_seconds": None if oldest is None else max(0, now - oldest),
            "alert_after": mail.alert_after,
            **found,
        }

    async def show(args: Any) -> dict[str, Any]:
        row_id = message_id(args)
        found = await storage.run(outbox.show, row_id)
        if found is None:
            raise CommandError(f"no message {row_id} in the outbox")
        return found

    async def retry(args: Any) -> dict[str, Any]:
        row_id = message_id(args)
        refusal = await storage.run(
            outbox.requeue, row_id, int(clock.seconds()), mail.give_up_after
        )
        if refusal is not None:
            raise CommandError(refusal)
        return {"queued": row_id}

    async def test(args: Any) -> dict[str, Any]:
        from clickpass.mail.message import MessageError

        to = args.get("to")
        if not isinstance(to, str):
            raise CommandError("mail.test needs the address to send to")

        def enqueue(tx: Any) -> int:
            return queue.enqueue(
                tx,
                to,
                "Clickpass test message",
                "test",
                {"node": settings.node.name},
                now=int(clock.seconds()),
            )

        try:
            row_id = await storage.run(enqueue)
        except MessageError as e:
            raise CommandError(str(e)) from None
        return {"queued": row_id, "to": to, "transport": delivery.transport.describe()}

    commands.register("mail.status", status, "the mail outbox: counts, oldest, unsent messages")
    commands.register("mail.show", show, "one message of the mail outbox")
    commands.register("mail.retry", retry, "queue a given-up message again")
    commands.register("mail.test", test, "queue a test message to an address")


__all__ = [
    "ALERT_KEY",
    "MailDelivery",
    "backoff",
    "build_transport",
    "install_mail",
    "lease_seconds",
    "next_attempt",
]

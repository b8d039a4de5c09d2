"""
Alerts: the one place every subsystem reports trouble, and the channels
that wake a person up (signed JSON webhooks, email over SMTP).

Other subsystems call::

    alerts.raise_("backup.stale", "no backup for 27 hours", {"last": "..."})
    alerts.resolve("backup.stale")

Keys are short dotted names (C{failover.happened}, C{semisync.degraded},
C{db.quarantined}, C{workers.crash_loop}, C{backup.failed},
C{backup.stale}, C{probe.down}); raising a key that is already firing
only counts the repeat. Notifications are gathered for C{group_wait}
seconds and sent as one batch, so a burst of trouble is one message, not
fifty. A key still firing is repeated every C{repeat_interval} seconds with
its count; a resolved key is announced as a recovery. A key raised and
resolved within one gathering window is never announced at all.

Delivery failures are retried a few times and then logged; they never
raise into the caller and never stop the node. This module must never
block the reactor (HTTP through treq, SMTP through twisted.mail) and never
put a secret into a notification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from io import BytesIO
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from clickpass import config as configmod

SIGNATURE_HEADER = b"X-Clickpass-Signature"
TIMESTAMP_HEADER = b"X-Clickpass-Timestamp"
RETRY_DELAYS = (5.0, 30.0, 120.0)


@dataclass
class Alert:
    """One key that is firing."""

    key: str
    summary: str
    details: dict[str, Any]
    since: float
    last_raised: float
    count: int = 1
    notified_at: float | None = None


@dataclass(frozen=True)
class Event:
    """One line of a notification: a key that started firing, is still firing, or recovered."""

    key: str
    status: str  # "firing", "repeat" or "resolved"
    summary: str
    details: dict[str, Any]
    since: float
    count: int
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.status,
            "summary": self.summary,
            "details": self.details,
            "since": self.since,
            "count": self.count,
            "at": self.at,
        }


@dataclass(frozen=True)
class Batch:
    """One notification: what changed, and everything still firing."""

    node: str
    sent_at: float
    events: tuple[Event, ...]
    firing: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": "clickpass",
            "node": self.node,
            "sent_at": self.sent_at,
            "events": [e.to_json() for e in self.events],
            "firing": list(self.firing),
        }

    @property
    def subject(self) -> str:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.status] = counts.get(event.status, 0) + 1
        if len(self.events) == 1:
            (event,) = self.events
            word = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}
            return f"[clickpass {self.node}] {word[event.status]} {event.key}: {event.summary}"
        parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        return f"[clickpass {self.node}] {parts}"

    def text(self) -> str:
        lines = [self.subject, ""]
        for event in self.events:
            lines.append(f"{event.status.upper():9} {event.key}: {event.summary}")
            if event.count > 1:
                lines.append(f"          raised {event.count} times")
            for name, value in sorted(event.details.items()):
                lines.append(f"          {name}: {value}")
        lines.append("")
        lines.append("Still firing: " + (", ".join(self.firing) or "nothing"))
        return "\n".join(lines) + "\n"


class Channel(Protocol):
    """A way to deliver a batch; the Deferred fails when delivery failed."""

    name: str

    def send(self, batch: Batch) -> Deferred[None]: ...


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The webhook signature: HMAC-SHA256 over C{timestamp + "." + body}, hex."""
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, header: str, now: float, tolerance: float = 300
) -> bool:
    """For receivers: the signature matches and the timestamp is recent."""
    try:
        sent = float(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(header[len("sha256=") :], signature(secret, timestamp, body))


class WebhookChannel:
    """POST the batch as JSON, signed with HMAC-SHA256 (see L{signature})."""

    def __init__(self, reactor: Any, url: str, secret: bytes, timeout: float) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.name = f"webhook {url}"
        self._reactor = reactor
        self._url = url
        self._secret = secret
        self._timeout = timeout
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = HTTPClient(Agent(reactor, pool=pool))

    async def _send(self, batch: Batch) -> None:
        from treq import content
        from twisted.web.http_headers import Headers

        body = json.dumps(batch.to_json(), sort_keys=True).encode("utf-8")
        timestamp = f"{self._reactor.seconds():.0f}"
        response = await self._http.post(
            self._url,
            data=body,
            headers=Headers(
                {
                    b"Content-Type": [b"application/json"],
                    TIMESTAMP_HEADER: [timestamp.encode("ascii")],
                    SIGNATURE_HEADER: [
                        b"sha256=" + signature(self._secret, timestamp, body).encode("ascii")
                    ],
                    b"User-Agent": [b"clickpass-alerts"],
                }
            ),
            reactor=self._reactor,
            timeout=self._timeout,
        )
        await content(response)
        if not 200 <= response.code < 300:
            raise DeliveryFailed(f"{self._url} answered HTTP {response.code}")

    def send(self, batch: Batch) -> Deferred[None]:
        return Deferred.fromCoroutine(self._send(batch))


class DeliveryFailed(Exception):
    """A channel could not deliver; the message says why, in one line."""


class EmailChannel:
    """Send the batch as a plain-text email through an SMTP server (twisted.mail)."""

    def __init__(
        self,
        reactor: Any,
        *,
        host: str,
        port: int,
        mail_from: str,
        mail_to: Sequence[str],
        username: str = "",
        password: str = "",
        require_tls: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.name = f"email via {host}:{port}"
        self._reactor = reactor
        self._host = host
        self._port = port
        self._from = mail_from
        self._to = list(mail_to)
        self._username = username
        self._password = password
        self._require_tls = require_tls
        self._timeout = timeout

    def message(self, batch: Batch) -> bytes:
        message = EmailMessage()
        message["Subject"] = batch.subject
        message["From"] = self._from
        message["To"] = ", ".join(self._to)
        message["Date"] = formatdate(batch.sent_at, localtime=False)
        message["Message-ID"] = make_msgid("clickpass-alert")
        message["X-Clickpass-Node"] = batch.node
        message.set_content(batch.text())
        return message.as_bytes()

    def send(self, batch: Batch) -> Deferred[None]:
        from twisted.mail.smtp import sendmail

        d: Deferred[Any] = sendmail(
            self._host,
            self._from,
            self._to,
            BytesIO(self.message(batch)),
            port=self._port,
            reactor=self._reactor,
            username=self._username.encode("utf-8") if self._username else None,
            password=self._password.encode("utf-8") if self._password else None,
            requireAuthentication=bool(self._username),
            requireTransportSecurity=self._require_tls,
        )
        d.addTimeout(self._timeout, self._reactor)
        return d.addCallback(lambda _: None)


def channels_from_settings(reactor: Any, settings: configmod.Settings) -> list[Channel]:
    """The channels the [alerts] section configures (L{configmod.ConfigError} if unreadable)."""
    alerts = settings.alerts
    channels: list[Channel] = []
    if alerts.webhook_urls:
        secret = configmod.read_secret_file(
            settings.data_path(alerts.webhook_secret_file), "[alerts] webhook_secret_file"
        ).encode("utf-8")
        channels += [
            WebhookChannel(reactor, url, secret, alerts.timeout) for url in alerts.webhook_urls
        ]
    if alerts.smtp_host:
        password = ""
        if alerts.smtp_password_file:
            password = configmod.read_secret_file(
                settings.data_path(alerts.smtp_password_file), "[alerts] smtp_password_file"
            )
        channels.append(
            EmailChannel(
                reactor,
                host=alerts.smtp_host,
                port=alerts.smtp_port,
                mail_from=alerts.mail_from,
                mail_to=alerts.mail_to,
                username=alerts.smtp_user,
                password=password,
                require_tls=alerts.smtp_starttls,
                timeout=alerts.timeout,
            )
        )
    return channels


@dataclass
class _Pending:
    events: list[Event] = field(default_factory=list)
    call: IDelayedCall | None = None


class Alerts(Service):
    """
    The node's alerts. L{raise_} and L{resolve} may be called at any time,
    from the reactor thread; delivery happens in the background.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        node: str,
        channels: Sequence[Channel],
        group_wait: float = 10.0,
        repeat_interval: float = 4 * 3600.0,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.setName("alerts")
        self._clock = clock
        self.node = node
        self.channels = list(channels)
        self.group_wait = group_wait
        self.repeat_interval = repeat_interval
        self.retry_delays = tuple(retry_delays)
        self.active: dict[str, Alert] = {}
        self.sent: list[Batch] = []
        self._pending = _Pending()
        self._reminders: LoopingCall | None = None
        self._deliveries: set[Deferred[Any]] = set()

    @classmethod
    def from_settings(cls, reactor: Any, settings: configmod.Settings) -> Alerts:
        alerts = settings.alerts
        return cls(
            reactor,
            settings.node.name,
            channels_from_settings(reactor, settings),
            group_wait=alerts.group_wait,
            repeat_interval=alerts.repeat_interval,
        )

    # The API other subsystems use.

    def raise_(self, key: str, summary: str, details: dict[str, Any] | None = None) -> None:
        """Report that C{key} is wrong; repeats while it is firing are counted, not re-sent."""
        now = self._clock.seconds()
        alert = self.active.get(key)
        if alert is not None:
            alert.count += 1
            alert.summary = summary
            alert.details = dict(details or {})
            alert.last_raised = now
            return
        alert = Alert(key, summary, dict(details or {}), since=now, last_raised=now)
        self.active[key] = alert
        self.log.warn("alert {key} firing: {summary}", key=key, summary=summary)
        self._queue(Event(key, "firing", summary, alert.details, now, 1, now))

    def resolve(self, key: str) -> None:
        """Report that C{key} is fine again; a recovery is announced if it was announced."""
        alert = self.active.pop(key, None)
        if alert is None:
            return
        now = self._clock.seconds()
        self.log.info(
            "alert {key} resolved after {seconds:.0f}s", key=key, seconds=now - alert.since
        )
        unsent = [e for e in self._pending.events if e.key == key and e.status == "firing"]
        if unsent and alert.notified_at is None:
            # Raised and resolved within one gathering window: nobody needs waking.
            self._pending.events = [e for e in self._pending.events if e.key != key]
            return
        self._queue(
            Event(key, "resolved", alert.summary, alert.details, alert.since, alert.count, now)
        )

    def is_firing(self, key: str) -> bool:
        return key in self.active

    def describe(self) -> list[dict[str, Any]]:
        """The firing alerts, for the control port and /readyz."""
        return [
            {
                "key": a.key,
                "summary": a.summary,
                "since": a.since,
                "count": a.count,
                "details": a.details,
            }
            for a in sorted(self.active.values(), key=lambda a: a.since)
        ]

    async def send_test(self) -> dict[str, str]:
        """
        Deliver one test notification through every channel now, without
        retries; return each channel's outcome ("ok" or the error).
        """
        now = self._clock.seconds()
        event = Event(
            "alerts.test",
            "resolved",
            "test notification from clickpass-ctl alerts test; nothing is wrong",
            {},
            now,
            1,
            now,
        )
        batch = Batch(self.node, now, (event,), tuple(sorted(self.active)))
        outcomes: dict[str, str] = {}
        for channel in self.channels:
            try:
                await channel.send(batch)
                outcomes[channel.name] = "ok"
            except Exception as e:
                outcomes[channel.name] = f"FAILED: {_one_line(e)}"
        return outcomes

    # Gathering and sending.

    def _queue(self, event: Event) -> None:
        self._pending.events.append(event)
        if self._pending.call is None and self.running:
            self._pending.call = self._clock.callLater(self.group_wait, self.flush)

    def flush(self) -> Deferred[Any]:
        """Send what is gathered now (also called by the gathering timer)."""
        pending, self._pending = self._pending, _Pending()
        if pending.call is not None and pending.call.active():
            pending.call.cancel()
        if not pending.events:
            return Deferred.fromCoroutine(_nothing())
        now = self._clock.seconds()
        for event in pending.events:
            alert = self.active.get(event.key)
            if alert is not None and event.status != "resolved":
                alert.notified_at = now
        batch = Batch(self.node, now, tuple(pending.events), tuple(sorted(self.active)))
        self.sent.append(batch)
        return self._deliver(batch)

    def _remind(self) -> None:
        now = self._clock.seconds()
        for alert in self.active.values():
            if alert.notified_at is not None and now - alert.notified_at >= self.repeat_interval:
                alert.notified_at = now
                self._queue(
                    Event(
                        alert.key,
                        "repeat",
                        alert.summary,
                        alert.details,
                        alert.since,
                        alert.count,
                        now,
                    )
                )

    def _deliver(self, batch: Batch) -> Deferred[Any]:
        if not self.channels:
            self.log.warn(
                "alert batch not delivered: no [alerts] channel configured ({subject})",
                subject=batch.subject,
            )
        deliveries = [Deferred.fromCoroutine(self._deliver_to(c, batch)) for c in self.channels]
        d: Deferred[Any] = DeferredList(deliveries, consumeErrors=True)
        self._deliveries.add(d)

        def done(result: object) -> object:
            self._deliveries.discard(d)
            return result

        d.addBoth(done)
        return d

    async def _deliver_to(self, channel: Channel, batch: Batch) -> None:
        attempt = 0
        while True:
            try:
                await channel.send(batch)
                self.log.info(
                    "alert batch delivered by {channel}: {subject}",
                    channel=channel.name,
                    subject=batch.subject,
                )
                return
            except Exception as e:
                if attempt >= len(self.retry_delays) or not self.running:
                    self.log.error(
                        "alert batch NOT delivered by {channel} after {attempts} attempts: {error}",
                        channel=channel.name,
                        attempts=attempt + 1,
                        error=_one_line(e),
                    )
                    return
                delay = self.retry_delays[attempt]
                attempt += 1
                self.log.warn(
                    "alert delivery by {channel} failed ({error}); retrying in {delay}s",
                    channel=channel.name,
                    error=_one_line(e),
                    delay=delay,
                )
                await deferLater(self._clock, delay, lambda: None)

    # Service.

    def startService(self) -> None:
        super().startService()
        self._reminders = LoopingCall(self._remind)
        self._reminders.clock = self._clock
        self._reminders.start(min(60.0, self.repeat_interval), now=False).addErrback(
            lambda f: self.log.failure("alert reminders stopped", f)
        )
        if self._pending.events and self._pending.call is None:
            self._pending.call = self._clock.callLater(self.group_wait, self.flush)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._reminders is not None and self._reminders.running:
            self._reminders.stop()
        # Whatever is gathered goes out now; wait (briefly) for deliveries in flight.
        self.flush()
        waiting: Deferred[Any] = DeferredList(list(self._deliveries), consumeErrors=True)
        waiting.addTimeout(5, self._clock)
        waiting.addErrback(lambda _: None)
        return waiting


async def _nothing() -> None:
    return None


def _one_line(e: BaseException) -> str:
    return " ".join((str(e) or type(e).__name__).split())


__all__ = [
    "Alert",
    "Alerts",
    "Batch",
    "Channel",
    "DeliveryFailed",
    "EmailChannel",
    "Event",
    "WebhookChannel",
    "channels_from_settings",
    "signature",
    "verify_signature",
]

"""
A real SMTP server for the mail tests: aiosmtpd on loopback, in its own
thread, with STARTTLS or implicit TLS (certificates from
L{tests.support.tlsca}) and AUTH when asked, recording every message it
accepts. Its C{plan} says how it answers each delivery attempt (one MAIL
command each): accept it (at once or after a pause), refuse it for good
(550 to RCPT), refuse it for now (451), hang before answering the data, or
drop the connection in the middle of the data or once the data has arrived
and before answering it.

It listens on 127.0.0.1 only and stops when its fixture ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.node import free_port
from tests.support.tlsca import TestCA

USER = "clickpass"
PASSWORD = "smtp password for tests"

# What the server does with one attempt.
ACCEPT, REFUSE, TEMPFAIL, HANG = "accept", "refuse", "tempfail", "hang"
# Drop the connection after one line of the message's data, or once all of
# it has arrived (before answering it).
MID_DATA, DROP = "mid-data", "drop"
# Accept, after a pause of SLOW_SECONDS before answering the data (a busy
# server: messages are in the middle of being sent at any moment).
SLOW = "slow"
SLOW_SECONDS = 0.3


@dataclass
class Accepted:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    tls: bool
    user: str | None


@dataclass
class Handler:
    """aiosmtpd's handler: follows the plan, records what it accepts."""

    plan: Callable[[int], str] = lambda attempt: ACCEPT
    attempts: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Called (in the server's thread) with each message taken, before the
    # client hears that it was.
    on_accept: Callable[[Accepted], None] | None = None

    def _current(self) -> str:
        with self.lock:
            return self.plan(self.attempts)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        with self.lock:
            self.attempts += 1
            self.seen.append(self.plan(self.attempts))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        what = self._current()
        if what == REFUSE:
            return "550 5.1.1 no such user here"
        if what == TEMPFAIL:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        what = self._current()
        if what == HANG:
            await asyncio.sleep(3600)
        if what == SLOW:
            await asyncio.sleep(SLOW_SECONDS)
        if what == DROP:
            transport = server.transport
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
            return "421 gone"
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        user = session.auth_data if isinstance(session.auth_data, str) else None
        # STARTTLS sets session.ssl; implicit TLS shows on the transport only.
        transport = server.transport
        implicit = transport is not None and transport.get_extra_info("ssl_object") is not None
        accepted = Accepted(
            str(envelope.mail_from),
            list(envelope.rcpt_tos),
            parsed,
            raw,
            session.ssl is not None or implicit,
            user,
        )
        with self.lock:
            self.accepted.append(accepted)
        if self.on_accept is not None:
            self.on_accept(accepted)
        return "250 2.0.0 queued"


class _SMTP(SMTP):
    """aiosmtpd's server, able to drop the connection in the middle of DATA."""

    async def smtp_DATA(self, arg: str) -> None:
        handler = self.event_handler
        assert isinstance(handler, Handler)
        if handler._current() == MID_DATA and self.envelope and self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")
            transport = self.transport
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
            return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    if not ok:
        # handled=False: aiosmtpd answers 535 itself.
        return AuthResult(success=False, handled=False)
    return AuthResult(success=True, auth_data=auth_data.login.decode())


@dataclass
class SMTPServer:
    """A running server: where it is, and what it got."""

    port: int
    handler: Handler
    security: str

    def messages(self) -> list[Accepted]:
        with self.handler.lock:
            return list(self.handler.accepted)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Accepted]:
        deadline = time.monotonic() + timeout
        while len(self.messages()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{count} messages not received within {timeout}s; got {len(self.messages())}"
                )
            time.sleep(0.05)
        return self.messages()


def server_context(ca: TestCA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(ca.cert_pem), str(ca.key_pem))
    return context


@contextlib.contextmanager
def running_smtp(
    ca: TestCA | None = None,
    *,
    security: str = "starttls",
    auth: bool = False,
    plan: Callable[[int], str] = lambda attempt: ACCEPT,
    port: int = 0,
) -> Iterator[SMTPServer]:
    """
    An SMTP server on 127.0.0.1: C{security} "starttls" (required before
    MAIL), "tls" (implicit) or "none"; with C{auth}, AUTH (PLAIN, LOGIN)
    required, offered only under TLS. C{port} 0: a free one.
    """
    handler = Handler(plan=plan)
    kwargs: dict[str, Any] = {
        "hostname": "127.0.0.1",
        "server_hostname": "smtp.test",
        "ready_timeout": 20.0,
    }
    if security == "starttls":
        assert ca is not None
        kwargs.update(tls_context=server_context(ca), require_starttls=True)
    elif security == "tls":
        assert ca is not None
        kwargs.update(ssl_context=server_context(ca))
    if auth:
        # Under implicit TLS aiosmtpd does not count the session as TLS; it is.
        kwargs.update(
            authenticator=_authenticate, auth_required=True, auth_require_tls=security != "tls"
        )
    controller: _Controller | None = None
    for _ in range(1 if port else 3):
        # The port is probed free, then bound by the server; another process
        # may take it in between: try another.
        controller = _Controller(handler, port=port or free_port(), **kwargs)
        try:
            controller.start()
            break
        except OSError:
            controller = None
    assert controller is not None, "no free port for the SMTP server"
    try:
        yield SMTPServer(controller.port, handler, security)
    finally:
        controller.stop()

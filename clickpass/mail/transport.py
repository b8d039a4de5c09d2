"""
Where a message goes once it leaves the outbox: an SMTP server (Twisted's
ESMTP client, STARTTLS or implicit TLS, certificates verified by default,
optional AUTH), or a maildir under the data directory when no server is
configured (the embedded default).

A transport sends one message and says how it went: it returns when the
server took the message, raises L{PermanentFailure} when the server
refused it for good (a 5xx answer to MAIL, RCPT or DATA) and any other
exception when trying again later may work (no connection, a timeout, a
4xx, a TLS or AUTH problem that an operator can fix).

This module must never block the reactor (network through Twisted, the
maildir's file writes in a thread), never fall back to plain text when
TLS was asked for, and never log a password.
"""

from __future__ import annotations

import mailbox
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol, cast

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.mail import smtp

from clickpass.mail.settings import MailSettings


@dataclass(frozen=True)
class Envelope:
    """One message to send: envelope addresses and the message's source (LF line ends)."""

    sender: str
    recipient: str
    message: bytes
    message_id: str


class PermanentFailure(Exception):
    """The server refused this message for good; trying again would not help."""


class Transport(Protocol):
    """Sends one message (see the module's docstring for what its outcome means)."""

    def describe(self) -> str:
        """Where messages go, for operators (no secrets)."""

    def send(self, envelope: Envelope) -> Deferred[None]: ...


class _Sender(smtp.ESMTPSenderFactory):
    """Twisted's sender factory, with EHLO's name chosen instead of looked up."""

    def __init__(self, helo: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.domain = helo.encode("idna")


class SMTPTransport:
    """Sends through one SMTP server, one connection per message."""

    def __init__(
        self,
        reactor: Any,
        settings: MailSettings,
        *,
        password: str = "",
        trust: Any = None,
        helo: str = "localhost",
    ) -> None:
        """
        C{trust} is the trust root for the server's certificate (the system's
        when L{None}); C{reactor} must connect TCP and SSL.
        """
        self._reactor = reactor
        self._settings = settings
        self._password = password
        self._trust = trust
        self._helo = helo

    def describe(self) -> str:
        s = self._settings
        auth = f", AUTH as {s.username}" if s.username else ""
        verify = (
            "" if s.verify_certificate or s.security == "none" else ", certificate NOT verified"
        )
        return f"smtp {s.smtp_host}:{s.port} ({s.security}{auth}{verify})"

    def _tls_options(self) -> Any:
        s = self._settings
        if not s.verify_certificate:
            return ssl.CertificateOptions(verify=False)
        if self._trust is None:
            return ssl.optionsForClientTLS(s.smtp_host)
        return ssl.optionsForClientTLS(s.smtp_host, trustRoot=self._trust)

    def send(self, envelope: Envelope) -> Deferred[None]:
        s = self._settings
        result: Deferred[Any] = Deferred(lambda d: _abort(factory, connector))
        tls = None if s.security == "none" else self._tls_options()
        factory = _Sender(
            self._helo,
            s.username.encode("utf-8") if s.username else None,
            self._password.encode("utf-8") if s.username else None,
            envelope.sender,
            [envelope.recipient],
            BytesIO(envelope.message),
            result,
            retries=0,
            timeout=s.timeout,
            contextFactory=tls if s.security == "starttls" else None,
            heloFallback=False,
            requireAuthentication=bool(s.username),
            requireTransportSecurity=s.security != "none",
            # With no TLS asked for, no name: Twisted would try STARTTLS on its own.
            hostname=s.smtp_host if s.security != "none" else None,
        )
        if s.security == "tls":
            connector = self._reactor.connectSSL(
                s.smtp_host, s.port, factory, tls, timeout=s.timeout
            )
        else:
            connector = self._reactor.connectTCP(s.smtp_host, s.port, factory, timeout=s.timeout)
        result.addTimeout(s.timeout, self._reactor)
        result.addErrback(_classify)
        return result.addCallback(lambda _: None)


def _abort(factory: smtp.ESMTPSenderFactory, connector: Any) -> None:
    # Cancelled (the attempt took too long): no retry, drop the connection now.
    factory.sendFinished = True
    if factory.currentProtocol is not None and factory.currentProtocol.transport is not None:
        factory.currentProtocol.transport.abortConnection()
    else:
        connector.disconnect()


def _classify(failure: Any) -> None:
    error = failure.value
    if isinstance(error, smtp.SMTPDeliveryError) and 500 <= int(error.code) < 600:
        raise PermanentFailure(_smtp_reason(error)) from error
    if isinstance(error, smtp.SMTPClientError):
        raise TemporaryFailure(_smtp_reason(error)) from error
    failure.raiseException()


class TemporaryFailure(Exception):
    """The server or the connection failed this time; the message is tried again."""


def _smtp_reason(error: smtp.SMTPClientError) -> str:
    # The exception's str() carries the whole session log; one line is enough:
    # the refused recipient's answer when there is one, else the last answer.
    if isinstance(error, smtp.SMTPDeliveryError):
        # Twisted types addresses as object; it is [(address, code, answer), ...].
        addresses = cast(list[tuple[bytes, int, bytes]], error.addresses or [])
        for _address, code, resp in addresses:
            if int(code) >= 400:
                return _reply(int(code), resp)
    return _reply(int(error.code), error.resp)


def _reply(code: int, resp: object) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    text = " ".join(text.split())
    return f"{code} {text}" if code > 0 else text


class MaildirTransport:
    """
    Writes every message into a maildir (C{new/}), as a local mailbox
    would; for the embedded default, so a person trying Clickpass on one
    machine reads its mail with any mail reader (or C{cat}).
    """

    def __init__(self, reactor: Any, path: Path) -> None:
        self._reactor = reactor
        self.path = path

    def describe(self) -> str:
        return f"maildir {self.path}"

    def _write(self, envelope: Envelope) -> None:
        box = mailbox.Maildir(self.path, create=True)
        # A maildir carries no envelope: say who it was for, as delivery agents do.
        data = (f"Return-Path: <{envelope.sender}>\nDelivered-To: {envelope.recipient}\n").encode(
            "ascii"
        ) + envelope.message
        box.add(data)

    def send(self, envelope: Envelope) -> Deferred[None]:
        d: Deferred[None] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._write, envelope
        )
        return d


__all__ = [
    "Envelope",
    "MaildirTransport",
    "PermanentFailure",
    "SMTPTransport",
    "TemporaryFailure",
    "Transport",
]

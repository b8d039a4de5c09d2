"""
The SMTP transport against a real SMTP server (aiosmtpd on loopback):
STARTTLS and implicit TLS with the certificate verified, AUTH, and each
way a server can fail an attempt (refuse for good, refuse for now, hang,
drop the connection after the data), each reported as the delivery
service needs it (permanent, or try again).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from twisted.internet.defer import Deferred

from clickpass.mail.message import Rendered, as_text, compose
from clickpass.mail.settings import MailSettings
from clickpass.mail.transport import Envelope, PermanentFailure, SMTPTransport, TemporaryFailure
from clickpass.tls import load_trust_root
from tests.integration.mail.smtpd import (
    DROP,
    HANG,
    MID_DATA,
    PASSWORD,
    REFUSE,
    TEMPFAIL,
    USER,
    running_smtp,
)
from tests.support.deferreds import async_test
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.integration


def envelope(to: str = "person@example.org") -> Envelope:
    message = compose(
        Rendered("Hello", "Hello there.\nhttps://login.example.com/x\n", "<p>Hello there.</p>"),
        to=to,
        from_="Clickpass <no-reply@login.example.com>",
        message_id="<abc123@login.example.com>",
        now=1_700_000_000,
    )
    return Envelope("no-reply@login.example.com", to, as_text(message).encode(), "<abc123@x>")


def transport(
    reactor: Any, port: int, ca: TestCA | None, password: str = PASSWORD, **values: Any
) -> SMTPTransport:
    settings = MailSettings(smtp_host="127.0.0.1", smtp_port=port, **values)
    trust = load_trust_root(ca.ca_pem) if ca is not None else None
    return SMTPTransport(reactor, settings, password=password, trust=trust, helo="clickpass.test")


async def outcome(d: Deferred[None]) -> BaseException | None:
    try:
        await d
    except Exception as e:
        return e
    return None


@async_test
async def test_starttls_with_auth_delivers_the_message_intact(reactor: Any, ca: TestCA) -> None:
    """
    STARTTLS (required by the server before MAIL), AUTH with the password,
    the certificate checked against the CA: the server gets the message
    byte for byte as built, over TLS, from the configured user.
    """
    with running_smtp(ca, security="starttls", auth=True) as server:
        sent = envelope()
        smtp = transport(reactor, server.port, ca, username=USER, password_file="unused")
        assert await outcome(smtp.send(sent)) is None
        (got,) = server.messages()
    assert got.tls and got.user == USER
    assert got.mail_from == "no-reply@login.example.com"
    assert got.rcpt_tos == ["person@example.org"]
    assert got.raw.replace(b"\r\n", b"\n") == sent.message
    assert got.message["Message-ID"] == "<abc123@login.example.com>"
    body = got.message.get_body(("plain",))
    assert body is not None and "Hello there." in body.get_content()


# aiosmtpd does not count implicit TLS as TLS for AUTH and warns; the session is TLS.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@async_test
async def test_implicit_tls_delivers(reactor: Any, ca: TestCA) -> None:
    """security = "tls": TLS from the first byte (port 465 style), verified."""
    with running_smtp(ca, security="tls", auth=True) as server:
        smtp = transport(
            reactor, server.port, ca, security="tls", username=USER, password_file="unused"
        )
        assert await outcome(smtp.send(envelope())) is None
        (got,) = server.messages()
    assert got.tls and got.user == USER


@async_test
async def test_an_untrusted_certificate_stops_the_message(
    reactor: Any, ca: TestCA, other_ca: TestCA
) -> None:
    """
    Verification is on by default: a certificate from a CA that is not
    trusted (STARTTLS or implicit TLS), or one for another name, sends
    nothing and the attempt is tried again later.
    """
    with running_smtp(ca, security="starttls", auth=True) as server:
        smtp = transport(reactor, server.port, other_ca, username=USER, password_file="unused")
        failed = await outcome(smtp.send(envelope()))
        assert failed is not None and not isinstance(failed, PermanentFailure)
        assert server.messages() == []
    with running_smtp(ca, security="tls") as server:
        smtp = transport(reactor, server.port, None, security="tls")
        failed = await outcome(smtp.send(envelope()))
        assert failed is not None and not isinstance(failed, PermanentFailure)
        # The certificate names 127.0.0.1, not localhost.
        named = MailSettings(smtp_host="localhost", smtp_port=server.port, security="tls")
        smtp = SMTPTransport(reactor, named, trust=load_trust_root(ca.ca_pem), helo="x.test")
        failed = await outcome(smtp.send(envelope()))
        assert failed is not None
        assert server.messages() == []


@async_test
async def test_verification_off_takes_any_certificate(reactor: Any, ca: TestCA) -> None:
    """verify_certificate = false (a lab): the untrusted certificate is accepted."""
    with running_smtp(ca, security="starttls") as server:
        smtp = transport(reactor, server.port, None, verify_certificate=False)
        assert "certificate NOT verified" in smtp.describe()
        assert await outcome(smtp.send(envelope())) is None
        assert len(server.messages()) == 1


@async_test
async def test_starttls_required_never_falls_back_to_plain_text(reactor: Any) -> None:
    """A server that offers no STARTTLS gets nothing, not the message in clear text."""
    with running_smtp(None, security="none") as server:
        smtp = transport(reactor, server.port, None)
        failed = await outcome(smtp.send(envelope()))
        assert isinstance(failed, TemporaryFailure), failed
        assert server.messages() == [] and server.handler.attempts == 0
        plain = transport(reactor, server.port, None, security="none")
        assert await outcome(plain.send(envelope())) is None
        assert len(server.messages()) == 1


@async_test
async def test_a_wrong_password_is_tried_again_later(reactor: Any, ca: TestCA) -> None:
    """AUTH refused is an operator's problem to fix, not the message's: try again later."""
    with running_smtp(ca, security="starttls", auth=True) as server:
        smtp = transport(
            reactor, server.port, ca, password="wrong", username=USER, password_file="unused"
        )
        failed = await outcome(smtp.send(envelope()))
        assert isinstance(failed, TemporaryFailure), failed
        assert "535" in str(failed)
        assert server.messages() == []


@async_test
async def test_refusals_are_permanent_for_5xx_and_temporary_for_4xx(
    reactor: Any, ca: TestCA
) -> None:
    """550 to RCPT gives up on the message; 451 means try again."""
    plan = {1: REFUSE, 2: TEMPFAIL}
    with running_smtp(ca, plan=lambda n: plan.get(n, "accept")) as server:
        smtp = transport(reactor, server.port, ca)
        refused = await outcome(smtp.send(envelope()))
        assert isinstance(refused, PermanentFailure), refused
        assert str(refused) == "550 5.1.1 no such user here"
        later = await outcome(smtp.send(envelope()))
        assert isinstance(later, TemporaryFailure), later
        assert str(later).startswith("451 ")
        assert server.messages() == []


@async_test
async def test_a_server_that_hangs_is_cut_off_at_the_timeout(reactor: Any, ca: TestCA) -> None:
    """No answer to the data: the attempt ends at the timeout, to be tried again."""
    with running_smtp(ca, plan=lambda n: HANG) as server:
        smtp = transport(reactor, server.port, ca, timeout=1.0)
        began = time.monotonic()
        failed = await outcome(smtp.send(envelope()))
        took = time.monotonic() - began
        assert failed is not None and not isinstance(failed, PermanentFailure)
        assert 0.9 <= took < 5, took
        assert server.messages() == []


@pytest.mark.parametrize("when", [MID_DATA, DROP])
@async_test
async def test_a_connection_dropped_during_or_after_the_data_is_tried_again(
    reactor: Any, ca: TestCA, when: str
) -> None:
    """
    The server dropped the connection in the middle of the message's data,
    or once it had all of it, unanswered: not sent, try again.
    """
    with running_smtp(ca, plan=lambda n: when) as server:
        smtp = transport(reactor, server.port, ca, timeout=10.0)
        began = time.monotonic()
        failed = await outcome(smtp.send(envelope()))
        assert failed is not None and not isinstance(failed, PermanentFailure)
        assert time.monotonic() - began < 5
        assert server.handler.attempts == 1


@async_test
async def test_no_server_listening_is_tried_again(reactor: Any) -> None:
    """Connection refused: try again later."""
    from tests.support.node import free_port

    smtp = transport(reactor, free_port(), None, timeout=2.0)
    failed = await outcome(smtp.send(envelope()))
    assert failed is not None and not isinstance(failed, PermanentFailure)

"""
The partner console's one-page flash: what a form says to the page after
its redirect, sealed in a cookie that only the same session can read, once,
within its lifetime.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from clickpass.partners.console import FLASH_COOKIE, FLASH_LIFETIME, Flash


class FakeApp:
    """What Flash uses of the web application: a clock, keys and the session cookie."""

    def __init__(self, secret: bytes = b"s" * 32) -> None:
        self.reactor = Clock()
        self.reactor.advance(1_700_000_000)
        self.secret = secret

    def derive_key(self, purpose: bytes) -> bytes:
        return (self.secret + purpose)[:32]

    def session_token(self, request: Request) -> str:
        return (request.getCookie(b"cp_session") or b"").decode()

    def is_secure(self, request: Request) -> bool:
        return False


def request(session: str, flash: bytes | None = None) -> Request:
    r = Request(DummyChannel())
    r.received_cookies[b"cp_session"] = session.encode()
    if flash is not None:
        r.received_cookies[FLASH_COOKIE] = flash
    return r


def sealed(app: Any, session: str, **values: Any) -> bytes:
    r = request(session)
    Flash(app).put(r, **values)
    (cookie,) = r.cookies
    value = cookie.split(b";")[0].split(b"=", 1)[1]
    assert b"/partners" in cookie and b"HttpOnly" in cookie
    return value


def test_the_same_session_reads_it_once_and_it_is_cleared() -> None:
    """The next page reads what was put, and its answer clears the cookie."""
    app = FakeApp()
    value = sealed(app, "alice", site="site_1", new_key="cpk_secret")
    assert b"cpk_secret" not in value
    r = request("alice", value)
    assert Flash(app).take(r) == {"site": "site_1", "new_key": "cpk_secret"}
    (cleared,) = r.cookies
    assert cleared.startswith(FLASH_COOKIE + b"=;") and b"Max-Age=0" in cleared


def test_another_session_a_forgery_or_a_stale_one_reads_as_nothing() -> None:
    """Bound to the session, authenticated, and short-lived: otherwise nothing."""
    app = FakeApp()
    value = sealed(app, "alice", site="site_1", new_key="cpk_secret")
    assert Flash(app).take(request("mallory", value)) == {}
    assert Flash(FakeApp(b"t" * 32)).take(request("alice", value)) == {}
    flipped = value[:-2] + (b"A" if value[-2:-1] != b"A" else b"B") + value[-1:]
    assert Flash(app).take(request("alice", flipped)) == {}
    for junk in (b"", b"!!!", b"AAAA", b"A" * 40):
        assert Flash(app).take(request("alice", junk)) == {}
    app.reactor.advance(FLASH_LIFETIME + 1)
    assert Flash(app).take(request("alice", value)) == {}


def test_unknown_or_mistyped_fields_are_dropped() -> None:
    """Only the fields a console page shows, with their types, come back."""
    app = FakeApp()
    value = sealed(app, "alice", site="site_1", notice=5, error="no", other="x")
    assert Flash(app).take(request("alice", value)) == {"site": "site_1", "error": "no"}

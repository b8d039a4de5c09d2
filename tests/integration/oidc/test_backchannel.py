"""
Back-Channel Logout 1.0 through a real node (SQLite and MariaDB): a
relying party's logout endpoint on loopback (a real HTTP server) gets a
logout token, verified with joserfc against the provider's JWKS, when the
person signs out, uses RP-initiated logout, ends their other sessions or
deletes their account; a receiver that refuses and then hangs past the
timeout is retried until it takes the token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlencode

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from tests.integration.oidc.conftest import OPENID_CONFIG
from tests.integration.oidc.harness import Client, Person, Provider, query_of
from tests.support.browser import Browser, csrf_token

pytestmark = pytest.mark.integration

EVENT = "http://schemas.openid.net/event/backchannel-logout"
# The provider fixture (conftest.py) starts its node with this: deliveries
# may go to loopback here; retries come quickly, an attempt is cut off
# after two seconds.
NODE_CONFIG = (
    OPENID_CONFIG
    + """
[partners]
allow_private_webhooks = true
webhook_poll_interval = 0.2
webhook_timeout = 2.0
webhook_backoff_initial = 1.0
webhook_backoff_max = 2.0
"""
)


@dataclass
class Received:
    path: str
    content_type: str
    token: str
    at: float


@dataclass
class Receiver:
    """Relying parties' back-channel logout endpoints: one loopback server, a path each."""

    url: str
    received: list[Received] = field(default_factory=list)
    # What to do with the next requests: an HTTP status, or "hang" (answer
    # 200 after longer than the node waits); then 200.
    script: list[int | str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tokens_for(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [r for r in self.received if r.path == path]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{path}: {len(found)} logout tokens arrived, expected {count}")


@pytest.fixture(scope="module")
def receiver(provider: Provider) -> Iterator[Receiver]:
    # One per provider (backend): the paths' tokens of one node's run are
    # not the next one's.
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode("ascii")
            with state.lock:
                action = state.script.pop(0) if state.script else 200
            if action == "hang":
                time.sleep(4)
                action = 200
            if action == 200:
                with state.lock:
                    state.received.append(
                        Received(
                            self.path,
                            self.headers.get("content-type", ""),
                            parse_qs(body, strict_parsing=True)["logout_token"][0],
                            time.monotonic(),
                        )
                    )
            self.send_response(int(action))
            self.send_header("cache-control", "no-store")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def bcl_client(provider: Provider, receiver: Receiver, host: str, path: str) -> Client:
    return provider.client(
        f"https://{host}/cb",
        backchannel_logout_uri=receiver.url + path,
        post_logout_uris=(f"https://{host}/bye",),
    )


def sign_into(provider: Provider, person: Person, client: Client) -> dict[str, Any]:
    """The person signs into C{client}; the ID token's claims, verified."""
    code = query_of(person.authorize(provider.authorize_url(client, nonce="n-1")))["code"]
    answer = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    ).json()
    claims = verified(provider, answer["id_token"], client, "JWT")
    return {**claims, "id_token": answer["id_token"]}


def verified(provider: Provider, token: str, client: Client, typ: str) -> dict[str, Any]:
    """C{token}'s claims once joserfc verifies it against the provider's JWKS."""
    keys = KeySet.import_key_set(cast(Any, provider.jwks()))
    found = jose_jwt.decode(token, keys, algorithms=["RS256", "ES256"])
    assert found.header.get("typ", "JWT") == typ
    claims = dict(found.claims)
    assert claims["iss"] == provider.issuer and claims["aud"] == client.client_id
    assert claims["exp"] > time.time() - 5
    return claims


def check_logout_token(
    provider: Provider, received: Received, client: Client, signed_in: dict[str, Any]
) -> dict[str, Any]:
    assert received.content_type == "application/x-www-form-urlencoded"
    claims = verified(provider, received.token, client, "logout+jwt")
    assert claims["events"] == {EVENT: {}}
    assert claims["sub"] == signed_in["sub"] and claims["sid"] == signed_in["sid"]
    assert "nonce" not in claims and claims["jti"]
    assert abs(claims["iat"] - time.time()) < 60
    return claims


def test_discovery_advertises_back_channel_logout(provider: Provider) -> None:
    """Discovery says back-channel logout is supported, with sid."""
    document = Browser(provider.url).get("/.well-known/openid-configuration").json()
    assert document["backchannel_logout_supported"] is True
    assert document["backchannel_logout_session_supported"] is True


def test_signing_out_sends_each_client_a_logout_token(
    provider: Provider, receiver: Receiver
) -> None:
    """Two clients signed into in one session each get a token with the session's sid."""
    first = bcl_client(provider, receiver, "bcl-one.example.com", "/one")
    second = bcl_client(provider, receiver, "bcl-two.example.com", "/two")
    person = Person(provider)
    at_first = sign_into(provider, person, first)
    at_second = sign_into(provider, person, second)
    assert at_first["sid"] == at_second["sid"] and at_first["sub"] != at_second["sub"]
    assert receiver.tokens_for("/one", 0) == []
    page = person.browser.get("/account")
    person.browser.post("/signout", {"csrf_token": csrf_token(page.text)})
    (one,) = receiver.tokens_for("/one", 1)
    (two,) = receiver.tokens_for("/two", 1)
    check_logout_token(provider, one, first, at_first)
    check_logout_token(provider, two, second, at_second)
    # Once each, not again.
    time.sleep(1.5)
    assert len(receiver.tokens_for("/one", 1)) == 1
    assert len(receiver.tokens_for("/two", 1)) == 1


def test_rp_initiated_logout_sends_a_logout_token(provider: Provider, receiver: Receiver) -> None:
    """RP-Initiated Logout with the person's ID token ends the session: a logout token."""
    client = bcl_client(provider, receiver, "bcl-rp.example.com", "/rp")
    person = Person(provider)
    signed_in = sign_into(provider, person, client)
    response = person.open(
        provider.url
        + "oidc/logout?"
        + urlencode(
            {
                "id_token_hint": signed_in["id_token"],
                "post_logout_redirect_uri": "https://bcl-rp.example.com/bye",
            }
        )
    )
    assert response.status_code == 302
    (got,) = receiver.tokens_for("/rp", 1)
    check_logout_token(provider, got, client, signed_in)


def test_ending_other_sessions_and_deleting_the_account_send_logout_tokens(
    provider: Provider, receiver: Receiver
) -> None:
    """
    "Sign out everywhere else" reaches the other browser's clients (this
    browser's session goes on); deleting the account then ends this one.
    """
    client = bcl_client(provider, receiver, "bcl-else.example.com", "/else")
    laptop = Person(provider)
    on_laptop = sign_into(provider, laptop, client)
    phone = Person(provider)
    phone.email, phone.signed_up = laptop.email, True
    on_phone = sign_into(provider, phone, client)
    assert on_phone["sub"] == on_laptop["sub"] and on_phone["sid"] != on_laptop["sid"]
    page = phone.browser.get("/account")
    phone.browser.post("/account/sessions/end-others", {"csrf_token": csrf_token(page.text)})
    (got,) = receiver.tokens_for("/else", 1)
    check_logout_token(provider, got, client, on_laptop)
    time.sleep(1)
    assert len(receiver.tokens_for("/else", 1)) == 1  # the phone's session goes on
    page = phone.browser.get("/account/delete")
    assert page.status_code == 200, page.text[:500]
    done = phone.browser.post(
        "/account/delete",
        {"password": "correct horse battery", "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/account/deleted"
    found = receiver.tokens_for("/else", 2)
    check_logout_token(provider, found[1], client, on_phone)


def test_a_refusing_then_hanging_receiver_is_retried(
    provider: Provider, receiver: Receiver
) -> None:
    """503, then no answer within the timeout, then 200: the token arrives on the third try."""
    client = bcl_client(provider, receiver, "bcl-retry.example.com", "/retry")
    person = Person(provider)
    signed_in = sign_into(provider, person, client)
    with receiver.lock:
        receiver.script[:] = [503, "hang"]
    started = time.monotonic()
    page = person.browser.get("/account")
    person.browser.post("/signout", {"csrf_token": csrf_token(page.text)})
    found = receiver.tokens_for("/retry", 1, timeout=45)
    # The hung attempt's receiver still answered (after the node gave up on
    # it), so it may have recorded one too: every token that arrived is good.
    for got in found:
        check_logout_token(provider, got, client, signed_in)
    assert not receiver.script
    # Refused, then cut off after 2 s, with waits of 1 s and 2 s between.
    assert found[-1].at - started >= 3
    jtis = {verified(provider, r.token, client, "logout+jwt")["jti"] for r in found}
    assert len(jtis) == len(found)

"""
Refresh tokens end with the Clickpass session they were issued in, through
a real node (SQLite and MariaDB): signing out, RP-initiated logout (which
sends the back-channel logouts), "sign out everywhere else", a password
change (which ends the other sessions) and a password reset (which ends
every session) each make that session's refresh tokens invalid_grant and
inactive to introspection, while another session's go on. Clickpass
offers no offline_access, so every refresh token is bound to its session
(OpenID Connect Core 11, Back-Channel Logout 1.0 2.7).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from tests.integration.oidc.harness import PASSWORD, Client, Person, Provider, query_of
from tests.support.browser import Browser, csrf_token

pytestmark = pytest.mark.integration

NEW_PASSWORD = "a new horse battery staple"
ENDED = "the session the refresh token was issued in has ended"


def signed_into(provider: Provider, person: Person, client: Client) -> dict[str, str]:
    """The person signs into C{client}; the token endpoint's answer."""
    code = query_of(person.authorize(provider.authorize_url(client, nonce="n")))["code"]
    answer = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    )
    assert answer.status_code == 200, answer.text
    tokens: dict[str, str] = answer.json()
    return tokens


def refreshes(provider: Provider, client: Client, tokens: dict[str, str]) -> bool:
    """Whether C{tokens}' refresh token still works (it rotates: C{tokens} is updated)."""
    answer = provider.token(
        client, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    if answer.status_code == 200:
        tokens.update(answer.json())
        return True
    assert answer.status_code == 400 and answer.json() == {
        "error": "invalid_grant", "error_description": ENDED,
    }, answer.text  # fmt: skip
    return False


def active(provider: Provider, client: Client, token: str) -> bool:
    answer = provider.post("oidc/introspect", client, token=token)
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["active"])


def two_sessions(provider: Provider, client: Client) -> tuple[Person, Person]:
    """One person signed in on a laptop and on a phone."""
    laptop = Person(provider)
    laptop.authorize(provider.authorize_url(client))
    phone = Person(provider)
    phone.email, phone.signed_up = laptop.email, True
    return laptop, phone


@pytest.fixture
def client(provider: Provider) -> Client:
    return provider.client("https://refresh-session.example.com/cb")


def test_signing_out_ends_the_sessions_refresh_tokens(provider: Provider, client: Client) -> None:
    """Before signing out the refresh token works; after, invalid_grant and inactive."""
    person = Person(provider)
    tokens = signed_into(provider, person, client)
    assert refreshes(provider, client, tokens)
    assert active(provider, client, tokens["refresh_token"])
    page = person.browser.get("/account")
    person.browser.post("/signout", {"csrf_token": csrf_token(page.text)})
    assert not active(provider, client, tokens["refresh_token"])
    assert not refreshes(provider, client, tokens)


def test_rp_initiated_logout_ends_the_sessions_refresh_tokens(
    provider: Provider, client: Client
) -> None:
    """The end-session endpoint (which sends the back-channel logouts) ends them too."""
    person = Person(provider)
    tokens = signed_into(provider, person, client)
    query = urlencode({"id_token_hint": tokens["id_token"], "client_id": client.client_id})
    ended = person.open(provider.url + "oidc/logout?" + query)
    assert ended.status_code in (200, 302), ended.text[:500]
    assert not refreshes(provider, client, tokens)


def test_signing_out_everywhere_else_ends_the_other_sessions_refresh_tokens(
    provider: Provider, client: Client
) -> None:
    """The laptop's refresh token ends; the phone's, whose session goes on, still works."""
    laptop, phone = two_sessions(provider, client)
    on_laptop = signed_into(provider, laptop, client)
    on_phone = signed_into(provider, phone, client)
    page = phone.browser.get("/account")
    phone.browser.post("/account/sessions/end-others", {"csrf_token": csrf_token(page.text)})
    assert not refreshes(provider, client, on_laptop)
    assert refreshes(provider, client, on_phone)


def test_a_password_change_ends_the_other_sessions_refresh_tokens(
    provider: Provider, client: Client
) -> None:
    """Changing the password on the phone ends the laptop's session and its refresh tokens."""
    laptop, phone = two_sessions(provider, client)
    on_laptop = signed_into(provider, laptop, client)
    on_phone = signed_into(provider, phone, client)
    changed = phone.browser.submit(
        "/account/password",
        "/account/password",
        {"current_password": PASSWORD, "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )
    assert changed.ok and changed.url.endswith("/account?password=1"), changed.url
    assert not refreshes(provider, client, on_laptop)
    assert refreshes(provider, client, on_phone)


def test_a_password_reset_ends_every_sessions_refresh_tokens(
    provider: Provider, client: Client
) -> None:
    """A reset link used ends every session, so every refresh token of the person."""
    laptop, phone = two_sessions(provider, client)
    on_laptop = signed_into(provider, laptop, client)
    on_phone = signed_into(provider, phone, client)
    link = json.loads(provider.node.ctl("--json", "user", "reset-link", laptop.email).stdout)[
        "link"
    ]
    browser = Browser(provider.url)
    form = browser.get(link)
    done = browser.post(
        "/reset",
        {
            "t": link.split("t=", 1)[1],
            "password": NEW_PASSWORD,
            "password_again": NEW_PASSWORD,
            "csrf_token": csrf_token(form.text),
        },
    )
    assert done.ok, done.text[:500]
    assert not refreshes(provider, client, on_laptop)
    assert not refreshes(provider, client, on_phone)

"""
RP-Initiated Logout 1.0 through a real node (SQLite and MariaDB): with
the person's own ID token the sign-out is immediate and goes back to the
registered post-logout URI with the state; without one the person is
asked; an unregistered URI or a forged hint gets an error page.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.oidc.harness import Client, Person, Provider, query_of
from tests.support.browser import csrf_token

pytestmark = pytest.mark.integration

BACK = "https://logout.example.com/bye"


def signed_in(provider: Provider, client: Client) -> tuple[Person, str]:
    """A signed-in person and the ID token their client got."""
    person = Person(provider)
    code = query_of(person.authorize(provider.authorize_url(client)))["code"]
    tokens = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    ).json()
    return person, str(tokens["id_token"])


def is_signed_in(provider: Provider, person: Person, client: Client) -> bool:
    response = person.open(provider.authorize_url(client, prompt="none"))
    return "code" in query_of(response.headers["location"])


def logout_url(provider: Provider, **params: str) -> str:
    return provider.url + "oidc/logout?" + urlencode(params)


@pytest.fixture(scope="module")
def client(provider: Provider) -> Client:
    return provider.client("https://logout.example.com/cb", post_logout_uris=(BACK,))


def test_logout_with_the_persons_id_token_is_immediate(provider: Provider, client: Client) -> None:
    person, id_token = signed_in(provider, client)
    assert is_signed_in(provider, person, client)
    response = person.open(
        logout_url(provider, id_token_hint=id_token, post_logout_redirect_uri=BACK, state="s1")
    )
    assert response.status_code == 302
    assert response.headers["location"] == BACK + "?state=s1"
    assert not is_signed_in(provider, person, client)


def test_logout_without_a_hint_asks_first(provider: Provider, client: Client) -> None:
    person, _id_token = signed_in(provider, client)
    page = person.open(logout_url(provider, client_id=client.client_id))
    assert page.status_code == 200 and 'value="signout"' in page.text
    assert is_signed_in(provider, person, client)
    done = person.browser.session.post(
        provider.url + "oidc/logout",
        data={
            "client_id": client.client_id,
            "decision": "signout",
            "csrf_token": csrf_token(page.text),
        },
        allow_redirects=False,
        timeout=30,
    )
    assert done.status_code == 200 and "signed out" in done.text
    assert not is_signed_in(provider, person, client)


def test_another_persons_hint_asks_first(provider: Provider, client: Client) -> None:
    """A link with someone else's ID token does not sign this person out."""
    _other, their_token = signed_in(provider, client)
    person, _mine = signed_in(provider, client)
    page = person.open(logout_url(provider, id_token_hint=their_token))
    assert page.status_code == 200 and 'value="signout"' in page.text
    assert is_signed_in(provider, person, client)


def test_unregistered_post_logout_uri_is_an_error_page(provider: Provider, client: Client) -> None:
    person, id_token = signed_in(provider, client)
    for uri in ("https://evil.example/", BACK + "/", client.redirect_uri):
        response = person.open(
            logout_url(provider, id_token_hint=id_token, post_logout_redirect_uri=uri)
        )
        assert response.status_code == 400 and "location" not in response.headers, uri
    assert is_signed_in(provider, person, client)


def test_forged_hints_are_refused(provider: Provider, client: Client) -> None:
    """A hint signed by another key, unsigned (alg none), or garbage: 400, nothing changes."""
    person, _id_token = signed_in(provider, client)
    claims = {
        "iss": provider.issuer,
        "sub": "x",
        "aud": client.client_id,
        "exp": int(time.time()) + 60,
    }
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = provider.jwks()["keys"][0]["kid"]
    forged = [
        jwt.encode(claims, other, algorithm="RS256", headers={"kid": kid}),
        jwt.encode(claims, "", algorithm="none"),
        "garbage",
    ]
    for hint in forged:
        response = person.open(
            logout_url(provider, id_token_hint=hint, post_logout_redirect_uri=BACK)
        )
        assert response.status_code == 400, hint
    assert is_signed_in(provider, person, client)
    assert requests.get(provider.url + "healthz", timeout=30).status_code == 200

"""
acr and amr through a real node (SQLite and MariaDB): ID tokens say how
the person signed in (verified with joserfc against the JWKS); a client
asking for multi-factor (acr_values) gets a person with an authenticator
app stepped up (a fresh code) and an ID token saying so, kept on refresh;
with prompt=none that is interaction_required; a person with no second
factor is never claimed to meet it.
"""

from __future__ import annotations

import secrets
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from tests.integration.mfa.person import RECOVERY, MfaPerson, second_step_next
from tests.integration.oidc.harness import HIDDEN, Client, Provider, query_of
from tests.support.browser import csrf_token

pytestmark = pytest.mark.integration

MULTI_FACTOR = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"


@pytest.fixture(scope="module")
def client(provider: Provider) -> Client:
    return provider.client("https://acr.example.com/cb")


def enrolled_and_trusted(provider: Provider) -> MfaPerson:
    """A person with an authenticator app, signed in through a trusted browser (no code now)."""
    person = MfaPerson(provider.url, f"acr{secrets.token_hex(4)}@example.com")
    person.sign_up()
    person.set_up_totp()
    done = person.confirm_totp(person.app_code())
    person.recovery_codes = RECOVERY.findall(done.text)
    person.sign_out()
    second_step_next(person.sign_in_password())
    assert person.give_code(person.recovery_codes[0], trust=True).status_code == 303
    person.sign_out()
    assert person.sign_in_password("/account").headers["location"] == "/account"
    return person


def follow_to_code(provider: Provider, person: MfaPerson, url: str) -> str:
    """Open C{url} (signed in), consent if asked; the redirect URI it sends back to."""
    response = person.browser.session.get(url, allow_redirects=False)
    if response.status_code == 200 and 'action="/oidc/decide"' in response.text:
        fields = dict(HIDDEN.findall(response.text))
        fields.update(csrf_token=csrf_token(response.text), decision="allow")
        response = person.browser.post("/oidc/decide", fields, allow_redirects=False)
    assert response.status_code == 302, (response.status_code, response.text[:1000])
    return str(response.headers["location"])


def id_token_of(provider: Provider, client: Client, location: str) -> dict[str, Any]:
    code = query_of(location)["code"]
    answer = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    ).json()
    return {**claims_of(provider, answer["id_token"]), "refresh_token": answer["refresh_token"]}


def claims_of(provider: Provider, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(cast(Any, provider.jwks()))
    return dict(jose_jwt.decode(token, keys, algorithms=["RS256", "ES256"]).claims)


def test_discovery_lists_the_acr_values(provider: Provider) -> None:
    """acr_values_supported: no assurance, and multi-factor."""
    person = MfaPerson(provider.url, "nobody@example.com")
    document = person.get("/.well-known/openid-configuration").json()
    assert document["acr_values_supported"] == ["0", MULTI_FACTOR]


def test_multi_factor_asked_steps_up_and_is_claimed(provider: Provider, client: Client) -> None:
    """
    Signed in with a password through a trusted browser, the ID token says
    acr 0 and amr pwd; asking for multi-factor sends the person to give a
    code, then the ID token says multi-factor and otp, and a refresh keeps it.
    """
    person = enrolled_and_trusted(provider)
    plain = id_token_of(
        provider, client, follow_to_code(provider, person, provider.authorize_url(client))
    )
    assert plain["acr"] == "0" and plain["amr"] == ["pwd"]
    url = provider.authorize_url(client, acr_values=f"{MULTI_FACTOR} 0", state="s")
    asked = person.browser.session.get(url, allow_redirects=False)
    assert asked.status_code == 303, asked.text[:1000]
    location = asked.headers["location"]
    assert location.startswith("/account/confirm?next=%2Foidc%2Fauthorize%3F"), location
    back = dict(parse_qsl(urlsplit(location).query))["next"]
    page = person.get(location)
    confirmed = person.browser.post(
        "/account/confirm",
        {"code": person.app_code(), "next": back, "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert confirmed.status_code == 303 and confirmed.headers["location"] == back
    answer = follow_to_code(provider, person, provider.url + back.lstrip("/"))
    assert query_of(answer)["state"] == "s"
    strong = id_token_of(provider, client, answer)
    assert strong["acr"] == MULTI_FACTOR
    assert set(strong["amr"]) == {"pwd", "otp", "mfa"}
    assert strong["sub"] == plain["sub"]
    refreshed = provider.token(
        client, grant_type="refresh_token", refresh_token=strong["refresh_token"]
    ).json()
    again = claims_of(provider, refreshed["id_token"])
    assert again["acr"] == MULTI_FACTOR and again["amr"] == strong["amr"]
    # Met now: asking again goes straight back with a code.
    assert "code" in query_of(follow_to_code(provider, person, url))


def test_multi_factor_with_prompt_none_is_interaction_required(
    provider: Provider, client: Client
) -> None:
    """A step-up cannot happen without the person: interaction_required, with state and iss."""
    person = enrolled_and_trusted(provider)
    follow_to_code(provider, person, provider.authorize_url(client))  # consent given
    location = follow_to_code(
        provider,
        person,
        provider.authorize_url(client, acr_values=MULTI_FACTOR, prompt="none", state="t"),
    )
    answer = query_of(location)
    assert answer["error"] == "interaction_required" and answer["state"] == "t"
    assert answer["iss"] == provider.issuer and "code" not in answer


def test_not_claimed_without_a_second_factor(provider: Provider, client: Client) -> None:
    """A person with no second factor gets their code; the ID token claims no multi-factor."""
    person = MfaPerson(provider.url, f"plain{secrets.token_hex(4)}@example.com")
    person.sign_up()
    url = provider.authorize_url(client, acr_values=MULTI_FACTOR)
    claims = id_token_of(provider, client, follow_to_code(provider, person, url))
    assert claims["acr"] == "0" and claims["amr"] == ["pwd"]

"""
OpenID Connect and OpenID 2.0 on the same accounts, through a real node
(SQLite and MariaDB): a partner's OpenID 2.0 realm and its OpenID Connect
client on the same host see the same identifier for a person, a consent
given to one is the consent of the other, and openid2_realm gives a
client the OpenID 2.0 identifier it knows a person by.
"""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest
import requests

from clickpass.oidc import keys
from tests.integration.oidc.harness import HIDDEN, Person, Provider, query_of
from tests.integration.openid.harness import PythonRP, RelyingPartySite
from tests.support.browser import csrf_token

pytestmark = pytest.mark.integration


@pytest.fixture
def rp_site() -> Iterator[RelyingPartySite]:
    site = RelyingPartySite("127.0.0.1").start()
    try:
        yield site
    finally:
        site.stop()


def openid2_sign_in(person: Person, provider: Provider, rp: PythonRP) -> str:
    """Sign in at an OpenID 2.0 relying party, consenting; return the identifier asserted."""
    response = person.open(rp.begin(email=False))
    for _ in range(5):
        location = response.headers.get("location", "")
        if response.status_code == 303 and location.startswith("/signin?"):
            response = person.sign_in_from(response)
        elif response.status_code == 303 and location.startswith("/"):
            response = person.open(provider.url + location[1:])
        elif response.status_code == 200 and 'action="/openid/decide"' in response.text:
            fields = {n: html.unescape(v) for n, v in HIDDEN.findall(response.text)}
            fields["csrf_token"] = csrf_token(response.text)
            fields["decision"] = "allow"
            response = person.browser.session.post(
                provider.url + "openid/decide", data=fields, allow_redirects=False, timeout=30
            )
        else:
            break
    assert response.status_code == 302, response.text[:2000]
    result = rp.complete(response.headers["location"])
    assert result.status == "success", result
    return str(result.identity_url)


def test_openid2_and_oidc_see_the_same_person(
    provider: Provider, rp_site: RelyingPartySite
) -> None:
    """
    A person approves the partner's OpenID 2.0 realm; its OpenID Connect
    client on the same host then gets a code at once (prompt=none: the same
    consent), and the ID token's sub is the OpenID 2.0 identifier's opaque
    part, which resolves at /id/<sub>.
    """
    client = provider.client(rp_site.realm + "oidc/callback")
    person = Person(provider)
    identity = openid2_sign_in(
        person, provider, PythonRP(provider.url, rp_site.realm, rp_site.return_to)
    )
    response = person.open(provider.authorize_url(client, prompt="none"))
    assert response.status_code == 302, response.text
    code = query_of(response.headers["location"])["code"]
    tokens = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    ).json()
    sub = keys.verify(tokens["id_token"], provider.jwks(), audience=client.client_id)["sub"]
    assert identity == provider.url + "id/" + sub
    assert requests.get(identity, timeout=30).status_code == 200


def test_other_hosts_see_other_identifiers(provider: Provider) -> None:
    """Two clients on two hosts get two different subjects for one person (pairwise)."""
    person = Person(provider)
    subs = []
    for uri in ("https://a.example.org/cb", "https://b.example.org/cb"):
        client = provider.client(uri)
        code = query_of(person.authorize(provider.authorize_url(client)))["code"]
        tokens = provider.token(
            client, grant_type="authorization_code", code=code, redirect_uri=uri
        ).json()
        subs.append(keys.verify(tokens["id_token"], provider.jwks())["sub"])
    assert subs[0] != subs[1]


def test_openid2_id_for_the_realm_the_person_used(
    provider: Provider, rp_site: RelyingPartySite
) -> None:
    """
    OpenID Connect Migration 1.0: with openid2_realm, the ID token carries
    the identifier the person has at that realm through OpenID 2.0; without
    it, no openid2_id.
    """
    client = provider.client(rp_site.realm + "migrate/cb")
    person = Person(provider)
    rp = PythonRP(provider.url, rp_site.realm, rp_site.return_to)
    identity = openid2_sign_in(person, provider, rp)
    for params in ({"openid2_realm": rp_site.realm}, {}):
        back = person.authorize(provider.authorize_url(client, **params))
        tokens = provider.token(
            client, grant_type="authorization_code", code=query_of(back)["code"],
            redirect_uri=client.redirect_uri,
        ).json()  # fmt: skip
        claims = keys.verify(tokens["id_token"], provider.jwks(), audience=client.client_id)
        assert claims.get("openid2_id") == (identity if params else None)


def test_openid2_realm_must_cover_the_redirect_uri(
    provider: Provider, rp_site: RelyingPartySite
) -> None:
    """A realm that does not cover the redirect URI: invalid_request at the client."""
    client = provider.client(rp_site.realm + "migrate/cb2")
    for realm in ("https://other.example/", rp_site.realm + "elsewhere/", "not a realm"):
        response = Person(provider).open(provider.authorize_url(client, openid2_realm=realm))
        assert response.status_code == 302
        assert query_of(response.headers["location"])["error"] == "invalid_request", realm


def test_forgetting_the_approval_on_the_account_page_revokes_the_clients_tokens(
    provider: Provider,
) -> None:
    """
    The consent is listed on /account with the OpenID 2.0 ones; forgetting
    it ends the client's tokens and makes the next sign-in ask again.
    """
    client = provider.client("https://forget.example.com/cb")
    person = Person(provider)
    code = query_of(person.authorize(provider.authorize_url(client)))["code"]
    tokens = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    ).json()
    page = person.browser.get("/account")
    assert "https://forget.example.com/" in page.text
    forgot = person.browser.post(
        "/account/approvals/forget",
        {"realm": "https://forget.example.com/", "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert forgot.status_code == 303, forgot.text
    refreshed = provider.token(
        client, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert refreshed.json()["error"] == "invalid_grant"
    again = person.open(provider.authorize_url(client, prompt="none"))
    assert query_of(again.headers["location"])["error"] == "consent_required"

"""
The OpenID Connect provider through a real node, on SQLite and MariaDB:
discovery, the code flow with consent, ID tokens verified against the
JWKS document, UserInfo, refresh token rotation, introspection and
revocation; confidential and public clients.
"""

from __future__ import annotations

import pytest
import requests

from clickpass.oidc import keys
from tests.integration.oidc.harness import Person, Provider, pkce_pair, query_of

pytestmark = pytest.mark.integration


def test_discovery_names_the_endpoints_and_only_what_is_supported(provider: Provider) -> None:
    """The discovery document: code flow only, pairwise, RS256 and ES256, PKCE S256."""
    doc = requests.get(provider.url + ".well-known/openid-configuration", timeout=30).json()
    assert doc["issuer"] == provider.issuer
    assert doc["authorization_endpoint"] == provider.issuer + "/oidc/authorize"
    assert doc["response_types_supported"] == ["code"]
    assert doc["subject_types_supported"] == ["pairwise"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    jwks = requests.get(doc["jwks_uri"], timeout=30).json()
    assert sorted(k["alg"] for k in jwks["keys"]) == ["ES256", "RS256"]
    assert all("d" not in k for k in jwks["keys"])


def test_confidential_client_code_flow_userinfo_refresh(provider: Provider) -> None:
    """
    A confidential client: sign in, consent, code with state and iss, token
    exchange with client_secret_basic, an RS256 ID token with the nonce
    that verifies against JWKS, UserInfo (an unverified address is not
    released), and a refresh that rotates.
    """
    client = provider.client("http://127.0.0.1:9/cb")
    person = Person(provider)
    back = person.authorize(
        provider.authorize_url(client, state="st-1", nonce="n-1", scope="openid profile")
    )
    assert back.startswith(client.redirect_uri + "?")
    answer = query_of(back)
    assert answer["state"] == "st-1"
    assert answer["iss"] == provider.issuer
    response = provider.token(
        client, grant_type="authorization_code", code=answer["code"],
        redirect_uri=client.redirect_uri,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    claims = keys.verify(
        body["id_token"], provider.jwks(), audience=client.client_id, issuer=provider.issuer
    )
    assert claims["nonce"] == "n-1"
    assert len(claims["sub"]) == 32
    assert body["token_type"] == "Bearer"
    info = requests.get(
        provider.url + "oidc/userinfo",
        headers={"Authorization": "Bearer " + body["access_token"]},
        timeout=30,
    )
    assert info.status_code == 200, info.text
    # A new account holds no name, and its address is not verified: only sub.
    assert info.json() == {"sub": claims["sub"]}
    refreshed = provider.token(
        client, grant_type="refresh_token", refresh_token=body["refresh_token"]
    )
    assert refreshed.status_code == 200, refreshed.text
    again = refreshed.json()
    assert again["refresh_token"] != body["refresh_token"]
    assert (
        keys.verify(again["id_token"], provider.jwks(), audience=client.client_id)["sub"]
        == (claims["sub"])
    )


def test_public_client_with_pkce_and_es256(provider: Provider) -> None:
    """A public client (no secret) with PKCE S256 and ES256 ID tokens; form_post answers."""
    client = provider.client("http://127.0.0.1:9/public", public=True, alg="ES256")
    verifier, challenge = pkce_pair()
    person = Person(provider)
    back = person.authorize(
        provider.authorize_url(client, code_challenge=challenge, code_challenge_method="S256")
    )
    code = query_of(back)["code"]
    response = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri,
        code_verifier=verifier,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    token = response.json()["id_token"]
    assert keys.verify(token, provider.jwks(), audience=client.client_id)
    import jwt

    assert jwt.get_unverified_header(token)["alg"] == "ES256"


def test_browser_clients_may_call_the_token_and_userinfo_endpoints(provider: Provider) -> None:
    """CORS: a preflight is answered, and JSON answers allow any origin (no cookies involved)."""
    for path in ("oidc/token", "oidc/userinfo"):
        response = requests.options(
            provider.url + path,
            headers={
                "Origin": "https://spa.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
            timeout=30,
        )
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == "*"
        assert "authorization" in response.headers["access-control-allow-headers"]
    refused = requests.post(provider.url + "oidc/token", data={"grant_type": "x"}, timeout=30)
    assert refused.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("verified", [True, False], ids=["verified", "unverified"])
def test_the_account_address_is_released_only_once_verified(
    provider: Provider, verified: bool
) -> None:
    """
    Asked for the email scope and allowed, UserInfo carries the account's
    address with email_verified true once the person confirmed the mailed
    link, and no address at all before.
    """
    client = provider.client("http://127.0.0.1:9/cb")
    person = Person(provider, verify=verified)
    back = person.authorize(
        provider.authorize_url(client, state="s", nonce="n", scope="openid email")
    )
    code = query_of(back)["code"]
    response = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    )
    assert response.status_code == 200, response.text
    info = requests.get(
        provider.url + "oidc/userinfo",
        headers={"Authorization": "Bearer " + response.json()["access_token"]},
        timeout=30,
    ).json()
    if verified:
        assert info["email"] == person.email and info["email_verified"] is True
    else:
        assert "email" not in info and "email_verified" not in info

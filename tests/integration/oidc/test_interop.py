"""
Independent relying-party libraries sign in through a real node (SQLite
and MariaDB): Authlib's client (PyPI) and openid-client (npm, itself
certified). Each does the code flow with PKCE, verifies the ID token
against the provider's JWKS, reads UserInfo and refreshes; with a
confidential client and a public one.

openid-client is installed into tests/integration/oidc/rp/node_modules
with `npm ci` the first time it is needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from tests.integration.oidc.harness import Person, Provider

pytestmark = pytest.mark.integration

RP_DIR = Path(__file__).parent / "rp"


def install_openid_client() -> None:
    """Install openid-client from package-lock.json unless it is there already."""
    if (RP_DIR / "node_modules" / "openid-client" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to install openid-client (apt-get install npm)", pytrace=False)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=RP_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci for openid-client failed:\n{result.stderr[-2000:]}", pytrace=False)


def discovery(provider: Provider) -> dict[str, Any]:
    document: dict[str, Any] = (
        OAuth2Session()
        .get(provider.url + ".well-known/openid-configuration", timeout=30, withhold_token=True)
        .json()
    )
    return document


def authlib_id_token(token: dict[str, Any], jwks: Any, **params: str) -> Any:
    """The ID token's claims, verified with joserfc and validated by Authlib's rules."""
    decoded = jose_jwt.decode(token["id_token"], KeySet.import_key_set(jwks))
    claims = CodeIDToken(
        decoded.claims,
        decoded.header,
        options={"iss": {"essential": True, "value": params.pop("issuer")}},
        params=params,
    )
    claims.validate()
    return claims


@pytest.mark.parametrize("public", [False, True], ids=["confidential", "public"])
def test_authlib_client(provider: Provider, public: bool) -> None:
    """Authlib: code flow with PKCE, ID token verified against JWKS, UserInfo, refresh."""
    client = provider.client("http://127.0.0.1:9/authlib", public=public)
    meta = discovery(provider)
    session = OAuth2Session(
        client.client_id,
        None if public else client.secret,
        scope="openid profile",
        redirect_uri=client.redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="none" if public else "client_secret_basic",
    )
    verifier, nonce = generate_token(48), generate_token(20)
    url, _state = session.create_authorization_url(
        meta["authorization_endpoint"], nonce=nonce, code_verifier=verifier
    )
    back = Person(provider).authorize(url)
    token = session.fetch_token(
        meta["token_endpoint"], authorization_response=back, code_verifier=verifier
    )
    jwks = session.get(meta["jwks_uri"], timeout=30, withhold_token=True).json()
    claims = authlib_id_token(
        token,
        jwks,
        issuer=provider.issuer,
        nonce=nonce,
        client_id=client.client_id,
        access_token=token["access_token"],
    )
    userinfo = session.get(meta["userinfo_endpoint"], timeout=30).json()
    assert userinfo["sub"] == claims["sub"]
    refreshed = session.refresh_token(meta["token_endpoint"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    again = authlib_id_token(
        refreshed,
        jwks,
        issuer=provider.issuer,
        client_id=client.client_id,
        access_token=refreshed["access_token"],
    )
    assert again["sub"] == claims["sub"]


@pytest.mark.parametrize(
    ("public", "alg", "auth"),
    [(False, "RS256", "basic"), (False, "ES256", "post"), (True, "RS256", "none")],
    ids=["confidential-basic-RS256", "confidential-post-ES256", "public-RS256"],
)
def test_openid_client(provider: Provider, public: bool, alg: str, auth: str) -> None:
    """openid-client (npm): code flow with PKCE, state, nonce and iss; UserInfo; refresh."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to run openid-client (apt-get install nodejs)", pytrace=False)
    install_openid_client()
    client = provider.client("http://127.0.0.1:9/node", public=public, alg=alg)
    rp = subprocess.Popen(
        [node, str(RP_DIR / "rp.mjs"), provider.issuer, client.client_id, client.secret,
         client.redirect_uri, alg, auth],
        cwd=RP_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert rp.stdout is not None and rp.stdin is not None
        first = json.loads(rp.stdout.readline() or '{"error": "no output"}')
        assert "authorize" in first, first
        back = Person(provider).authorize(first["authorize"])
        out, err = rp.communicate(back + "\n", timeout=60)
    finally:
        if rp.poll() is None:
            rp.kill()
            rp.wait(10)
    result = json.loads(out.strip().splitlines()[-1])
    assert "error" not in result, (result, err)
    assert result["userinfo"]["sub"] == result["sub"] == result["refreshed_sub"]
    assert result["claims"]["aud"] == client.client_id
    assert result["rotated"] is True

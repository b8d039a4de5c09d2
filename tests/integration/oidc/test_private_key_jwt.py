"""
private_key_jwt client authentication through a real node (SQLite and
MariaDB): Authlib's client signs its assertions with its own key; an
assertion replayed, signed by another key, with HS256 over the public
key, for another audience or living too long is invalid_client.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt
import pytest
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from clickpass.oidc import keys
from clickpass.oidc.assertions import JWT_BEARER
from tests.integration.oidc.harness import Client, Person, Provider

pytestmark = pytest.mark.integration


def rsa_key() -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return private, {"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}


def pem(private: Any) -> bytes:
    return bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def assertion(client_id: str, key: Any, aud: str, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": client_id, "sub": client_id, "aud": aud, "jti": secrets.token_hex(8),
        "iat": now, "exp": now + 60, **claims,
    }  # fmt: skip
    return jwt.encode(body, key, algorithm=alg, headers={"kid": "k1"})


def authenticate(provider: Provider, client_id: str, signed: str) -> Any:
    return provider.post(
        "oidc/token", None, grant_type="refresh_token", refresh_token="x",
        client_id=client_id, client_assertion_type=JWT_BEARER, client_assertion=signed,
    )  # fmt: skip


def test_authlib_private_key_jwt(provider: Provider) -> None:
    """Authlib authenticates with private_key_jwt: tokens, a verified ID token, a refresh."""
    private, jwks = rsa_key()
    client = provider.client("http://127.0.0.1:9/pkjwt", jwks=jwks)
    assert client.secret == ""
    token_endpoint = provider.issuer + "/oidc/token"
    session = OAuth2Session(
        client.client_id,
        pem(private),
        scope="openid",
        redirect_uri=client.redirect_uri,
        token_endpoint_auth_method=PrivateKeyJWT(token_endpoint),
    )
    url, _state = session.create_authorization_url(provider.issuer + "/oidc/authorize")
    back = Person(provider).authorize(url)
    token = session.fetch_token(token_endpoint, authorization_response=back)
    claims = keys.verify(token["id_token"], provider.jwks(), audience=client.client_id)
    refreshed = session.refresh_token(token_endpoint)
    again = keys.verify(refreshed["id_token"], provider.jwks(), audience=client.client_id)
    assert again["sub"] == claims["sub"]


def test_bad_assertions_are_invalid_client(provider: Provider) -> None:
    """Replayed, another key, HS256 over the public key, another audience, too long-lived."""
    private, jwks = rsa_key()
    client = provider.client("http://127.0.0.1:9/pkjwt2", jwks=jwks)
    token_endpoint = provider.issuer + "/oidc/token"
    good = assertion(client.client_id, private, token_endpoint)
    first = authenticate(provider, client.client_id, good)
    # Authenticated: the refresh token is what fails.
    assert first.json()["error"] == "invalid_grant", first.text
    other, _jwks = rsa_key()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bad = [
        good,
        assertion(client.client_id, other, token_endpoint),
        _hmac_over(client.client_id, public_pem, token_endpoint),
        assertion(client.client_id, private, "https://elsewhere.example/token"),
        assertion(client.client_id, private, token_endpoint, exp=int(time.time()) + 7200),
        assertion(client.client_id, private, token_endpoint, exp=int(time.time()) - 3600),
        assertion(client.client_id, private, token_endpoint, sub="oidc_other"),
        "not.a.jwt",
    ]
    for signed in bad:
        response = authenticate(provider, client.client_id, signed)
        assert response.status_code == 401, (signed, response.text)
        assert response.json()["error"] == "invalid_client"


def _hmac_over(client_id: str, public_pem: bytes, aud: str) -> str:
    """An HS256 token keyed with the public key (the classic algorithm confusion)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    body = b64(json.dumps({"iss": client_id, "sub": client_id, "aud": aud, "jti": "j",
                           "exp": now + 60}).encode())  # fmt: skip
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def test_es256_client_keys_are_accepted(provider: Provider) -> None:
    """A client registering a P-256 key signs ES256 assertions."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    client = provider.client("http://127.0.0.1:9/pkjwt3", jwks={"keys": [{**public, "kid": "k1"}]})
    signed = assertion(client.client_id, private, provider.issuer, alg="ES256")
    response = authenticate(provider, client.client_id, signed)
    assert response.json()["error"] == "invalid_grant", response.text


def test_a_private_key_in_the_jwks_is_refused(provider: Provider) -> None:
    private, _jwks = rsa_key()
    full = RSAAlgorithm.to_jwk(private, as_dict=True)
    with pytest.raises(AssertionError, match="private key"):
        provider.client("http://127.0.0.1:9/pkjwt4", jwks={"keys": [full]})


def test_secret_clients_cannot_use_assertions(provider: Provider) -> None:
    client: Client = provider.client("http://127.0.0.1:9/pkjwt5")
    private, _jwks = rsa_key()
    signed = assertion(client.client_id, private, provider.issuer)
    assert authenticate(provider, client.client_id, signed).status_code == 401

"""
A small, deliberately misbehaving OpenID Connect provider for tests:
twisted.web on 127.0.0.1 over TLS (the test CA), whose every answer can be
bent (wrong issuer, bad signature, expired token, wrong nonce, slow,
oversized, malformed...). It checks PKCE like a real provider would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from twisted.internet import ssl
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support.tlsca import TestCA

CLIENT_ID = "fake-client"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return dict(jwk)


@dataclass
class Behaviour:
    """What the fake provider does; tests change these between steps."""

    discovery_issuer: str | None = None  # None: the real issuer
    published: list[tuple[str, rsa.RSAPrivateKey]] = field(default_factory=list)
    signing_kid: str = "k1"
    signing_key: rsa.RSAPrivateKey | None = None  # None: the published key of signing_kid
    alg: str = "RS256"
    claims: dict[str, Any] = field(default_factory=dict)  # overrides of the ID token claims
    drop_claims: tuple[str, ...] = ()
    token_answer: bytes | None = None  # a raw body for the token endpoint
    token_status: int = 200
    userinfo: dict[str, Any] | None = None
    hang: set[str] = field(default_factory=set)  # paths that never answer
    oversize: set[str] = field(default_factory=set)  # paths that answer too much
    malformed: set[str] = field(default_factory=set)  # paths that answer non-JSON


class FakeProvider(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.issuer = ""
        self.behaviour = Behaviour()
        self.challenges: dict[str, str] = {}  # code -> PKCE challenge
        self.nonces: dict[str, str] = {}  # code -> nonce
        self.used_codes: set[str] = set()
        self.jwks_fetches = 0
        self.hanging: list[Request] = []
        self.connections: list[Any] = []

    def drop_connections(self) -> None:
        """Close every open connection, as a provider that died would."""
        for protocol in self.connections:
            channel = getattr(protocol, "_channel", protocol)
            if channel.transport is not None:
                channel.transport.abortConnection()

    def authorize(self, url: str, code: str) -> None:
        """Act as if the person signed in at the URL Clickpass sent them to."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert query["code_challenge_method"] == "S256"
        assert query["client_id"] == CLIENT_ID
        self.challenges[code] = query["code_challenge"]
        self.nonces[code] = query["nonce"]

    def id_token(self, code: str) -> str:
        b = self.behaviour
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "subject-1",
            "aud": CLIENT_ID,
            "exp": now + 300,
            "iat": now,
            "nonce": self.nonces.get(code, ""),
            "email": "erin@example.test",
            "email_verified": True,
            "name": "Erin",
        }
        claims.update(b.claims)
        for name in b.drop_claims:
            claims.pop(name, None)
        key = b.signing_key or dict(b.published)[b.signing_kid]
        return jwt.encode(claims, key, algorithm=b.alg, headers={"kid": b.signing_kid})

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        b = self.behaviour
        if path in b.hang:
            self.hanging.append(request)
            return NOT_DONE_YET
        if path in b.oversize:
            return b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}'
        if path in b.malformed:
            return b"<html>not json</html>"
        request.setHeader(b"content-type", b"application/json")
        if path == "/.well-known/openid-configuration":
            return self._json(
                {
                    "issuer": b.discovery_issuer or self.issuer,
                    "authorization_endpoint": self.issuer + "/authorize",
                    "token_endpoint": self.issuer + "/token",
                    "userinfo_endpoint": self.issuer + "/userinfo",
                    "jwks_uri": self.issuer + "/jwks",
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            )
        if path == "/jwks":
            self.jwks_fetches += 1
            return self._json({"keys": [public_jwk(k, kid) for kid, k in b.published]})
        if path == "/token":
            return self._token(request)
        if path == "/userinfo":
            info = b.userinfo if b.userinfo is not None else {"sub": "subject-1"}
            return self._json(info)
        request.setResponseCode(404)
        return self._json({"error": "not_found"})

    def _token(self, request: Request) -> bytes:
        b = self.behaviour
        form = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        code = form.get("code", "")
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if code in self.used_codes or self.challenges.get(code) != challenge:
            request.setResponseCode(400)
            return self._json({"error": "invalid_grant"})
        self.used_codes.add(code)
        if b.token_answer is not None:
            request.setResponseCode(b.token_status)
            return b.token_answer
        return self._json(
            {"access_token": "at-" + code, "token_type": "Bearer", "id_token": self.id_token(code)}
        )

    @staticmethod
    def _json(value: object) -> bytes:
        return json.dumps(value).encode()


def listen(reactor: Any, ca: TestCA, provider: FakeProvider) -> IListeningPort:
    """Serve C{provider} over TLS on a free 127.0.0.1 port and set its issuer."""
    pem = ca.key_pem.read_bytes() + ca.cert_pem.read_bytes()
    options = ssl.PrivateCertificate.loadPEM(pem).options()
    site = Site(provider)
    build = site.buildProtocol

    def tracked(address: Any) -> Any:
        protocol = build(address)
        provider.connections.append(protocol)
        return protocol

    site.buildProtocol = tracked  # type: ignore[method-assign]
    port: IListeningPort = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    provider.issuer = f"https://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    key = new_key()
    provider.behaviour.published = [("k1", key)]
    return port

"""
OpenID Connect clients: each belongs to a partner site, and has its
redirect URIs (matched exactly; https, or http on a loopback address),
whether it is public (no secret; PKCE required) or confidential, the
algorithm its ID tokens are signed with (RS256 by default, ES256 allowed),
and the scopes it may ask for.

A confidential client either authenticates with a secret or, given its
public keys (a JWKS document), with private_key_jwt. A secret is shown
once, when it is made, and only its SHA-256 is stored (a 256-bit random
secret needs no slow hash). The
client's sector, the host of its redirect URIs, is what its pairwise
subject identifiers are derived from: the sector of the partner's OpenID
2.0 realm on the same host, so both protocols see the same person.

Pure checks and transactions (C{tx} first) for the storage's pool. This
module must never store or log a client secret.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from clickpass.oidc.keys import ALGORITHMS, Algorithm, UnknownAlgorithm, check_algorithm
from clickpass.openid.identifiers import BadRealm, sector_of
from clickpass.storage.sql import Row, Transaction

MAX_REDIRECT_URI = 2048
MAX_REDIRECT_URIS = 20
# The scopes Clickpass knows; a client may be allowed a subset.
SCOPES: tuple[str, ...] = ("openid", "email", "profile")
LOOPBACK_HOSTS = ("localhost",)
DEFAULT_ALG: Algorithm = "RS256"
MAX_JWKS = 8192
MAX_CLIENT_KEYS = 10
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class ClientError(ValueError):
    """A client's settings cannot be used; the message is one sentence for the operator."""


@dataclass(frozen=True)
class ClientSettings:
    """What an operator sets for a client (checked)."""

    redirect_uris: tuple[str, ...]
    public: bool = False
    id_token_alg: Algorithm = DEFAULT_ALG
    scopes: frozenset[str] = frozenset(SCOPES)
    # The client's public keys (a JWKS document): it authenticates with
    # private_key_jwt, and has no secret.
    jwks: Mapping[str, Any] | None = None
    # Where RP-initiated logout may send the person back to (exact match).
    post_logout_uris: tuple[str, ...] = ()
    # Where logout tokens are POSTed (Back-Channel Logout 1.0), or empty.
    backchannel_logout_uri: str = ""
    backchannel_logout_session_required: bool = False


@dataclass(frozen=True)
class Client:
    """One row of C{oidc_clients}, with what its partner site says about it."""

    client_id: str
    site_id: int
    site_public_id: str
    site_name: str
    realm: str
    sector: str
    redirect_uris: tuple[str, ...]
    public: bool
    id_token_alg: Algorithm
    scopes: frozenset[str]
    created: int
    secret_hash: str = ""
    jwks: Mapping[str, Any] | None = None
    post_logout_uris: tuple[str, ...] = ()
    backchannel_logout_uri: str = ""
    backchannel_logout_session_required: bool = False

    @property
    def auth_method(self) -> str:
        """How it authenticates at the token endpoint: none, private_key_jwt or client_secret."""
        if self.public:
            return "none"
        return "private_key_jwt" if self.jwks else "client_secret"

    def authenticates(self, secret: str) -> bool:
        """Whether C{secret} is this confidential client's secret."""
        if self.public or not self.secret_hash:
            return False
        return hmac.compare_digest(secret_hash(secret), self.secret_hash)

    def describe(self) -> dict[str, Any]:
        """For operators: everything but the secret's hash."""
        return {
            "client_id": self.client_id,
            "site": self.site_public_id,
            "site_name": self.site_name,
            "sector": self.sector,
            "redirect_uris": list(self.redirect_uris),
            "type": "public" if self.public else "confidential",
            "auth_method": self.auth_method,
            "id_token_alg": self.id_token_alg,
            "scopes": sorted(self.scopes),
            "post_logout_uris": list(self.post_logout_uris),
            "backchannel_logout_uri": self.backchannel_logout_uri,
            "backchannel_logout_session_required": self.backchannel_logout_session_required,
            "created": self.created,
        }


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_redirect_uri(uri: str) -> str:
    """
    C{uri} if it can be a redirect URI: absolute, no fragment, https (or
    http on a loopback address), at most L{MAX_REDIRECT_URI} characters;
    else L{ClientError}.
    """
    if len(uri) > MAX_REDIRECT_URI:
        raise ClientError(f"a redirect URI is longer than {MAX_REDIRECT_URI} characters")
    if not uri.isprintable() or any(c.isspace() for c in uri):
        raise ClientError(f"the redirect URI {uri!r} holds spaces or control characters")
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ClientError(f"the redirect URI {uri!r} is not a URL") from None
    if parts.fragment or "#" in uri:
        raise ClientError(f"the redirect URI {uri!r} has a fragment, which is not allowed")
    if not host:
        raise ClientError(f"the redirect URI {uri!r} has no host")
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host)):
        return uri
    raise ClientError(f"the redirect URI {uri!r} must use https (http only on a loopback address)")


def sector_of_uris(uris: Iterable[str]) -> str:
    """The one sector (host) of C{uris}; L{ClientError} if they have none or several."""
    sectors = set()
    for uri in uris:
        try:
            sectors.add(sector_of(uri))
        except BadRealm as e:
            raise ClientError(str(e)) from None
    if len(sectors) != 1:
        raise ClientError(
            "the redirect URIs must all be on one host (pairwise identifiers are per host); "
            f"found {', '.join(sorted(sectors)) or 'none'}"
        )
    return sectors.pop()


def check_settings(
    redirect_uris: Iterable[str],
    public: bool = False,
    id_token_alg: str = DEFAULT_ALG,
    scopes: Iterable[str] | None = None,
    jwks: object = None,
    post_logout_uris: Iterable[str] = (),
    backchannel_logout_uri: str = "",
    backchannel_logout_session_required: bool = False,
) -> ClientSettings:
    """Checked client settings, or L{ClientError} naming what is wrong."""
    uris = tuple(dict.fromkeys(check_redirect_uri(u) for u in redirect_uris))
    if not uris:
        raise ClientError("a client needs at least one redirect URI")
    if len(uris) > MAX_REDIRECT_URIS:
        raise ClientError(f"a client has at most {MAX_REDIRECT_URIS} redirect URIs")
    sector_of_uris(uris)
    try:
        alg = check_algorithm(id_token_alg)
    except UnknownAlgorithm:
        raise ClientError(
            f"unknown ID token algorithm {id_token_alg!r}; use {' or '.join(ALGORITHMS)}"
        ) from None
    allowed = frozenset(SCOPES if scopes is None else scopes) | {"openid"}
    unknown = allowed - set(SCOPES)
    if unknown:
        raise ClientError(
            f"unknown scope {sorted(unknown)[0]!r}; Clickpass knows {', '.join(SCOPES)}"
        )
    if jwks is not None and public:
        raise ClientError("a public client has no keys; give --jwks to a confidential one")
    logout = tuple(dict.fromkeys(check_redirect_uri(u) for u in post_logout_uris))
    if len(logout) > MAX_REDIRECT_URIS:
        raise ClientError(f"a client has at most {MAX_REDIRECT_URIS} post-logout URIs")
    keys = None if jwks is None else check_jwks(jwks)
    backchannel = check_backchannel_uri(backchannel_logout_uri) if backchannel_logout_uri else ""
    if backchannel_logout_session_required and not backchannel:
        raise ClientError("backchannel_logout_session_required needs a back-channel logout URI")
    return ClientSettings(
        uris, public, alg, allowed, keys, logout, backchannel,
        bool(backchannel_logout_session_required),
    )  # fmt: skip


def check_backchannel_uri(uri: str) -> str:
    """
    C{uri} if logout tokens can be POSTed to it (Back-Channel Logout 1.0
    2.2): absolute, https (or http on a loopback address), no fragment; a
    query is allowed. Else L{ClientError}.
    """
    try:
        return check_redirect_uri(uri)
    except ClientError as e:
        raise ClientError(str(e).replace("redirect URI", "back-channel logout URI", 1)) from None


def check_jwks(document: object) -> dict[str, Any]:
    """
    A client's public keys if they can verify its private_key_jwt
    assertions: a JWKS document of 1 to L{MAX_CLIENT_KEYS} RSA or P-256
    keys, no private member; else L{ClientError}.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ClientError('the client\'s keys must be a JWKS document: {"keys": [...]}')
    found = document["keys"]
    if not 1 <= len(found) <= MAX_CLIENT_KEYS:
        raise ClientError(f"the client's JWKS document must hold 1 to {MAX_CLIENT_KEYS} keys")
    if len(json.dumps(document)) > MAX_JWKS:
        raise ClientError(f"the client's JWKS document is longer than {MAX_JWKS} characters")
    for key in found:
        if not isinstance(key, dict) or PRIVATE_MEMBERS & set(key):
            raise ClientError("the client's JWKS document holds a private key; give public keys")
        rsa_key = key.get("kty") == "RSA" and key.get("alg", "RS256") == "RS256"
        ec_key = key.get("kty") == "EC" and key.get("crv") == "P-256"
        if (
            not (rsa_key or ec_key)
            or key.get("alg", "ES256" if ec_key else "RS256") not in ALGORITHMS
        ):
            raise ClientError("the client's keys must be RSA (RS256) or P-256 (ES256) keys")
        try:
            jwt.PyJWK(key)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            raise ClientError(f"a key of the client's JWKS document cannot be used: {e}") from None
    return {"keys": [dict(k) for k in found]}


# ---------------------------------------------------------------------------
# Transactions.
# ---------------------------------------------------------------------------

_COLUMNS = (
    "c.client_id, c.site_id, s.public_id, s.name, s.realm, c.sector, c.redirect_uris, "
    "c.is_public, c.id_token_alg, c.scopes, c.created, c.secret_hash, v.verified, c.jwks, "
    "c.post_logout_uris, c.backchannel_logout_uri, c.backchannel_logout_session_required"
)
_FROM = (
    "oidc_clients c JOIN partner_sites s ON s.id = c.site_id "
    "LEFT JOIN partner_verifications v ON v.site_id = s.id"
)


def _client(row: Row) -> Client:
    sector = str(row[5])
    # What people see for the site: its name once its realm is verified,
    # else its host (anyone may type any name).
    name = str(row[3]) if row[12] else sector
    return Client(
        client_id=str(row[0]),
        site_id=int(row[1]),
        site_public_id=str(row[2]),
        site_name=name,
        realm=str(row[4]),
        sector=sector,
        redirect_uris=tuple(u for u in str(row[6]).split("\n") if u),
        public=bool(row[7]),
        id_token_alg=check_algorithm(str(row[8])),
        scopes=frozenset(s for s in str(row[9]).split() if s),
        created=int(row[10]),
        secret_hash=str(row[11]),
        jwks=json.loads(row[13]) if row[13] else None,
        post_logout_uris=tuple(u for u in str(row[14] or "").split("\n") if u),
        backchannel_logout_uri=str(row[15] or ""),
        backchannel_logout_session_required=bool(row[16]),
    )


def client_by_id(tx: Transaction, client_id: str) -> Client | None:
    """The client C{client_id}, or L{None}."""
    if not client_id or len(client_id) > 64:
        return None
    row = tx.fetchone(f"SELECT {_COLUMNS} FROM {_FROM} WHERE c.client_id = ?", client_id)
    return _client(row) if row is not None else None


def list_clients(tx: Transaction) -> list[Client]:
    """Every client, by site then client id."""
    rows = tx.fetchall(f"SELECT {_COLUMNS} FROM {_FROM} ORDER BY s.public_id, c.client_id")
    return [_client(r) for r in rows]


def create_client(
    tx: Transaction, site_public_id: str, settings: ClientSettings, now: int
) -> tuple[Client, str]:
    """
    Register a client of the site C{site_public_id}; return it and its
    secret (empty for a public client), which is not kept and cannot be
    shown again.
    """
    site_id = tx.scalar("SELECT id FROM partner_sites WHERE public_id = ?", site_public_id)
    if site_id is None:
        raise ClientError(f"there is no partner site {site_public_id!r}")
    client_id = "oidc_" + secrets.token_hex(12)
    secret = "" if settings.public or settings.jwks else secrets.token_urlsafe(32)
    tx.execute(
        "INSERT INTO oidc_clients (client_id, site_id, secret_hash, is_public, redirect_uris, "
        "sector, id_token_alg, scopes, jwks, post_logout_uris, backchannel_logout_uri, "
        "backchannel_logout_session_required, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        client_id,
        int(site_id),
        secret_hash(secret) if secret else "",
        int(settings.public),
        "\n".join(settings.redirect_uris),
        sector_of_uris(settings.redirect_uris),
        settings.id_token_alg,
        " ".join(sorted(settings.scopes)),
        json.dumps(settings.jwks) if settings.jwks else None,
        "\n".join(settings.post_logout_uris),
        settings.backchannel_logout_uri or None,
        int(settings.backchannel_logout_session_required),
        now,
    )
    client = client_by_id(tx, client_id)
    assert client is not None
    return client, secret


def set_registration_token(tx: Transaction, client_id: str, token_hash: str) -> None:
    """Keep the hash of the token that manages a dynamically registered client (RFC 7592)."""
    tx.execute(
        "UPDATE oidc_clients SET registration_token_hash = ? WHERE client_id = ?",
        token_hash,
        client_id,
    )


def client_by_registration(tx: Transaction, client_id: str, token_hash: str) -> Client | None:
    """The client C{client_id} if C{token_hash} is its registration token's hash."""
    stored = tx.scalar(
        "SELECT registration_token_hash FROM oidc_clients WHERE client_id = ?", client_id
    )
    if not stored or not hmac.compare_digest(str(stored), token_hash):
        return None
    return client_by_id(tx, client_id)


def remove_client(tx: Transaction, client_id: str, now: int) -> bool:
    """Remove a client and revoke every grant it holds; false if there was none."""
    removed = tx.execute("DELETE FROM oidc_clients WHERE client_id = ?", client_id)
    if removed:
        tx.execute(
            "UPDATE oidc_grants SET revoked = ? WHERE client_id = ? AND revoked = 0",
            now,
            client_id,
        )
    return removed > 0

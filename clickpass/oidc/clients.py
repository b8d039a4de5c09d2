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
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from clickpass.oidc import backchannel, tokens
from clickpass.oidc.keys import ALGORITHMS, Algorithm, UnknownAlgorithm, check_algorithm
from clickpass.openid.identifiers import BadRealm, sector_of
from clickpass.storage.sql import Row, Transaction

MAX_REDIRECT_URI = 2048
MAX_REDIRECT_URIS = 20
# RFC 7591 sets no limit; one line a page can show.
MAX_CLIENT_NAME = 100
# The scopes Clickpass knows; a client may be allowed a subset.
SCOPES: tuple[str, ...] = ("openid", "email", "profile")
LOOPBACK_HOSTS = ("localhost",)
DEFAULT_ALG: Algorithm = "RS256"
MAX_JWKS = 8192
MAX_CLIENT_KEYS = 10
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# Bounds of per-client token lifetimes, in seconds. An ID token lives at
# most a day: retired signing keys stay published that long (keys.py's
# longest token lifetime), so every ID token can be verified until it expires.
LIFETIME_BOUNDS = {
    "access_token": (60, 86400),
    "refresh_token": (600, 90 * 86400),
    "id_token": (60, 86400),
}
# How long a rotated-away secret keeps working unless told otherwise, and
# at most.
DEFAULT_SECRET_GRACE = 86400
MAX_SECRET_GRACE = 30 * 86400


@dataclass(frozen=True)
class Lifetimes:
    """How long a client's tokens live, in seconds."""

    access_token: int = tokens.ACCESS_TOKEN_LIFETIME
    refresh_token: int = tokens.REFRESH_TOKEN_LIFETIME
    id_token: int = tokens.ID_TOKEN_LIFETIME

    def describe(self) -> dict[str, int]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "id_token": self.id_token,
        }


DEFAULT_LIFETIMES = Lifetimes()


def check_lifetimes(given: Mapping[str, object], base: Lifetimes = DEFAULT_LIFETIMES) -> Lifetimes:
    """
    C{base} with the lifetimes in C{given} (C{access_token},
    C{refresh_token}, C{id_token}: whole seconds within L{LIFETIME_BOUNDS};
    a refresh token outliving the access token); else L{ClientError}.
    """
    values = base.describe()
    for name, value in given.items():
        if name not in LIFETIME_BOUNDS:
            raise ClientError(f"unknown token lifetime {name!r}; use {', '.join(LIFETIME_BOUNDS)}")
        low, high = LIFETIME_BOUNDS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ClientError(
                f"the {name.replace('_', ' ')} lifetime must be whole seconds from {low} to {high}"
            )
        values[name] = value
    if values["refresh_token"] < values["access_token"]:
        raise ClientError("the refresh token lifetime must be at least the access token's")
    return Lifetimes(**values)


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
    lifetimes: Lifetimes = DEFAULT_LIFETIMES
    # A JSON list of the redirect URIs, on the host that is the client's
    # sector (OpenID Connect Core 8.1): the redirect URIs may then lie on
    # several hosts. Fetched and checked before the client is stored.
    sector_identifier_uri: str = ""
    # The client's own name (RFC 7591 client_name), as its site gave it:
    # shown beside the site's name, never instead of it.
    client_name: str = ""

    @property
    def sector(self) -> str:
        """The host the client's pairwise subjects are derived for."""
        if self.sector_identifier_uri:
            return sector_of(self.sector_identifier_uri)
        return sector_of_uris(self.redirect_uris)


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
    lifetimes: Lifetimes = DEFAULT_LIFETIMES
    # The secret before the last rotation, good until C{previous_secret_expires}.
    previous_secret_hash: str = ""
    previous_secret_expires: int = 0
    sector_identifier_uri: str = ""
    # The name the site's owner gave it, whether or not its realm is
    # verified; C{site_name} is this name only once it is.
    registered_name: str = ""
    site_verified: bool = False
    client_name: str = ""

    @property
    def auth_method(self) -> str:
        """How it authenticates at the token endpoint: none, private_key_jwt or client_secret."""
        if self.public:
            return "none"
        return "private_key_jwt" if self.jwks else "client_secret"

    def authenticates(self, secret: str, now: int) -> bool:
        """
        Whether C{secret} is this confidential client's secret, or (until
        the grace period after a rotation ends) its previous one.
        """
        if self.public or not self.secret_hash:
            return False
        given = secret_hash(secret)
        current = hmac.compare_digest(given, self.secret_hash)
        previous = bool(self.previous_secret_hash) and hmac.compare_digest(
            given, self.previous_secret_hash
        )
        return current or (previous and now < self.previous_secret_expires)

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
            "sector_identifier_uri": self.sector_identifier_uri,
            "client_name": self.client_name,
            "lifetimes": self.lifetimes.describe(),
            "previous_secret_expires": self.previous_secret_expires,
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
    lifetimes: Mapping[str, object] | None = None,
    sector_identifier_uri: str = "",
    client_name: str = "",
) -> ClientSettings:
    """
    Checked client settings, or L{ClientError} naming what is wrong. (A
    sector identifier URI's document is checked by the caller, who may
    fetch: L{check_sector_document}.)
    """
    client_name = check_client_name(client_name)
    uris = tuple(dict.fromkeys(check_redirect_uri(u) for u in redirect_uris))
    if not uris:
        raise ClientError("a client needs at least one redirect URI")
    if len(uris) > MAX_REDIRECT_URIS:
        raise ClientError(f"a client has at most {MAX_REDIRECT_URIS} redirect URIs")
    if sector_identifier_uri:
        sector_identifier_uri = check_sector_identifier_uri(sector_identifier_uri)
    else:
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
        bool(backchannel_logout_session_required), check_lifetimes(lifetimes or {}),
        sector_identifier_uri, client_name,
    )  # fmt: skip


def check_client_name(name: object) -> str:
    """A client's name: a string of one line, at most L{MAX_CLIENT_NAME} characters."""
    if not isinstance(name, str):
        raise ClientError("client_name must be a string")
    name = name.strip()
    if len(name) > MAX_CLIENT_NAME:
        raise ClientError(f"client_name is longer than {MAX_CLIENT_NAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ClientError("client_name must be one line of printable characters")
    return name


def check_sector_identifier_uri(uri: str) -> str:
    """
    C{uri} if it can be a sector identifier URI: https (or http on a
    loopback address, for trials), no fragment; else L{ClientError}.
    """
    try:
        checked = check_redirect_uri(uri)
        sector_of(checked)
    except (ClientError, BadRealm) as e:
        raise ClientError(str(e).replace("redirect URI", "sector identifier URI", 1)) from None
    return checked


MAX_SECTOR_DOCUMENT = 64 * 1024


def check_sector_document(uri: str, body: bytes, redirect_uris: Iterable[str]) -> None:
    """
    The document at the sector identifier URI C{uri} must be a JSON array
    of strings holding every one of C{redirect_uris}; else L{ClientError}.
    """
    try:
        listed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ClientError(f"the sector identifier URI {uri} does not serve JSON") from None
    if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
        raise ClientError(f"the sector identifier URI {uri} must serve a JSON array of URIs")
    missing = [u for u in redirect_uris if u not in listed]
    if missing:
        raise ClientError(
            f"the sector identifier URI {uri} does not list the redirect URI {missing[0]}"
        )


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
    "c.post_logout_uris, c.backchannel_logout_uri, c.backchannel_logout_session_required, "
    "c.access_token_lifetime, c.refresh_token_lifetime, c.id_token_lifetime, "
    "c.previous_secret_hash, c.previous_secret_expires, c.sector_identifier_uri, c.client_name"
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
        lifetimes=Lifetimes(
            int(row[17] or 0) or tokens.ACCESS_TOKEN_LIFETIME,
            int(row[18] or 0) or tokens.REFRESH_TOKEN_LIFETIME,
            int(row[19] or 0) or tokens.ID_TOKEN_LIFETIME,
        ),
        previous_secret_hash=str(row[20] or ""),
        previous_secret_expires=int(row[21] or 0),
        sector_identifier_uri=str(row[22] or ""),
        registered_name=str(row[3]),
        site_verified=bool(row[12]),
        client_name=str(row[23] or ""),
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
        "backchannel_logout_session_required, access_token_lifetime, refresh_token_lifetime, "
        "id_token_lifetime, sector_identifier_uri, client_name, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        client_id,
        int(site_id),
        secret_hash(secret) if secret else "",
        int(settings.public),
        "\n".join(settings.redirect_uris),
        settings.sector,
        settings.id_token_alg,
        " ".join(sorted(settings.scopes)),
        json.dumps(settings.jwks) if settings.jwks else None,
        "\n".join(settings.post_logout_uris),
        settings.backchannel_logout_uri or None,
        int(settings.backchannel_logout_session_required),
        *_stored_lifetimes(settings.lifetimes),
        settings.sector_identifier_uri or None,
        settings.client_name,
        now,
    )
    client = client_by_id(tx, client_id)
    assert client is not None
    return client, secret


def _stored_lifetimes(lifetimes: Lifetimes) -> tuple[int, int, int]:
    """What the columns keep: 0 for a default, so a changed default reaches the client."""
    return (
        0 if lifetimes.access_token == tokens.ACCESS_TOKEN_LIFETIME else lifetimes.access_token,
        0 if lifetimes.refresh_token == tokens.REFRESH_TOKEN_LIFETIME else lifetimes.refresh_token,
        0 if lifetimes.id_token == tokens.ID_TOKEN_LIFETIME else lifetimes.id_token,
    )


def set_lifetimes(tx: Transaction, client_id: str, lifetimes: Lifetimes) -> Client | None:
    """Set C{client_id}'s token lifetimes (for tokens issued from now on); the client."""
    tx.execute(
        "UPDATE oidc_clients SET access_token_lifetime = ?, refresh_token_lifetime = ?, "
        "id_token_lifetime = ? WHERE client_id = ?",
        *_stored_lifetimes(lifetimes),
        client_id,
    )
    return client_by_id(tx, client_id)


def rotate_secret(tx: Transaction, client_id: str, grace: int, now: int) -> tuple[Client, str]:
    """
    Give a confidential client a new secret, returned once; the current one
    stays good for C{grace} seconds (0: no longer), so the partner can deploy
    the new one without a gap. L{ClientError} for a client without a secret.
    """
    client = client_by_id(tx, client_id)
    if client is None:
        raise ClientError(f"there is no OpenID Connect client {client_id!r}")
    if client.auth_method != "client_secret":
        raise ClientError(
            f"the client {client_id} has no secret to rotate (it authenticates with "
            f"{client.auth_method})"
        )
    if not 0 <= grace <= MAX_SECRET_GRACE:
        raise ClientError(f"the grace period must be 0 to {MAX_SECRET_GRACE} seconds")
    secret = secrets.token_urlsafe(32)
    tx.execute(
        "UPDATE oidc_clients SET secret_hash = ?, previous_secret_hash = ?, "
        "previous_secret_expires = ? WHERE client_id = ? AND secret_hash = ?",
        secret_hash(secret),
        client.secret_hash if grace else "",
        now + grace if grace else 0,
        client_id,
        client.secret_hash,
    )
    rotated = client_by_id(tx, client_id)
    assert rotated is not None
    if rotated.secret_hash != secret_hash(secret):
        raise ClientError(f"the client {client_id}'s secret was rotated at the same moment; retry")
    return rotated, secret


def update_client(tx: Transaction, client_id: str, settings: ClientSettings) -> Client:
    """
    Replace C{client_id}'s settings (RFC 7592 update) but its type, way of
    authenticating, token lifetimes and sector: its redirect URIs must stay
    on the host its pairwise subjects are derived from. L{ClientError}
    otherwise.
    """
    client = client_by_id(tx, client_id)
    if client is None:
        raise ClientError(f"there is no OpenID Connect client {client_id!r}")
    sector = settings.sector
    if sector != client.sector:
        raise ClientError(
            f"the redirect URIs must stay on {client.sector}: the client's subject "
            "identifiers are derived from that host"
        )
    method = "none" if settings.public else "private_key_jwt" if settings.jwks else "client_secret"
    if method != client.auth_method:
        raise ClientError(
            f"the client authenticates with {client.auth_method}; register a new client "
            "to change that"
        )
    tx.execute(
        "UPDATE oidc_clients SET redirect_uris = ?, id_token_alg = ?, scopes = ?, jwks = ?, "
        "post_logout_uris = ?, backchannel_logout_uri = ?, "
        "backchannel_logout_session_required = ?, sector_identifier_uri = ?, client_name = ? "
        "WHERE client_id = ?",
        "\n".join(settings.redirect_uris),
        settings.id_token_alg,
        " ".join(sorted(settings.scopes)),
        json.dumps(settings.jwks) if settings.jwks else None,
        "\n".join(settings.post_logout_uris),
        settings.backchannel_logout_uri or None,
        int(settings.backchannel_logout_session_required),
        settings.sector_identifier_uri or None,
        settings.client_name,
        client_id,
    )
    updated = client_by_id(tx, client_id)
    assert updated is not None
    return updated


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
    """
    Remove a client and everything issued to it, in the caller's one
    transaction: its grants with their codes, access and refresh tokens,
    the client assertions it made, the sessions recorded as signed into it
    and the back-channel logouts still waiting for it (delivered and given
    up ones stay for operators until the outbox's cleanup); false if there
    was no such client. The
    person's approval of the site stays: it is keyed by the site's realm and
    answers for its OpenID 2.0 relying party and its other clients too.
    """
    removed = tx.execute("DELETE FROM oidc_clients WHERE client_id = ?", client_id)
    if not removed:
        return False
    granted = "SELECT grant_id FROM oidc_grants WHERE client_id = ?"
    tx.execute(f"DELETE FROM oidc_tokens WHERE grant_id IN ({granted})", client_id)
    tx.execute(f"DELETE FROM oidc_codes WHERE grant_id IN ({granted})", client_id)
    tx.execute("DELETE FROM oidc_grants WHERE client_id = ?", client_id)
    tx.execute("DELETE FROM oidc_client_assertions WHERE client_id = ?", client_id)
    tx.execute("DELETE FROM oidc_session_clients WHERE client_id = ?", client_id)
    tx.execute(
        "DELETE FROM oidc_logouts WHERE client_id = ? AND state = ?", client_id, backchannel.PENDING
    )
    return True

"""
private_key_jwt client authentication (OpenID Connect Core 9, RFC 7523):
a JWT the client signs with a key it registered, naming itself as C{iss}
and C{sub}, this provider's token endpoint (or issuer) as C{aud}, a
C{jti} accepted once, and a short lifetime.

L{verify} is pure (PyJWT on the client's registered public keys); the
transaction L{record_jti} keeps each C{jti} until its assertion expires.
Only RS256 and ES256 are accepted, each with a key of its kind: never
C{none}, never an HMAC algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from clickpass.storage.sql import Transaction

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Authlib, for one, makes its assertions live an hour.
MAX_LIFETIME = 3600
LEEWAY = 30
MAX_JTI = 255


class AssertionRefused(Exception):
    """The assertion does not authenticate the client; the message says why (for logs)."""


def claimed_client(assertion: str) -> str:
    """The client an assertion claims to come from (its unverified C{sub}), or empty."""
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return ""
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else ""


def _keys_for(jwks: Mapping[str, Any], header: Mapping[str, Any]) -> list[jwt.PyJWK]:
    alg = header.get("alg")
    if alg not in ("RS256", "ES256"):
        raise AssertionRefused(f"the assertion's algorithm {alg!r} is not RS256 or ES256")
    kid = header.get("kid")
    found = []
    for data in jwks.get("keys", []):
        key = jwt.PyJWK(data)
        if key.algorithm_name == alg and (kid is None or data.get("kid") == kid):
            found.append(key)
    if not found:
        raise AssertionRefused("no registered key of the client matches the assertion")
    return found


def verify(
    assertion: str,
    client_id: str,
    jwks: Mapping[str, Any],
    audiences: Sequence[str],
    now: int,
) -> tuple[str, int]:
    """
    The assertion's C{jti} and C{exp} once it verifies as C{client_id}'s
    for one of C{audiences} at C{now}; else L{AssertionRefused}.
    """
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise AssertionRefused("the assertion is not a JWT") from None
    last: Exception | None = None
    for key in _keys_for(jwks, header):
        try:
            claims = jwt.decode(
                assertion,
                key.key,
                algorithms=[key.algorithm_name],
                audience=list(audiences),
                issuer=client_id,
                leeway=LEEWAY,
                options={"require": ["iss", "sub", "aud", "exp", "jti"], "verify_iat": False},
            )
        except jwt.PyJWTError as e:
            last = e
            continue
        return _checked(claims, client_id, now)
    raise AssertionRefused(f"the assertion does not verify: {last}")


def _checked(claims: Mapping[str, Any], client_id: str, now: int) -> tuple[str, int]:
    jti, exp = claims.get("jti"), claims.get("exp")
    if claims.get("sub") != client_id:
        raise AssertionRefused("the assertion's sub is not the client")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI:
        raise AssertionRefused("the assertion's jti is missing or too long")
    if not isinstance(exp, int) or exp > now + MAX_LIFETIME + LEEWAY:
        raise AssertionRefused(f"the assertion lives longer than {MAX_LIFETIME} s")
    return jti, exp


def record_jti(tx: Transaction, client_id: str, jti: str, expires: int) -> bool:
    """Record an assertion's C{jti}; false if it was seen before (a replay)."""
    inserted = tx.execute(
        tx.dialect.insert_ignore() + " INTO oidc_client_assertions (client_id, jti, expires) "
        "VALUES (?, ?, ?)",
        client_id,
        jti,
        expires + LEEWAY,
    )
    return inserted > 0


def remove_expired(tx: Transaction, now: int) -> int:
    """Forget the jti of assertions that have expired."""
    return tx.execute("DELETE FROM oidc_client_assertions WHERE expires <= ?", now)

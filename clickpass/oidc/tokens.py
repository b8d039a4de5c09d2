"""
Grants, authorization codes, access and refresh tokens of the OpenID
Connect provider, in the database (tables C{oidc_grants}, C{oidc_codes},
C{oidc_tokens}).

A grant is one consented authorization of a client for a person; its
code and every token issued from it belong to it, so that a reused code,
or a rotated refresh token presented again, revokes all of them at once
(RFC 9700 4.13 and 4.14). Codes live L{CODE_LIFETIME} seconds and are
single use; refresh tokens rotate on every use.

Codes and tokens are opaque random strings; only their SHA-256 is stored.
The transactions (C{tx} first) never raise to refuse: a refusal must keep
what the transaction wrote (the code marked used, the grant revoked), so
it is returned as a L{Refusal}.

This module must never store or log a code or token itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from clickpass.storage.sql import Row, Transaction

CODE_LIFETIME = 60
ACCESS_TOKEN_LIFETIME = 3600
REFRESH_TOKEN_LIFETIME = 30 * 86400
ID_TOKEN_LIFETIME = 3600
MAX_TOKEN = 512


def new_secret() -> str:
    """A new code or token: 256 random bits, base64url."""
    return secrets.token_urlsafe(32)


def hashed(secret: str) -> str:
    """What the database keeps of a code or token."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def pkce_matches(verifier: str, challenge: str) -> bool:
    """Whether C{verifier} is the S256 code verifier of C{challenge} (RFC 7636 4.6)."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed, challenge)


@dataclass(frozen=True)
class Grant:
    """One row of C{oidc_grants}."""

    grant_id: str
    client_id: str
    account_id: int
    subject: str
    scopes: tuple[str, ...]
    fields: frozenset[str]
    nonce: str
    auth_time: int
    created: int
    expires: int
    revoked: int = 0
    # The person's OpenID 2.0 identifier at the request's openid2_realm
    # (OpenID Connect Migration 1.0), or empty.
    openid2_id: str = ""
    # The OpenID Connect session id of the Clickpass session the grant was
    # given in (Back-Channel Logout 1.0), or empty.
    sid: str = ""
    # How the person had signed in (OpenID Connect acr; RFC 8176 amr values).
    acr: str = ""
    amr: tuple[str, ...] = ()
    # The hash of the Clickpass session's token the grant was given in, or
    # empty (a grant from before schema migration 15). Its refresh tokens
    # live only as long as that session (OpenID Connect Core 11: Clickpass
    # offers no offline_access).
    session_hash: str = ""


@dataclass(frozen=True)
class Refusal:
    """Why a code or refresh token was not accepted (RFC 6749 5.2)."""

    error: str
    description: str


@dataclass(frozen=True)
class Issued:
    """The grant that tokens were issued from, and the tokens (in clear, once)."""

    grant: Grant
    access_token: str
    refresh_token: str


_GRANT = (
    "g.grant_id, g.client_id, g.account_id, g.subject, g.scopes, g.fields, g.nonce, "
    "g.auth_time, g.created, g.expires, g.revoked, g.openid2_id, g.sid, g.acr, g.amr, "
    "g.session_hash"
)


def _grant(row: Row, offset: int = 0) -> Grant:
    r = row[offset:]
    return Grant(
        grant_id=str(r[0]),
        client_id=str(r[1]),
        account_id=int(r[2]),
        subject=str(r[3]),
        scopes=tuple(s for s in str(r[4]).split() if s),
        fields=frozenset(f for f in str(r[5]).split(",") if f),
        nonce=str(r[6]),
        auth_time=int(r[7]),
        created=int(r[8]),
        expires=int(r[9]),
        revoked=int(r[10]),
        openid2_id=str(r[11]),
        sid=str(r[12] or ""),
        acr=str(r[13] or ""),
        amr=tuple(m for m in str(r[14] or "").split() if m),
        session_hash=str(r[15] or ""),
    )


def start_grant(
    tx: Transaction, grant: Grant, code: str, redirect_uri: str, code_challenge: str
) -> None:
    """Record C{grant} and its authorization C{code}."""
    tx.execute(
        "INSERT INTO oidc_grants (grant_id, client_id, account_id, subject, scopes, fields, "
        "nonce, auth_time, created, expires, openid2_id, sid, acr, amr, session_hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        grant.grant_id,
        grant.client_id,
        grant.account_id,
        grant.subject,
        " ".join(grant.scopes),
        ",".join(sorted(grant.fields)),
        grant.nonce,
        grant.auth_time,
        grant.created,
        grant.expires,
        grant.openid2_id,
        grant.sid,
        grant.acr,
        " ".join(grant.amr),
        grant.session_hash,
    )
    tx.execute(
        "INSERT INTO oidc_codes (code_hash, grant_id, redirect_uri, code_challenge, expires) "
        "VALUES (?, ?, ?, ?, ?)",
        hashed(code),
        grant.grant_id,
        redirect_uri,
        code_challenge,
        grant.created + CODE_LIFETIME,
    )


def revoke_for_realm(tx: Transaction, account_id: int, realm: str, now: int) -> int:
    """
    Revoke every grant C{account_id} gave the clients of the partner site
    whose realm is C{realm} (its approval was forgotten); return how many.
    """
    return tx.execute(
        "UPDATE oidc_grants SET revoked = ? WHERE account_id = ? AND revoked = 0 AND client_id IN "
        "(SELECT c.client_id FROM oidc_clients c JOIN partner_sites s ON s.id = c.site_id "
        "WHERE s.realm = ?)",
        now,
        account_id,
        realm,
    )


def session_ended(tx: Transaction, grant: Grant, now: int) -> bool:
    """
    Whether the Clickpass session C{grant} was given in has ended: signed
    out, ended from another session or by a password change or reset,
    the account deleted, or expired. Its refresh tokens end with it
    (Back-Channel Logout 1.0 2.7, for tokens without offline_access).
    """
    if not grant.session_hash:
        return False
    expires = tx.scalar("SELECT expires FROM sessions WHERE token_hash = ?", grant.session_hash)
    return expires is None or int(expires) <= now


def revoke_grant(tx: Transaction, grant_id: str, now: int) -> None:
    """Revoke a grant: every token issued from it stops working."""
    tx.execute(
        "UPDATE oidc_grants SET revoked = ? WHERE grant_id = ? AND revoked = 0", now, grant_id
    )


def _issue(
    tx: Transaction, grant: Grant, now: int, access_lifetime: int, refresh_lifetime: int
) -> Issued:
    access, refresh = new_secret(), new_secret()
    for kind, secret, lifetime in (
        ("access", access, access_lifetime),
        ("refresh", refresh, refresh_lifetime),
    ):
        tx.execute(
            "INSERT INTO oidc_tokens (token_hash, kind, grant_id, created, expires) "
            "VALUES (?, ?, ?, ?, ?)",
            hashed(secret),
            kind,
            grant.grant_id,
            now,
            now + lifetime,
        )
    tx.execute(
        "UPDATE oidc_grants SET expires = ? WHERE grant_id = ?",
        now + refresh_lifetime,
        grant.grant_id,
    )
    return Issued(grant, access, refresh)


def redeem_code(
    tx: Transaction,
    code: str,
    client_id: str,
    redirect_uri: str,
    verifier: str,
    now: int,
    access_lifetime: int = ACCESS_TOKEN_LIFETIME,
    refresh_lifetime: int = REFRESH_TOKEN_LIFETIME,
) -> Issued | Refusal:
    """
    Exchange an authorization code for tokens (living as long as the
    client's lifetimes say). The code is used up by the first attempt,
    right or wrong; a second attempt revokes the grant.
    """
    row = tx.fetchone(
        f"SELECT c.redirect_uri, c.code_challenge, c.expires, c.used, {_GRANT} "
        "FROM oidc_codes c JOIN oidc_grants g ON g.grant_id = c.grant_id WHERE c.code_hash = ?",
        hashed(code),
    )
    if row is None:
        return Refusal("invalid_grant", "the authorization code is not valid")
    grant = _grant(row, 4)
    claimed = tx.execute(
        "UPDATE oidc_codes SET used = ? WHERE code_hash = ? AND used = 0", now, hashed(code)
    )
    if not claimed:
        revoke_grant(tx, grant.grant_id, now)
        return Refusal(
            "invalid_grant", "the authorization code was already used; its tokens are revoked"
        )
    refusal = _code_refusal(row, grant, client_id, redirect_uri, verifier, now)
    if refusal is not None:
        return refusal
    return _issue(tx, grant, now, access_lifetime, refresh_lifetime)


def _code_refusal(
    row: Row, grant: Grant, client_id: str, redirect_uri: str, verifier: str, now: int
) -> Refusal | None:
    stored_redirect, challenge, expires = str(row[0]), str(row[1]), int(row[2])
    if grant.client_id != client_id:
        return Refusal("invalid_grant", "the authorization code was issued to another client")
    if expires <= now:
        return Refusal("invalid_grant", "the authorization code has expired")
    if grant.revoked:
        return Refusal("invalid_grant", "the authorization code was revoked")
    if redirect_uri != stored_redirect:
        return Refusal("invalid_grant", "redirect_uri is not the one the code was issued for")
    if challenge and not verifier:
        return Refusal("invalid_grant", "code_verifier is missing")
    if challenge and not pkce_matches(verifier, challenge):
        return Refusal("invalid_grant", "code_verifier does not match the code_challenge")
    if verifier and not challenge:
        return Refusal("invalid_grant", "code_verifier given, but the request had no challenge")
    return None


def refresh(
    tx: Transaction,
    token: str,
    client_id: str,
    now: int,
    access_lifetime: int = ACCESS_TOKEN_LIFETIME,
    refresh_lifetime: int = REFRESH_TOKEN_LIFETIME,
) -> Issued | Refusal:
    """
    Exchange a refresh token for new tokens (it rotates). A rotated refresh
    token presented again revokes its grant.
    """
    row = tx.fetchone(
        f"SELECT t.kind, t.expires, t.used, t.revoked, {_GRANT} FROM oidc_tokens t "
        "JOIN oidc_grants g ON g.grant_id = t.grant_id WHERE t.token_hash = ?",
        hashed(token),
    )
    if row is None or str(row[0]) != "refresh":
        return Refusal("invalid_grant", "the refresh token is not valid")
    grant = _grant(row, 4)
    if grant.client_id != client_id:
        return Refusal("invalid_grant", "the refresh token was issued to another client")
    if int(row[3]) or grant.revoked:
        return Refusal("invalid_grant", "the refresh token was revoked")
    if int(row[1]) <= now:
        return Refusal("invalid_grant", "the refresh token has expired")
    if session_ended(tx, grant, now):
        revoke_grant(tx, grant.grant_id, now)
        return Refusal("invalid_grant", "the session the refresh token was issued in has ended")
    claimed = tx.execute(
        "UPDATE oidc_tokens SET used = ? WHERE token_hash = ? AND used = 0", now, hashed(token)
    )
    if not claimed:
        revoke_grant(tx, grant.grant_id, now)
        return Refusal(
            "invalid_grant", "the refresh token was already used; every token of its grant "
            "is revoked"
        )  # fmt: skip
    return _issue(tx, grant, now, access_lifetime, refresh_lifetime)


@dataclass(frozen=True)
class TokenInfo:
    """What the database knows of a live access or refresh token."""

    kind: str
    grant: Grant
    created: int
    expires: int


def live_token(tx: Transaction, token: str, now: int) -> TokenInfo | None:
    """
    The token C{token} if it is live: known, not expired, not revoked, not
    rotated away (a refresh token), its grant not revoked.
    """
    if not token or len(token) > MAX_TOKEN:
        return None
    row = tx.fetchone(
        f"SELECT t.kind, t.created, t.expires, t.used, t.revoked, {_GRANT} FROM oidc_tokens t "
        "JOIN oidc_grants g ON g.grant_id = t.grant_id WHERE t.token_hash = ?",
        hashed(token),
    )
    if row is None:
        return None
    kind, created, expires, used, revoked = str(row[0]), int(row[1]), int(row[2]), row[3], row[4]
    grant = _grant(row, 5)
    if expires <= now or int(revoked) or grant.revoked or (kind == "refresh" and int(used)):
        return None
    if kind == "refresh" and session_ended(tx, grant, now):
        return None
    return TokenInfo(kind, grant, created, expires)


def revoke_token(tx: Transaction, token: str, client_id: str, now: int) -> bool:
    """
    Revoke C{token} if it is C{client_id}'s (RFC 7009): a refresh token
    revokes its whole grant, an access token itself. False when there was
    nothing of this client's to revoke.
    """
    info = live_token(tx, token, now)
    if info is None or info.grant.client_id != client_id:
        return False
    if info.kind == "refresh":
        revoke_grant(tx, info.grant.grant_id, now)
    else:
        tx.execute("UPDATE oidc_tokens SET revoked = ? WHERE token_hash = ?", now, hashed(token))
    return True


def remove_expired(tx: Transaction, now: int) -> int:
    """Delete expired codes, tokens and grants; return how many rows went."""
    removed = tx.execute("DELETE FROM oidc_codes WHERE expires <= ?", now - CODE_LIFETIME)
    removed += tx.execute("DELETE FROM oidc_tokens WHERE expires <= ?", now)
    removed += tx.execute("DELETE FROM oidc_grants WHERE expires <= ?", now)
    return removed

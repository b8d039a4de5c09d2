"""
Single-use tokens mailed to a person: verifying an address, resetting a
password, confirming a new address and undoing an address change.

A token is 32 random bytes (URL-safe base64); only its SHA-256 is stored,
with the account and the purpose it was made for, its expiry and when it
was used. A token is good for one purpose, one account and one use, until
it expires; anything else is refused with L{TokenRefused}, which says
which of these went wrong and what the person can do next. A used token
stays stored (marked used) until it has expired, so a second click is told
"already used" rather than "not valid".

Functions here run inside a transaction they are given. This module must
never keep a token in clear, send anything, or render a page.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from clickpass.i18n import N_
from clickpass.storage.sql import Transaction

VERIFY = "verify"
RESET = "reset"
CHANGE_EMAIL = "change_email"
REVERT_EMAIL = "revert_email"
PURPOSES = (VERIFY, RESET, CHANGE_EMAIL, REVERT_EMAIL)

# How long a used or expired token is kept, to say "expired" or "used".
KEEP_AFTER_EXPIRY = 7 * 24 * 3600

_WELL_FORMED = re.compile(r"^[A-Za-z0-9_-]{32,64}$")

# What a person can do next, per purpose: the words and where they lead.
NEXT_STEPS: dict[str, tuple[str, str]] = {
    VERIFY: (N_("Sign in and ask for a new link from your account page."), "/account"),
    RESET: (N_("Ask for a new password reset link."), "/forgot"),
    CHANGE_EMAIL: (N_("Sign in and change your address again from your account page."), "/account"),
    REVERT_EMAIL: (
        N_(
            "If someone else changed your address, reset your password from the sign-in page "
            "with the address the account has now, or ask the operator of this Clickpass."
        ),
        "/signin",
    ),
}

REASONS = {
    "invalid": N_(
        "This link is not valid: it may have been cut short or changed. Copy the "
        "whole link from the message and try again."
    ),
    "expired": N_("This link has expired."),
    "used": N_("This link was already used; each link works once."),
    "other_account": N_(
        "This link is for another Clickpass account than the one you are "
        "signed in to. Sign out, then open the link again."
    ),
}


class TokenRefused(Exception):
    """
    A token that cannot be used: C{reason} is one of L{REASONS}; the
    message says what went wrong and what to do next.
    """

    def __init__(self, reason: str, purpose: str) -> None:
        self.reason = reason
        self.purpose = purpose
        self.next_step, self.next_url = NEXT_STEPS.get(purpose, NEXT_STEPS[VERIFY])
        super().__init__(REASONS[reason])


@dataclass(frozen=True)
class Token:
    """What a stored token was made for."""

    account_id: int
    purpose: str
    email: str
    next_url: str
    created: int
    expires: int


def token_hash(token: str) -> str:
    """The form in which a token is stored and looked up."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def issue(
    tx: Transaction,
    account_id: int,
    purpose: str,
    lifetime: int,
    now: int,
    email: str = "",
    next_url: str = "",
) -> str:
    """
    Make a token for C{account_id} and C{purpose} that expires C{lifetime}
    seconds from C{now}, and return it (the only time it exists in clear).
    C{email} is the address it is about (the one to verify, the new or the
    old one); C{next_url} a path to continue to once it is used.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    token = secrets.token_urlsafe(32)
    tx.execute(
        "INSERT INTO account_tokens (token_hash, account_id, purpose, email, next_url, "
        "created, expires) VALUES (?, ?, ?, ?, ?, ?, ?)",
        token_hash(token),
        account_id,
        purpose,
        email[:254],
        next_url[:2048] if len(next_url) <= 2048 else "",
        now,
        now + lifetime,
    )
    return token


def _row(tx: Transaction, token: str, purpose: str) -> tuple[Any, ...]:
    if not _WELL_FORMED.match(token):
        raise TokenRefused("invalid", purpose)
    wanted = token_hash(token)
    row = tx.fetchone(
        "SELECT token_hash, account_id, purpose, email, next_url, created, expires, used "
        "FROM account_tokens WHERE token_hash = ?",
        wanted,
    )
    # The lookup is by hash; the comparison is made again in constant time
    # so that no path compares the secret byte by byte.
    if row is None or not hmac.compare_digest(str(row[0]), wanted) or str(row[2]) != purpose:
        raise TokenRefused("invalid", purpose)
    return tuple(row)


def peek(
    tx: Transaction, token: str, purpose: str, now: int, account_id: int | None = None
) -> Token:
    """
    The token's record, if it could be used now (by C{account_id}, when
    given); otherwise L{TokenRefused}. Nothing is changed.
    """
    row = _row(tx, token, purpose)
    if int(row[7]):
        raise TokenRefused("used", purpose)
    if int(row[6]) <= now:
        raise TokenRefused("expired", purpose)
    if account_id is not None and int(row[1]) != account_id:
        raise TokenRefused("other_account", purpose)
    return Token(int(row[1]), str(row[2]), str(row[3]), str(row[4]), int(row[5]), int(row[6]))


def consume(
    tx: Transaction, token: str, purpose: str, now: int, account_id: int | None = None
) -> Token:
    """
    Use the token: as L{peek}, and mark it used. Of two uses at once, one
    wins: the other finds it used (the update is conditional).
    """
    found = peek(tx, token, purpose, now, account_id)
    changed = tx.execute(
        "UPDATE account_tokens SET used = ? WHERE token_hash = ? AND used = 0",
        now,
        token_hash(token),
    )
    if changed != 1:
        raise TokenRefused("used", purpose)
    return found


def use_up(tx: Transaction, account_id: int, purpose: str, now: int) -> int:
    """Mark every unused token of C{account_id} for C{purpose} used; return how many."""
    count: int = tx.execute(
        "UPDATE account_tokens SET used = ? WHERE account_id = ? AND purpose = ? AND used = 0",
        now,
        account_id,
        purpose,
    )
    return count


def cleanup(tx: Transaction, now: int) -> int:
    """Forget tokens that expired more than L{KEEP_AFTER_EXPIRY} ago; return how many."""
    count: int = tx.execute(
        "DELETE FROM account_tokens WHERE expires <= ?", now - KEEP_AFTER_EXPIRY
    )
    return count


__all__ = [
    "CHANGE_EMAIL",
    "PURPOSES",
    "RESET",
    "REVERT_EMAIL",
    "VERIFY",
    "Token",
    "TokenRefused",
    "cleanup",
    "consume",
    "issue",
    "peek",
    "token_hash",
    "use_up",
]

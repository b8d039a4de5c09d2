"""
The security event log of each person: what happened to their account
(sign-ins, failed sign-ins, a new browser, forgotten approvals, resets,
email and password changes), shown to them on the account page and kept
for a limited time (C{[accounts] security_events_days}).

Any flow records an event in its own transaction with L{record}, so the
event exists exactly when the change it describes was committed. Only
the kinds in L{KINDS} are accepted: a misspelt kind fails at once rather
than showing an unlabelled line to the person.

This module holds storage functions and pure helpers only; it must never
render pages, read requests or send mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickpass.i18n import N_
from clickpass.storage.sql import Transaction

# Every kind of event, and how the account page says it. Flows outside
# accounts (password reset, email change, second factors) record the
# kinds listed under "recorded by other flows".
KINDS: dict[str, str] = {
    # Recorded by accounts and the account pages.
    "signup": N_("Account created"),
    "signin": N_("Signed in"),
    "signin_failed": N_("Failed sign-in (wrong password)"),
    "new_browser": N_("Signed in from a new browser"),
    "session_ended": N_("Signed out a session from the account page"),
    "other_sessions_ended": N_("Signed out every other session"),
    "approval_forgotten": N_("Forgot a site's approval"),
    "site_disconnected": N_("Disconnected a site"),
    "site_unlinked": N_("A site disconnected you (its approval was forgotten)"),
    "account_disabled": N_("Account disabled by an operator"),
    "account_enabled": N_("Account enabled by an operator"),
    # Recorded by other flows.
    "password_reset_requested": N_("Password reset link requested"),
    "password_reset": N_("Password reset with an emailed link"),
    "password_changed": N_("Password changed"),
    "email_verified": N_("Email address verified"),
    "email_change_requested": N_("Email change requested"),
    "email_changed": N_("Email address changed"),
    "email_change_reverted": N_("Email change reverted"),
    "signup_attempt_taken": N_("Someone tried to create an account with your address"),
    "reset_link_by_operator": N_("An operator made a password reset link"),
    "email_lost": N_("Your unconfirmed address went to the account that verified it"),
    "link_refused_unverified": N_("A sign-in provider was not linked: your address is unconfirmed"),
    "reauth_refused": N_("Confirming it was you with a sign-in provider was refused"),
    "mfa_enabled": N_("Second factor turned on"),
    "mfa_disabled": N_("Second factor turned off"),
    "passkey_added": N_("Passkey added"),
    "passkey_removed": N_("Passkey removed"),
    "passkey_refused": N_("A passkey or security key was refused"),
    "recovery_code_used": N_("Recovery code used"),
    "code_refused": N_("A second-factor code was refused"),
}

DETAIL_LENGTH = 255
BROWSER_LENGTH = 128
ADDRESS_LENGTH = 64


@dataclass(frozen=True)
class SecurityEvent:
    """One line of a person's security log."""

    kind: str
    created: int
    client_address: str
    browser: str
    detail: str

    @property
    def label(self) -> str:
        return KINDS.get(self.kind, self.kind)


def record(
    tx: Transaction,
    account_id: int,
    kind: str,
    now: int,
    *,
    client_address: str = "",
    browser: str = "",
    detail: str = "",
) -> None:
    """
    Add an event to C{account_id}'s log, in the caller's transaction.
    C{kind} must be one of L{KINDS} (a C{ValueError} otherwise); the
    address, browser and detail are cut to their columns' sizes.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown security event kind {kind!r}")
    tx.execute(
        "INSERT INTO security_events (account_id, kind, created, client_address, browser, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        account_id,
        kind,
        now,
        client_address[:ADDRESS_LENGTH],
        browser[:BROWSER_LENGTH],
        detail[:DETAIL_LENGTH],
    )


def recent(tx: Transaction, account_id: int, limit: int = 50) -> list[SecurityEvent]:
    """C{account_id}'s latest events, newest first."""
    rows = tx.fetchall(
        "SELECT kind, created, client_address, browser, detail FROM security_events "
        "WHERE account_id = ? ORDER BY created DESC, id DESC LIMIT ?",
        account_id,
        limit,
    )
    return [SecurityEvent(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]


def expire(tx: Transaction, before: int) -> int:
    """Delete every event older than C{before}; return how many."""
    return tx.execute("DELETE FROM security_events WHERE created < ?", before)


def forget_account(tx: Transaction, account_id: int) -> None:
    """Delete an account's log and the browsers it knew (the account is being deleted)."""
    tx.execute("DELETE FROM security_events WHERE account_id = ?", account_id)
    tx.execute("DELETE FROM known_browsers WHERE account_id = ?", account_id)


def note_browser(tx: Transaction, account_id: int, browser_hash: str, now: int) -> bool:
    """
    Remember that C{account_id} signed in from the browser whose cookie
    hashes to C{browser_hash}; true when the account had signed in from
    other browsers before but never from this one (a new browser worth
    telling the person about). The first browser an account ever uses is
    not news.
    """
    seen = tx.fetchone(
        "SELECT 1 FROM known_browsers WHERE account_id = ? AND browser_hash = ?",
        account_id,
        browser_hash,
    )
    if seen is not None:
        tx.execute(
            "UPDATE known_browsers SET last_seen = ? WHERE account_id = ? AND browser_hash = ?",
            now,
            account_id,
            browser_hash,
        )
        return False
    others = tx.fetchone("SELECT 1 FROM known_browsers WHERE account_id = ? LIMIT 1", account_id)
    tx.execute(
        tx.dialect.insert_ignore() + " INTO known_browsers "
        "(account_id, browser_hash, first_seen, last_seen) VALUES (?, ?, ?, ?)",
        account_id,
        browser_hash,
        now,
        now,
    )
    return others is not None


# User-Agent strings, named the way a person knows their browser. Order
# matters: Edge and Opera say "Chrome" too, Chrome says "Safari".
_BROWSERS = (
    ("Edge", re.compile(r"\bEdg(e|A|iOS)?/")),
    ("Opera", re.compile(r"\b(OPR|Opera)/")),
    ("Firefox", re.compile(r"\b(Firefox|FxiOS)/")),
    ("Chrome", re.compile(r"\b(HeadlessChrome|Chrome|Chromium|CriOS)/")),
    ("Safari", re.compile(r"\bVersion/[\d.]+.*Safari/")),
)
_SYSTEMS = (
    ("Android", re.compile(r"\bAndroid\b")),
    ("iOS", re.compile(r"\b(iPhone|iPad|iPod)\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("macOS", re.compile(r"\bMac OS X\b|\bMacintosh\b")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("Linux", re.compile(r"\bLinux\b")),
)


def describe_browser(user_agent: str) -> str:
    """
    A short name for the browser behind a User-Agent header ("Firefox on
    Linux"); for anything unrecognised, the start of the header itself
    (cut to fit), or "unknown browser" when there is none.
    """
    agent = user_agent.strip()
    if not agent:
        return "unknown browser"
    browser = next((name for name, pattern in _BROWSERS if pattern.search(agent)), None)
    system = next((name for name, pattern in _SYSTEMS if pattern.search(agent)), None)
    if browser is None:
        printable = "".join(c for c in agent if c.isprintable())
        return printable[:60] or "unknown browser"
    return f"{browser} on {system}" if system else browser


__all__ = [
    "KINDS",
    "SecurityEvent",
    "describe_browser",
    "expire",
    "forget_account",
    "note_browser",
    "recent",
    "record",
]

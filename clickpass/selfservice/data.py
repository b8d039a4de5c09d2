"""
Everything Clickpass holds about one person, read out (L{export}) or
removed (L{erase}), across the features that keep a part of it: the
account and its sessions, security log and mailed links (accounts),
per-site identifiers and approvals (OpenID), connected partner sites and
site administration (partners), upstream identities (upstream sign-in),
second factors (mfa), and mail waiting to be sent to the address.

Both are storage functions run in one transaction, so an export is one
consistent picture and an erasure happens whole or not at all. Erasing
tells every connected partner site through its C{user.deleted} webhook
(queued in the same transaction, delivered by the node's outbox).

This module must never render pages or read requests.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from clickpass.accounts import events
from clickpass.accounts.service import AccountError
from clickpass.i18n import N_, Text
from clickpass.openid import approvals
from clickpass.openid.identifiers import identifier_url
from clickpass.partners import sites
from clickpass.storage.sql import Transaction

EXPORT_FORMAT = "clickpass-account-export/1"


class ErasureRefused(AccountError):
    """The account cannot be deleted yet; the message says what to do first."""


@dataclass(frozen=True)
class Erased:
    """What an erasure did: the address freed, and the partner sites told."""

    email: str
    sites_told: tuple[str, ...]


def _rows(tx: Transaction, sql: str, names: tuple[str, ...], *args: object) -> list[dict[str, Any]]:
    return [dict(zip(names, row, strict=True)) for row in tx.fetchall(sql, *args)]


def _account_row(tx: Transaction, account_id: int) -> dict[str, Any] | None:
    found = _rows(
        tx,
        "SELECT id, uid, email, display_name, created, disabled, email_verified "
        "FROM accounts WHERE id = ?",
        ("id", "uid", "email", "display_name", "created", "disabled", "email_verified"),
        account_id,
    )
    if not found:
        return None
    account = found[0]
    account["disabled"] = bool(account["disabled"])
    account["email_verified"] = bool(account["email_verified"])
    return account


def _mailed_links(tx: Transaction, account_id: int) -> list[dict[str, Any]]:
    # What each link was for and when; never the token (only its hash is
    # kept, and that opens the link to whoever has it).
    return _rows(
        tx,
        "SELECT purpose, email, created, expires, used FROM account_tokens "
        "WHERE account_id = ? ORDER BY created",
        ("purpose", "email", "created", "expires", "used"),
        account_id,
    )


def _second_factors(tx: Transaction, account_id: int) -> dict[str, Any]:
    # That an app is set up and when, never its secret; the recovery codes'
    # dates, never their hashes; trusted browsers and how each session
    # signed in, never the cookies' hashes.
    app = _rows(
        tx,
        "SELECT created, confirmed FROM mfa_totp WHERE account_id = ?",
        ("created", "confirmed"),
        account_id,
    )
    return {
        "authenticator_app": app[0] if app else None,
        "recovery_codes": _rows(
            tx,
            "SELECT created, used FROM mfa_recovery_codes WHERE account_id = ? ORDER BY id",
            ("created", "used"),
            account_id,
        ),
        "trusted_browsers": _rows(
            tx,
            "SELECT created, expires, client_address FROM mfa_trusted_browsers "
            "WHERE account_id = ? ORDER BY created",
            ("created", "expires", "client_address"),
            account_id,
        ),
        "session_sign_ins": _rows(
            tx,
            "SELECT methods, password_time, factor_time, expires FROM mfa_session_auth "
            "WHERE account_id = ? ORDER BY password_time",
            ("methods", "password_time", "factor_time", "expires"),
            account_id,
        ),
        "second_steps_waiting": _rows(
            tx,
            "SELECT created, expires, first_method FROM mfa_pending "
            "WHERE account_id = ? ORDER BY created",
            ("created", "expires", "first_method"),
            account_id,
        ),
        # Passkeys and security keys: their names and dates, never their keys.
        "security_keys": _rows(
            tx,
            "SELECT name, passkey, backed_up, created, last_used FROM mfa_webauthn_credentials "
            "WHERE account_id = ? ORDER BY created",
            ("name", "passkey", "backed_up", "created", "last_used"),
            account_id,
        ),
    }


def _upstream(tx: Transaction, account_id: int) -> list[dict[str, Any]]:
    found = _rows(
        tx,
        "SELECT provider, subject, email, email_verified, display_name, claims, created, "
        "last_used FROM upstream_identities WHERE account_id = ? ORDER BY created",
        (
            "provider",
            "subject",
            "email",
            "email_verified",
            "display_name",
            "claims",
            "created",
            "last_used",
        ),
        account_id,
    )
    for identity in found:
        identity["email_verified"] = bool(identity["email_verified"])
        with contextlib.suppress(ValueError):  # else kept as the text it is
            identity["claims"] = json.loads(identity["claims"])
    return found


def export(tx: Transaction, account_id: int, base_url: str) -> dict[str, Any] | None:
    """
    Everything held about C{account_id}, as JSON-ready values (L{None}
    when there is no such account). Password hash, session tokens, mailed
    links' tokens, the second factor's secret and recovery codes are left
    out: they are secrets, not information about the person.
    """
    account = _account_row(tx, account_id)
    if account is None:
        return None
    return {
        "format": EXPORT_FORMAT,
        "account": account,
        "approvals": [
            {
                "realm": a.realm,
                "fields": list(a.fields),
                "created": a.created,
                "last_used": a.last_used,
            }
            for a in approvals.remembered(tx, account_id)
        ],
        "site_identifiers": [
            dict(row, identifier=identifier_url(base_url, row["opaque"]))
            for row in _rows(
                tx,
                "SELECT opaque, sector, created, last_used FROM site_identifiers "
                "WHERE account_id = ? ORDER BY created",
                ("opaque", "sector", "created", "last_used"),
                account_id,
            )
        ],
        "connected_sites": [
            {
                "site": site.public_id,
                "name": site.display_name,
                "realm": site.realm,
                "identifier": identifier_url(base_url, link.opaque),
                "outcome": link.outcome,
                "created": link.created,
                "last_signin": link.last_signin,
            }
            for site, link in sites.links_for_account(tx, account_id)
        ],
        "partner_sites_administered": [
            {"site": site.public_id, "name": site.display_name}
            for site in sites.sites_for_admin(tx, account_id)
        ],
        "upstream_identities": _upstream(tx, account_id),
        "sessions": _rows(
            tx,
            "SELECT s.created, s.expires, s.client_address, d.browser, d.last_seen "
            "FROM sessions s LEFT JOIN session_details d ON d.token_hash = s.token_hash "
            "WHERE s.account_id = ? ORDER BY s.created",
            ("created", "expires", "client_address", "browser", "last_seen"),
            account_id,
        ),
        "security_events": [
            {
                "kind": e.kind,
                "what": e.label,
                "created": e.created,
                "client_address": e.client_address,
                "browser": e.browser,
                "detail": e.detail,
            }
            for e in events.recent(tx, account_id, limit=100_000)
        ],
        "mailed_links": _mailed_links(tx, account_id),
        "second_factors": _second_factors(tx, account_id),
    }


# The tables whose rows are one person's, found by account_id.
_TABLES_BY_ACCOUNT = (
    "approvals",
    "site_identifiers",
    "upstream_identities",
    "upstream_pending",
    "account_tokens",
    "mfa_totp",
    "mfa_recovery_codes",
    "mfa_pending",
    "mfa_trusted_browsers",
    "mfa_webauthn_credentials",
    "mfa_webauthn_challenges",
)


def _leave_partner_admin(tx: Transaction, account_id: int, now: int) -> None:
    for site in sites.sites_for_admin(tx, account_id):
        if sites.remove_admin(tx, site.id, account_id, now) == "last":
            raise ErasureRefused(
                Text(
                    N_(
                        "You are the only admin of the partner site %(site)s: add another "
                        "admin or delete the site first, then delete your account."
                    ),
                    site=site.display_name,
                )
            )


def erase(tx: Transaction, account_id: int, base_url: str, now: int) -> Erased | None:
    """
    Remove C{account_id} and everything held about it, telling each
    connected partner site (C{user.deleted}); L{None} when there is no
    such account. Refused (L{ErasureRefused}, nothing changed) while the
    person is the last admin of a partner site.
    """
    account = _account_row(tx, account_id)
    if account is None:
        return None
    _leave_partner_admin(tx, account_id, now)
    told = []
    for site, link in sites.links_for_account(tx, account_id):
        sites.request_deletion(tx, site, link, identifier_url(base_url, link.opaque), now)
        told.append(site.public_id)
    for table in _TABLES_BY_ACCOUNT:
        tx.execute(f"DELETE FROM {table} WHERE account_id = ?", account_id)
    for table in ("session_details", "mfa_session_auth"):
        tx.execute(
            f"DELETE FROM {table} WHERE account_id = ? OR token_hash IN "
            "(SELECT token_hash FROM sessions WHERE account_id = ?)",
            account_id,
            account_id,
        )
    tx.execute("DELETE FROM sessions WHERE account_id = ?", account_id)
    events.forget_account(tx, account_id)
    email = str(account["email"])
    tx.execute(
        "DELETE FROM signin_failures WHERE (scope IN ('account', 'link-address') AND subject = ?) "
        "OR (scope = 'second-factor' AND subject = ?)",
        email,
        str(account_id),
    )
    tx.execute("DELETE FROM mail_outbox WHERE recipient = ?", email)
    tx.execute("DELETE FROM accounts WHERE id = ?", account_id)
    return Erased(email, tuple(told))


__all__ = ["EXPORT_FORMAT", "Erased", "ErasureRefused", "erase", "export"]

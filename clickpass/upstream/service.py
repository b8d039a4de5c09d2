"""
The upstream sign-in flow: start (a pending login in the database, the
browser sent to the provider), finish (the pending login claimed once, the
code exchanged, the identity checked, then an account found, created or
linked in one transaction), and the linked identities of an account.

Rules it keeps:
- a pending login is bound to the browser that started it, used at most
  once, and expires after C{pending_lifetime};
- a new account is created only from a provider's checked claims, and its
  email only when the provider marked it verified;
- an identity is linked to an existing account only in a flow started by
  that account while signed in, never because an email matches;
- unlinking always leaves the account a way to sign in;
- a provider's verified address goes to the new account even when an
  account holds it unverified (that account loses it); an account that
  verified it keeps it;
- an identity is never linked into an account whose address is unverified;
- a re-authentication (a signed-in person confirming it is them before a
  sensitive change) is bound to the browser and the session that started
  it, and passes only with an identity already linked to that account,
  signed in at the provider after it started (its auth_time, where given).

Nothing is written when any check fails. This module must never render
pages or read requests: the web layer does that.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from clickpass.accounts import events
from clickpass.i18n import N_, Text
from clickpass.storage.sql import IntegrityError, Storage, Transaction
from clickpass.upstream.connectors import Connector, UpstreamIdentity
from clickpass.upstream.http import UpstreamError
from clickpass.upstream.settings import UpstreamSettings

log = Logger()

SIGN_IN = "signin"
# Where an unverified account's address goes when its verified owner takes it.
RELEASED_DOMAIN = "released.invalid"
LINK = "link"
# A signed-in person confirming it is them (step-up) through a linked provider.
REAUTH = "reauth"
MAX_PARAM = 2048
PLACEHOLDER_DOMAIN = "upstream.invalid"
# The reason of the refusal to link into an account whose address is unverified.
UNVERIFIED = "email_unverified"


class FlowError(Exception):
    """The sign-in cannot go on; the message is one sentence for the person."""

    def __init__(self, message: str, reason: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status


class AddressLost(Protocol):
    """
    Tells the address an unverified account lost to its verified owner, in
    the transaction that takes it (the mail outbox, through the accounts'
    flows): C{(tx, address, provider's display name, now)}.
    """

    def __call__(self, tx: Transaction, address: str, provider: str, now: int) -> None: ...


@dataclass(frozen=True)
class Started:
    """Where to send the browser, and the binding cookie value it must keep."""

    url: str
    browser: str


@dataclass(frozen=True)
class Finished:
    account_id: int
    outcome: str  # "signed_in", "created", "linked", "already_linked", "reauthenticated"
    next_url: str
    provider: str


@dataclass(frozen=True)
class LinkedIdentity:
    id: int
    provider: str
    email: str
    email_verified: bool
    display_name: str
    created: int
    last_used: int


@dataclass(frozen=True)
class _Pending:
    provider: str
    nonce: str
    verifier: str
    intent: str
    account_id: int | None
    next_url: str
    created: int


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _binding(browser: str, session: str) -> str:
    """
    The stored binding of a pending login: the browser's cookie, and for a
    re-authentication the session's token too (so another session in the
    same browser cannot finish it).
    """
    return _hash(browser) if not session else _hash(browser + "\n" + session)


# Transactions (run on the storage's pool).


def _insert_pending(
    tx: Transaction,
    state_hash: str,
    browser_hash: str,
    provider: str,
    nonce: str,
    verifier: str,
    intent: str,
    account_id: int | None,
    next_url: str,
    now: int,
    forget_before: int,
) -> None:
    tx.execute("DELETE FROM upstream_pending WHERE created < ?", forget_before)
    tx.execute(
        "INSERT INTO upstream_pending (state_hash, browser_hash, provider, nonce, verifier, "
        "intent, account_id, next_url, created, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        state_hash,
        browser_hash,
        provider,
        nonce,
        verifier,
        intent,
        account_id,
        next_url,
        now,
    )


def _claim_pending(
    tx: Transaction,
    state_hash: str,
    bindings: tuple[str, str],
    provider: str,
    now: int,
    lifetime: int,
) -> _Pending:
    """
    Use up the pending login of C{state_hash}; C{bindings}: what its
    binding must be, for a sign-in or link and for a re-authentication.
    """
    row = tx.fetchone(
        "SELECT browser_hash, provider, nonce, verifier, intent, account_id, next_url, "
        "created, used FROM upstream_pending WHERE state_hash = ?",
        state_hash,
    )
    if row is None or int(row[7]) + lifetime < now:
        raise FlowError(
            N_("This sign-in is unknown or has expired. Start again from the sign-in page."),
            "unknown_state",
        )
    if int(row[8]):
        raise FlowError(
            N_("This sign-in was already used. Start again from the sign-in page."),
            "replayed_state",
        )
    if str(row[1]) != provider:
        raise FlowError(
            N_(
                "This sign-in was started with another provider. Start again from the sign-in page."
            ),
            "wrong_provider",
        )
    expected = bindings[1] if str(row[4]) == REAUTH else bindings[0]
    if not secrets.compare_digest(str(row[0]), expected):
        raise FlowError(
            N_("This sign-in was started in another browser. Start again from this browser."),
            "wrong_browser",
        )
    claimed = tx.execute(
        "UPDATE upstream_pending SET used = ? WHERE state_hash = ? AND used = 0", now, state_hash
    )
    if claimed != 1:
        raise FlowError(
            N_("This sign-in was already used. Start again from the sign-in page."),
            "replayed_state",
        )
    return _Pending(
        str(row[1]),
        str(row[2]),
        str(row[3]),
        str(row[4]),
        int(row[5]) if row[5] is not None else None,
        str(row[6]),
        int(row[7]),
    )


def _insert_identity(
    tx: Transaction, account_id: int, identity: UpstreamIdentity, now: int
) -> None:
    tx.execute(
        "INSERT INTO upstream_identities (account_id, provider, subject, email, email_verified, "
        "display_name, claims, created, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        account_id,
        identity.provider,
        identity.subject,
        identity.email,
        1 if identity.email_verified else 0,
        identity.display_name,
        json.dumps(identity.claims, sort_keys=True),
        now,
        now,
    )


def _settle(
    tx: Transaction,
    identity: UpstreamIdentity,
    who: str,
    intent: str,
    pending_account: int | None,
    current_account: int | None,
    now: int,
    address_lost: AddressLost | None = None,
) -> tuple[int, str]:
    row = tx.fetchone(
        "SELECT account_id FROM upstream_identities WHERE provider = ? AND subject = ?",
        identity.provider,
        identity.subject,
    )
    if row is not None:
        account_id = int(row[0])
        _settle_known(tx, identity, who, intent, account_id, pending_account, current_account, now)
        return account_id, "already_linked" if intent == LINK else "signed_in"
    if intent == LINK:
        assert pending_account is not None
        _refuse_unverified_link(tx, pending_account, who)
        _insert_identity(tx, pending_account, identity, now)
        return pending_account, "linked"
    if current_account is not None:
        raise FlowError(
            Text(
                N_(
                    "You are already signed in. To add your %(who)s account, use Link on "
                    "your account page."
                ),
                who=who,
            ),
            "signed_in_already",
            409,
        )
    if identity.email_verified:
        _claim_address(tx, identity.email, who, now, address_lost)
    return _create_account(tx, identity, now), "created"


def _settle_known(
    tx: Transaction,
    identity: UpstreamIdentity,
    who: str,
    intent: str,
    account_id: int,
    pending_account: int | None,
    current_account: int | None,
    now: int,
) -> None:
    """
    An identity already linked to C{account_id} came back: refuse a link or
    sign-in meant for another account, or a disabled one; otherwise record
    what the provider says of the person now.
    """
    if intent == LINK and account_id != pending_account:
        raise FlowError(
            Text(
                N_(
                    "This %(who)s account is already linked to another Clickpass "
                    "account. Unlink it there first."
                ),
                who=who,
            ),
            "linked_elsewhere",
            409,
        )
    if intent == SIGN_IN and current_account is not None and current_account != account_id:
        raise FlowError(
            Text(
                N_("This %(who)s account belongs to another Clickpass account. Sign out first."),
                who=who,
            ),
            "other_account",
            409,
        )
    disabled = tx.scalar("SELECT disabled FROM accounts WHERE id = ?", account_id)
    if disabled is None or int(disabled):
        raise FlowError(N_("The Clickpass account for this sign-in is disabled."), "disabled", 403)
    tx.execute(
        "UPDATE upstream_identities SET last_used = ?, email = ?, email_verified = ?, "
        "display_name = ?, claims = ? WHERE provider = ? AND subject = ?",
        now,
        identity.email,
        1 if identity.email_verified else 0,
        identity.display_name,
        json.dumps(identity.claims, sort_keys=True),
        identity.provider,
        identity.subject,
    )
    if identity.email_verified:
        # The provider vouches for the address this account holds.
        tx.execute(
            "UPDATE accounts SET email_verified = 1 WHERE id = ? AND email = ?",
            account_id,
            identity.email,
        )


def _create_account(tx: Transaction, identity: UpstreamIdentity, now: int) -> int:
    """
    A new account for C{identity}, holding its address if the provider
    verified it (a placeholder otherwise), with the identity linked.
    """
    uid = secrets.token_hex(16)
    email = identity.email if identity.email_verified else f"{uid}@{PLACEHOLDER_DOMAIN}"
    tx.execute(
        "INSERT INTO accounts (uid, email, password_hash, display_name, created, email_verified) "
        "VALUES (?, ?, NULL, ?, ?, ?)",
        uid,
        email,
        identity.display_name,
        now,
        1 if identity.email_verified else 0,
    )
    account_id = int(tx.scalar("SELECT id FROM accounts WHERE uid = ?", uid))
    _insert_identity(tx, account_id, identity, now)
    return account_id


def _claim_address(
    tx: Transaction, email: str, who: str, now: int, address_lost: AddressLost | None = None
) -> None:
    """
    Make way for a new account with C{email}, which the provider verified:
    an account that holds the address without having verified it loses it
    (the verified owner wins; its sessions end, it keeps its other ways in
    under a placeholder address, and the address is told, by
    C{address_lost}). An account that verified it keeps it.
    """
    row = tx.fetchone("SELECT id, uid, email_verified FROM accounts WHERE email = ?", email)
    if row is None:
        return
    if int(row[2]):
        raise FlowError(
            Text(
                N_(
                    "A Clickpass account with %(email)s already exists. Sign in to it "
                    "first, then link your %(who)s account from your account page."
                ),
                email=email,
                who=who,
            ),
            "email_taken",
            409,
        )
    tx.execute(
        "UPDATE accounts SET email = ? WHERE id = ?", f"{row[1]}@{RELEASED_DOMAIN}", int(row[0])
    )
    tx.execute("DELETE FROM sessions WHERE account_id = ?", int(row[0]))
    events.record(tx, int(row[0]), "email_lost", now, detail=f"{email}, verified at {who}")
    if address_lost is not None:
        address_lost(tx, email, who, now)
    log.info(
        "unverified account {account} lost its address to a verified upstream sign-in",
        account=int(row[0]),
    )


def _refuse_unverified_link(tx: Transaction, account_id: int, who: str) -> None:
    """
    Refuse to link an upstream identity into an account whose address is
    unverified: whoever made such an account may not own the address, and
    a link would hand them the provider's sign-in (pre-account takeover).
    An upstream-only account's placeholder address is no one's to take.
    """
    row = tx.fetchone("SELECT email, email_verified FROM accounts WHERE id = ?", account_id)
    if row is None or int(row[1]) or str(row[0]).endswith(".invalid"):
        return
    raise FlowError(
        Text(
            N_(
                "Confirm your Clickpass address first (open the link we mailed to "
                "it), then link your %(who)s account."
            ),
            who=who,
        ),
        UNVERIFIED,
        403,
    )


def _refused_link(tx: Transaction, account_id: int, who: str, now: int) -> None:
    """Log a link refused by L{_refuse_unverified_link} (its own transaction was undone)."""
    events.record(tx, account_id, "link_refused_unverified", now, detail=who)


def _reauthenticated(
    tx: Transaction, identity: UpstreamIdentity, account_id: int, now: int
) -> bool:
    """
    Whether C{identity} is one already linked to C{account_id} (then its
    last use is noted); nothing else is written.
    """
    row = tx.fetchone(
        "SELECT account_id FROM upstream_identities WHERE provider = ? AND subject = ?",
        identity.provider,
        identity.subject,
    )
    if row is None or int(row[0]) != account_id:
        return False
    tx.execute(
        "UPDATE upstream_identities SET last_used = ? WHERE provider = ? AND subject = ?",
        now,
        identity.provider,
        identity.subject,
    )
    return True


def _reauth_refused(tx: Transaction, account_id: int, detail: str, now: int) -> None:
    events.record(tx, account_id, "reauth_refused", now, detail=detail)


def _linked(tx: Transaction, account_id: int) -> list[LinkedIdentity]:
    rows = tx.fetchall(
        "SELECT id, provider, email, email_verified, display_name, created, last_used "
        "FROM upstream_identities WHERE account_id = ? ORDER BY created, id",
        account_id,
    )
    return [
        LinkedIdentity(int(r[0]), str(r[1]), str(r[2]), bool(r[3]), str(r[4]), int(r[5]), int(r[6]))
        for r in rows
    ]


def _unlink(tx: Transaction, account_id: int, identity_id: int) -> str:
    # Lock the account row so two unlinks at once cannot both see "one left".
    tx.execute("UPDATE accounts SET disabled = disabled WHERE id = ?", account_id)
    has_password = tx.scalar(
        "SELECT COUNT(*) FROM accounts WHERE id = ? AND password_hash IS NOT NULL", account_id
    )
    provider = tx.scalar(
        "SELECT provider FROM upstream_identities WHERE id = ? AND account_id = ?",
        identity_id,
        account_id,
    )
    if provider is None:
        raise FlowError(N_("That sign-in method is not linked to your account."), "not_linked", 404)
    count = int(
        tx.scalar("SELECT COUNT(*) FROM upstream_identities WHERE account_id = ?", account_id)
    )
    if count - 1 + int(has_password) < 1:
        raise FlowError(
            N_(
                "This is the only way to sign in to your account, so it cannot be "
                "unlinked. Link another provider first."
            ),
            "last_method",
            409,
        )
    tx.execute("DELETE FROM upstream_identities WHERE id = ?", identity_id)
    return str(provider)


def _claims(tx: Transaction, account_id: int) -> dict[str, Any]:
    row = tx.fetchone(
        "SELECT claims, email, email_verified FROM upstream_identities WHERE account_id = ? "
        "ORDER BY last_used DESC, id DESC LIMIT 1",
        account_id,
    )
    if row is None:
        return {}
    try:
        claims = json.loads(str(row[0]))
    except ValueError:
        claims = {}
    if not isinstance(claims, dict):
        claims = {}
    if not int(row[2]):
        # An email the provider did not verify is never passed on.
        claims.pop("email", None)
        claims["email_verified"] = False
    return claims


class UpstreamService:
    """The upstream sign-in operations the web layer uses."""

    def __init__(
        self,
        storage: Storage,
        settings: UpstreamSettings,
        connectors: Mapping[str, Connector],
        base_url: str,
        clock: Callable[[], float] = time.time,
        address_lost: AddressLost | None = None,
    ) -> None:
        self._storage = storage
        self._address_lost = address_lost
        self._settings = settings
        self.connectors = dict(connectors)
        self._base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._clock = clock

    def connector(self, name: str) -> Connector:
        found = self.connectors.get(name)
        if found is None:
            raise FlowError(N_("There is no such sign-in provider here."), "unknown_provider", 404)
        return found

    def redirect_uri(self, name: str) -> str:
        return f"{self._base_url}upstream/{name}/callback"

    async def start(
        self,
        name: str,
        intent: str,
        account_id: int | None,
        next_url: str,
        browser: str | None,
        session: str = "",
    ) -> Started:
        """
        Record a pending login and return the provider URL to send the
        browser to; C{browser} is the binding the browser already holds.
        A re-authentication (L{REAUTH}) is bound to the C{session} too, and
        asks the provider to make the person sign in again.
        """
        connector = self.connector(name)
        if intent == REAUTH and (account_id is None or not session):
            raise FlowError(N_("Sign in first."), "signed_out", 403)
        if not browser or len(browser) < 32 or len(browser) > 64:
            browser = secrets.token_urlsafe(32)
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        url = await connector.authorization_url(
            self.redirect_uri(name), state, nonce, verifier, reauth=intent == REAUTH
        )
        now = int(self._clock())
        await self._storage.run(
            _insert_pending,
            _hash(state),
            _binding(browser, session if intent == REAUTH else ""),
            name,
            nonce,
            verifier,
            intent,
            account_id,
            next_url[:MAX_PARAM],
            now,
            now - 2 * self._settings.pending_lifetime,
        )
        return Started(url, browser)

    async def finish(
        self,
        name: str,
        params: Mapping[str, str],
        browser: str,
        current_account: int | None,
        session: str = "",
    ) -> Finished:
        """
        Finish a sign-in with the query C{params} the provider sent back
        (C{session}: the browser's session token, which a re-authentication
        is bound to). Raise L{FlowError} or L{UpstreamError}; nothing is
        written then (except that the pending login is used up, and a
        refused re-authentication is logged for the account's owner).
        """
        connector = self.connector(name)
        who = connector.display_name
        pending = await self._claim(name, params, browser, current_account, session)
        code = _answered_code(who, params)
        identity = await connector.finish(
            code,
            self.redirect_uri(name),
            pending.nonce,
            pending.verifier,
            params.get("iss"),
            self._clock(),
        )
        if pending.intent == REAUTH:
            assert pending.account_id is not None
            await self._reauthenticate(identity, who, pending.account_id, pending.created)
            log.info(
                "upstream {provider} re-authenticated account {account}",
                provider=name,
                account=pending.account_id,
            )
            return Finished(pending.account_id, "reauthenticated", pending.next_url, name)
        account_id, outcome = await self._sign_in_as(identity, who, pending, current_account)
        log.info(
            "upstream {provider} {outcome} account {account}",
            provider=name,
            outcome=outcome,
            account=account_id,
        )
        return Finished(account_id, outcome, pending.next_url, name)

    async def _claim(
        self,
        name: str,
        params: Mapping[str, str],
        browser: str,
        current_account: int | None,
        session: str = "",
    ) -> _Pending:
        """
        Use up the pending login the answer's C{state} names (bound to this
        C{browser}; a re-authentication, to this C{session} too); a link or
        a re-authentication must come back to the account that started it.
        """
        state = params.get("state", "")
        if not state:
            raise FlowError(
                N_(
                    "The answer from the provider was incomplete. Start again from the "
                    "sign-in page."
                ),
                "no_state",
            )
        now = int(self._clock())
        pending: _Pending = await self._storage.run(
            _claim_pending,
            _hash(state),
            (_binding(browser, ""), _binding(browser, session)),
            name,
            now,
            self._settings.pending_lifetime,
        )
        if pending.intent == REAUTH and current_account != pending.account_id:
            raise FlowError(
                N_(
                    "You signed out or changed accounts while confirming it was you. "
                    "Sign in again, then confirm again."
                ),
                "reauth_account_changed",
                403,
            )
        if pending.intent == LINK and current_account != pending.account_id:
            raise FlowError(
                N_("Sign in again with the account you were linking to, then link again."),
                "link_account_changed",
                403,
            )
        return pending

    async def _sign_in_as(
        self,
        identity: UpstreamIdentity,
        who: str,
        pending: _Pending,
        current_account: int | None,
    ) -> tuple[int, str]:
        """
        Sign in, sign up or link with the provider's C{identity}: the account
        and what was done to it.
        """
        try:
            settled: tuple[int, str] = await self._storage.run(
                _settle,
                identity,
                who,
                pending.intent,
                pending.account_id,
                current_account,
                int(self._clock()),
                self._address_lost,
            )
        except FlowError as e:
            if e.reason == UNVERIFIED and pending.account_id is not None:
                # Nothing was written; the refusal is still the owner's to see.
                await self._storage.run(_refused_link, pending.account_id, who, int(self._clock()))
            raise
        except IntegrityError:
            # Two sign-ins of one new person at once: the other one won.
            raise FlowError(
                N_("This account was just created or linked by another sign-in. Sign in again."),
                "conflict",
                409,
            ) from None
        return settled

    async def _reauthenticate(
        self, identity: UpstreamIdentity, who: str, account_id: int, started: int
    ) -> None:
        """
        Pass a re-authentication of C{account_id} only with an identity
        already linked to it, signed in at the provider after the flow
        started (C{auth_time}, give or take the clock skew, where the
        provider gives it); otherwise log the refusal for the owner and
        raise L{FlowError}, nothing else written.
        """
        now = int(self._clock())
        if identity.auth_time is not None and (
            identity.auth_time + self._settings.clock_skew < started
        ):
            await self._storage.run(
                _reauth_refused, account_id, f"{who}: no fresh sign-in there", now
            )
            raise FlowError(
                Text(
                    N_(
                        "%(who)s did not ask you to sign in again, so this did not confirm "
                        "it is you. Try again, and sign in at %(who)s when it asks."
                    ),
                    who=who,
                ),
                "stale_auth_time",
                403,
            )
        if not await self._storage.run(_reauthenticated, identity, account_id, now):
            await self._storage.run(
                _reauth_refused, account_id, f"{who}: an account not linked to yours", now
            )
            raise FlowError(
                Text(
                    N_(
                        "That %(who)s account is not the one linked to your Clickpass "
                        "account; nothing was changed. Confirm with the one you linked."
                    ),
                    who=who,
                ),
                "reauth_other_identity",
                403,
            )

    async def linked(self, account_id: int) -> list[LinkedIdentity]:
        """The provider identities linked to an account, oldest first."""
        result: list[LinkedIdentity] = await self._storage.run(_linked, account_id)
        return result

    async def unlink(self, account_id: int, identity_id: int) -> str:
        """Unlink one identity, unless it is the account's last way to sign in."""
        provider: str = await self._storage.run(_unlink, account_id, identity_id)
        log.info(
            "upstream {provider} unlinked from account {account}",
            provider=provider,
            account=account_id,
        )
        return provider

    async def claims_for(self, account_id: int) -> dict[str, Any]:
        """
        The upstream claims of the account's most recently used identity, for
        SReg/AX (an unverified email is left out).
        """
        result: dict[str, Any] = await self._storage.run(_claims, account_id)
        return result


def _answered_code(who: str, params: Mapping[str, str]) -> str:
    """
    The sign-in code in the provider's answer, or the error it answered
    instead (a refusal by the person is theirs to see as such).
    """
    error = params.get("error")
    if error:
        if error == "access_denied":
            raise FlowError(
                Text(N_("You did not allow the sign-in at %(who)s."), who=who), "access_denied", 403
            )
        raise UpstreamError(
            Text(
                N_("%(who)s could not sign you in (%(error)s). Try again."),
                who=who,
                error=error[:64],
            ),
            "provider_error",
        )
    code = params.get("code", "")
    if not code:
        raise UpstreamError(
            Text(N_("%(who)s sent no sign-in code; the sign-in was stopped."), who=who), "no_code"
        )
    return code

"""
Who owns an address, and getting back in: the account changes that go
through a link mailed to the person.

- Sign-up answers the same whether or not the address is taken: a new
  account is created unverified and sent a verification link; the holder
  of a taken address is told that someone tried to sign up with it.
- An address is verified by the signed-in owner opening the link (so a
  person who did not make the account cannot verify it for someone else).
- A password reset link (single use, short-lived, the same answer whether
  or not the account exists) sets a new password, verifies the address
  (the link reached it), ends every session and clears the account's
  failed sign-ins, so the owner always gets back in.
- Changing the password needs the current one; changing the address takes
  effect only once the new one is verified, and the old one is sent a link
  that undoes the change and ends every session.

Every mail is queued in the transaction of the change that causes it, so
both happen or neither does. Mails with a link are limited per address
(silently: the answer must not tell whether an account exists) and per
client address (openly). This module must never render pages or read
requests: the web layer does that.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from clickpass.accounts import events, tokens
from clickpass.accounts.service import (
    Account,
    AccountError,
    Accounts,
    SignIn,
    account_by_email,
    account_by_id,
    check_email,
    count_attempt,
    session_hash,
)
from clickpass.accounts.settings import AccountsSettings
from clickpass.i18n import N_, Text, n_text
from clickpass.storage.sql import IntegrityError, Storage, Transaction, run_through_failover

# Addresses that are placeholders, never mailboxes (an upstream account
# whose provider gave no verified address; an address taken away).
PLACEHOLDER_SUFFIX = ".invalid"
RELEASED_DOMAIN = "released.invalid"


class Mailer(Protocol):
    """The mail outbox, as these flows use it (L{clickpass.mail.outbox.Outbox})."""

    def url(self, path: str, **params: str) -> str: ...

    def enqueue(
        self,
        tx: Transaction,
        to: str,
        subject: str,
        template: str,
        context: dict[str, Any] | None = None,
        *,
        now: int,
        kind: str = "",
    ) -> int: ...


class TooManyRequests(AccountError):
    """This client asked for too many mails lately."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, (retry_after + 59) // 60)
        super().__init__(
            n_text(
                "Too many requests from your network lately. Try again in %(count)d minute.",
                "Too many requests from your network lately. Try again in %(count)d minutes.",
                minutes,
            )
        )
        self.retry_after = retry_after


def has_password(tx: Transaction, account_id: int) -> bool:
    """Whether the account has a password (one made through a provider may have none)."""
    row = tx.fetchone("SELECT password_hash FROM accounts WHERE id = ?", account_id)
    return row is not None and row[0] is not None


class AddressTaken(AccountError):
    """
    The new address went to another account between the request to move
    to it and its confirmation (or while two confirmations raced). Only
    the mailbox's owner gets this far (the link was mailed there), so the
    page may say what to do about the other account.
    """

    def __init__(self, address: str) -> None:
        super().__init__(
            Text(
                N_(
                    "%(address)s became the address of another Clickpass account after you "
                    "asked for it, so your address is unchanged. If that account is yours, get "
                    "into it with Forgot password on the sign-in page; otherwise choose another "
                    "address."
                ),
                address=address,
            )
        )
        self.address = address


@dataclass(frozen=True)
class Reset:
    """A password reset done: the account, signed out everywhere."""

    account: Account


def is_mailbox(email: str) -> bool:
    """Whether C{email} is a real address rather than a placeholder."""
    return not email.endswith(PLACEHOLDER_SUFFIX)


def log_event(
    tx: Transaction,
    account_id: int,
    kind: str,
    now: int,
    how: SignIn | None,
    detail: str = "",
) -> None:
    """
    Add C{kind} to C{account_id}'s security log in C{tx}, saying from where
    and which browser (C{how}, from the web; L{None} for an operator).
    """
    events.record(
        tx,
        account_id,
        kind,
        now,
        client_address=how.client_address if how else "",
        browser=how.browser if how else "",
        detail=detail,
    )


def releasable_email(account: Account) -> str:
    """
    The address that may be released to partners for C{account}: its own,
    once verified; otherwise nothing.
    """
    if account.email_verified and is_mailbox(account.email):
        return account.email
    return ""


class AccountFlows:
    """The mailed-link flows of accounts, on the storage, with the outbox."""

    def __init__(
        self,
        reactor: Any,
        storage: Storage,
        accounts: Accounts,
        settings: AccountsSettings,
        mailer: Mailer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reactor = reactor
        self._storage = storage
        self._accounts = accounts
        self._settings = settings
        self._mailer = mailer
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    # Limits on mails.

    async def _client_allowed(self, client_address: str) -> None:
        """Count one request from C{client_address}; L{TooManyRequests} past the limit."""
        wait = await self._storage.run(
            count_attempt,
            [("link-client", client_address[:255], self._settings.link_mails_per_client)],
            self._now(),
            self._settings.link_mail_window,
        )
        if wait:
            raise TooManyRequests(wait)

    def _address_allowed(self, tx: Transaction, address: str, now: int) -> bool:
        """Count one mail to C{address}; false (and nothing counted) past the limit."""
        wait = count_attempt(
            tx,
            [("link-address", address[:255], self._settings.link_mails_per_address)],
            now,
            self._settings.link_mail_window,
        )
        return wait == 0

    # Sign-up and verification.

    async def sign_up(
        self,
        email: str,
        password: str,
        client_address: str,
        next_url: str = "",
        how: SignIn | None = None,
    ) -> str:
        """
        Sign up with C{email}: the same outcome for the person whether or
        not the address is taken (a verification link to a new account, a
        warning to the holder of a taken one). Return the normalised
        address; L{AccountError} for a bad address or password (which says
        nothing about accounts), L{SignUpThrottled} (the sign-up limits per
        client address and overall), L{TooManyRequests}, or L{HashingBusy}.
        """
        address = check_email(email)
        self._accounts.check_password_rules(password)
        await self._accounts.count_signup(client_address)
        await self._client_allowed(client_address)
        # Hashed whether or not the address is taken: the time it takes
        # must not tell.
        pw_hash = await self._accounts.hash_password(password)
        uid = secrets.token_hex(16)
        for attempt in range(2):
            try:
                await run_through_failover(
                    self._reactor,
                    self._storage,
                    self._sign_up,
                    uid,
                    address,
                    pw_hash,
                    next_url,
                    self._now(),
                    how or SignIn(client_address),
                    idempotent=True,
                )
                break
            except IntegrityError:
                # Another sign-up took the address between our look and our
                # insert: once more, and this one finds it taken.
                if attempt:
                    raise
        return address

    def _sign_up(
        self,
        tx: Transaction,
        uid: str,
        address: str,
        pw_hash: str,
        next_url: str,
        now: int,
        how: SignIn,
    ) -> None:
        existing = account_by_email(tx, address)
        if existing is not None:
            if existing.uid == uid:
                return  # this very sign-up, run again after a lost commit
            # The holder sees the attempt in their log, mailed or not.
            log_event(tx, existing.id, "signup_attempt_taken", now, how)
            if self._address_allowed(tx, address, now):
                self._mailer.enqueue(
                    tx,
                    address,
                    N_("Someone tried to create a Clickpass account with your address"),
                    "signup_taken",
                    {"signin": self._mailer.url("signin"), "forgot": self._mailer.url("forgot")},
                    now=now,
                )
            return
        tx.execute(
            "INSERT INTO accounts (uid, email, password_hash, created, email_verified) "
            "VALUES (?, ?, ?, ?, 0)",
            uid,
            address,
            pw_hash,
            now,
        )
        account = account_by_email(tx, address)
        assert account is not None
        log_event(tx, account.id, "signup", now, how)
        self._address_allowed(tx, address, now)
        self._send_verification(tx, account, next_url, now)

    def _send_verification(
        self, tx: Transaction, account: Account, next_url: str, now: int
    ) -> None:
        token = tokens.issue(
            tx,
            account.id,
            tokens.VERIFY,
            self._settings.verify_lifetime,
            now,
            account.email,
            next_url,
        )
        self._mailer.enqueue(
            tx,
            account.email,
            N_("Confirm your email address for Clickpass"),
            "verify_email",
            {"link": self._mailer.url("verify", t=token), "hours": self._hours(tokens.VERIFY)},
            now=now,
        )

    def _hours(self, purpose: str) -> int:
        lifetime = {
            tokens.VERIFY: self._settings.verify_lifetime,
            tokens.CHANGE_EMAIL: self._settings.verify_lifetime,
            tokens.RESET: self._settings.reset_lifetime,
        }[purpose]
        return max(1, lifetime // 3600)

    async def resend_verification(
        self, account: Account, client_address: str, next_url: str = ""
    ) -> bool:
        """
        Send C{account} a new verification link; false when its address
        had as many as it may have lately (or is verified already).
        """
        if account.email_verified or not is_mailbox(account.email):
            return False
        await self._client_allowed(client_address)

        def resend(tx: Transaction, now: int) -> bool:
            if not self._address_allowed(tx, account.email, now):
                return False
            self._send_verification(tx, account, next_url, now)
            return True

        sent: bool = await self._storage.run(resend, self._now())
        return sent

    async def check_verification(self, token: str, account: Account) -> tokens.Token:
        """The verification token's record, if C{account} may use it now."""
        found: tokens.Token = await self._storage.run(
            tokens.peek, token, tokens.VERIFY, self._now(), account.id
        )
        return found

    async def verify(self, token: str, account: Account, how: SignIn | None = None) -> str:
        """
        Verify C{account}'s address with C{token} (L{tokens.TokenRefused}
        otherwise); return the path to continue to.
        """

        def verify(tx: Transaction, now: int) -> str:
            found = tokens.consume(tx, token, tokens.VERIFY, now, account.id)
            current = account_by_id(tx, account.id)
            if current is None or current.email != found.email:
                # The account's address changed since the link was sent.
                raise tokens.TokenRefused("expired", tokens.VERIFY)
            tx.execute("UPDATE accounts SET email_verified = 1 WHERE id = ?", account.id)
            log_event(tx, account.id, "email_verified", now, how, current.email)
            return found.next_url

        next_url: str = await self._storage.run(verify, self._now())
        return next_url

    # Password reset.

    async def request_reset(
        self, email: str, client_address: str, how: SignIn | None = None
    ) -> None:
        """
        Mail a reset link to the account holding C{email}, if there is one
        and its address has not had too many lately: the caller answers the
        same in every case. L{TooManyRequests} when this client asked too
        often (whatever the address).
        """
        try:
            address = check_email(email)
        except AccountError:
            address = ""
        await self._client_allowed(client_address)
        if not address:
            return

        def request(tx: Transaction, now: int) -> None:
            account = account_by_email(tx, address)
            if account is None or account.disabled or not is_mailbox(address):
                return
            if not self._address_allowed(tx, address, now):
                log_event(
                    tx, account.id, "password_reset_requested", now, who, "no mail: too many lately"
                )
                return
            log_event(tx, account.id, "password_reset_requested", now, who)
            token = tokens.issue(tx, account.id, tokens.RESET, self._settings.reset_lifetime, now)
            self._mailer.enqueue(
                tx,
                address,
                N_("Reset your Clickpass password"),
                "reset_password",
                {"link": self._mailer.url("reset", t=token), "hours": self._hours(tokens.RESET)},
                now=now,
            )

        who = how or SignIn(client_address)
        await self._storage.run(request, self._now())

    async def check_reset(self, token: str) -> tokens.Token:
        """The reset token's record, if it can be used now."""
        found: tokens.Token = await self._storage.run(tokens.peek, token, tokens.RESET, self._now())
        return found

    async def reset(self, token: str, password: str, how: SignIn | None = None) -> Reset:
        """
        Set a new password with a reset C{token}: the address is verified
        (the link reached it), every session ends, the account's failed
        sign-ins are forgotten, other reset links are used up, and the
        owner is told. L{tokens.TokenRefused} or L{AccountError} otherwise.
        """
        self._accounts.check_password_rules(password)
        await self.check_reset(token)
        pw_hash = await self._accounts.hash_password(password)

        def reset(tx: Transaction, now: int) -> Account:
            found = tokens.consume(tx, token, tokens.RESET, now)
            account = account_by_id(tx, found.account_id)
            if account is None or account.disabled:
                raise tokens.TokenRefused("invalid", tokens.RESET)
            tx.execute(
                "UPDATE accounts SET password_hash = ?, email_verified = 1 WHERE id = ?",
                pw_hash,
                account.id,
            )
            tx.execute("DELETE FROM sessions WHERE account_id = ?", account.id)
            tokens.use_up(tx, account.id, tokens.RESET, now)
            tx.execute(
                "UPDATE signin_failures SET failures = 0 WHERE scope = 'account' AND subject = ?",
                account.email,
            )
            self._password_changed(tx, account, now)
            log_event(tx, account.id, "password_reset", now, how)
            verified = account_by_id(tx, account.id)
            assert verified is not None
            return verified

        account: Account = await self._storage.run(reset, self._now())
        return Reset(account)

    def _password_changed(self, tx: Transaction, account: Account, now: int) -> None:
        if is_mailbox(account.email):
            self._mailer.enqueue(
                tx,
                account.email,
                N_("Your Clickpass password was changed"),
                "password_changed",
                {"forgot": self._mailer.url("forgot")},
                now=now,
            )

    def tell_address_lost(self, tx: Transaction, address: str, provider: str, now: int) -> None:
        """
        Tell C{address}, in C{tx}, that the account which held it without
        verifying it no longer does: its owner proved it through a sign-in
        at C{provider}. The mailbox is the one place that reaches whoever
        made that account (they gave this address) as well as the owner;
        the mail names no account and holds no link that changes anything.
        """
        if not is_mailbox(address):
            return
        self._mailer.enqueue(
            tx,
            address,
            N_("Your address left an unconfirmed Clickpass account"),
            "address_lost",
            {
                "provider": provider,
                "signin": self._mailer.url("signin"),
                "forgot": self._mailer.url("forgot"),
            },
            now=now,
        )

    # Changes by the signed-in owner.

    async def change_password(
        self,
        account: Account,
        current: str,
        new: str,
        client_address: str,
        keep_session: str,
        how: SignIn | None = None,
    ) -> None:
        """
        Change the password of C{account}, given its C{current} one (checked
        as a sign-in is, throttling included); every session but
        C{keep_session} (a session token) ends, and the owner is told.
        """
        self._accounts.check_password_rules(new)
        await self._accounts.authenticate(account.email, current, client_address)
        pw_hash = await self._accounts.hash_password(new)

        def change(tx: Transaction, now: int) -> None:
            tx.execute("UPDATE accounts SET password_hash = ? WHERE id = ?", pw_hash, account.id)
            tx.execute(
                "DELETE FROM sessions WHERE account_id = ? AND token_hash <> ?",
                account.id,
                session_hash(keep_session),
            )
            self._password_changed(tx, account, now)
            log_event(tx, account.id, "password_changed", now, how or SignIn(client_address))

        await self._storage.run(change, self._now())

    async def request_email_change(
        self,
        account: Account,
        password: str,
        new_email: str,
        client_address: str,
        how: SignIn | None = None,
        stepped_up: bool = False,
    ) -> str:
        """
        Send a link to C{new_email} that makes it C{account}'s address once
        opened by the signed-in owner. Nothing changes before then. The
        answer is the same whether or not the new address is taken (its
        holder is told instead). Return the normalised new address.
        C{password} is checked; an account with none (made through an
        upstream provider) needs C{stepped_up}: the caller saw a fresh
        sign-in (step-up) instead.
        """
        address = check_email(new_email)
        if address == account.email:
            raise AccountError(N_("That is your address already."))
        if await self._storage.run(has_password, account.id):
            await self._accounts.authenticate(account.email, password, client_address)
        elif not stepped_up:
            raise AccountError(N_("Confirm it is you first, then change your address."))
        await self._client_allowed(client_address)

        def request(tx: Transaction, now: int) -> None:
            log_event(
                tx,
                account.id,
                "email_change_requested",
                now,
                how or SignIn(client_address),
                address,
            )
            if not self._address_allowed(tx, address, now):
                return
            if account_by_email(tx, address) is not None:
                self._mailer.enqueue(
                    tx,
                    address,
                    N_("Someone tried to move a Clickpass account to your address"),
                    "signup_taken",
                    {"signin": self._mailer.url("signin"), "forgot": self._mailer.url("forgot")},
                    now=now,
                )
                return
            token = tokens.issue(
                tx,
                account.id,
                tokens.CHANGE_EMAIL,
                self._settings.verify_lifetime,
                now,
                address,
            )
            self._mailer.enqueue(
                tx,
                address,
                N_("Confirm your new email address for Clickpass"),
                "confirm_new_email",
                {
                    "link": self._mailer.url("email/confirm", t=token),
                    "hours": self._hours(tokens.CHANGE_EMAIL),
                },
                now=now,
            )

        await self._storage.run(request, self._now())
        return address

    async def check_email_change(self, token: str, account: Account) -> tokens.Token:
        found: tokens.Token = await self._storage.run(
            tokens.peek, token, tokens.CHANGE_EMAIL, self._now(), account.id
        )
        return found

    async def confirm_email_change(
        self, token: str, account: Account, how: SignIn | None = None
    ) -> str:
        """
        Make the token's new address C{account}'s (verified), and send the
        old address a link that undoes it. Return the new address.
        """
        days = max(1, self._settings.revert_lifetime // 86400)

        def confirm(tx: Transaction, now: int) -> str:
            found = tokens.consume(tx, token, tokens.CHANGE_EMAIL, now, account.id)
            current = account_by_id(tx, account.id)
            assert current is not None
            if account_by_email(tx, found.email) is not None:
                raise AddressTaken(found.email)
            tx.execute(
                "UPDATE accounts SET email = ?, email_verified = 1 WHERE id = ?",
                found.email,
                account.id,
            )
            log_event(
                tx, account.id, "email_changed", now, how, f"{current.email} -> {found.email}"
            )
            if is_mailbox(current.email):
                revert = tokens.issue(
                    tx,
                    account.id,
                    tokens.REVERT_EMAIL,
                    self._settings.revert_lifetime,
                    now,
                    current.email,
                )
                self._mailer.enqueue(
                    tx,
                    current.email,
                    N_("Your Clickpass address was changed"),
                    "email_changed",
                    {
                        "new_email": found.email,
                        "link": self._mailer.url("email/revert", t=revert),
                        "days": days,
                    },
                    now=now,
                )
            return found.email

        try:
            new: str = await self._storage.run(confirm, self._now())
        except IntegrityError:
            # Another account took the address after the check above (two
            # confirmations at once): the unique index said no, nothing changed.
            found = await self.check_email_change(token, account)
            raise AddressTaken(found.email) from None
        return new

    async def address_taken(self, address: str, account: Account) -> bool:
        """Whether an account other than C{account} holds C{address} now."""
        holder: Account | None = await self._storage.run(account_by_email, address)
        return holder is not None and holder.id != account.id

    async def check_revert(self, token: str) -> tokens.Token:
        found: tokens.Token = await self._storage.run(
            tokens.peek, token, tokens.REVERT_EMAIL, self._now()
        )
        return found

    async def revert_email(self, token: str, how: SignIn | None = None) -> str:
        """
        Undo an address change with the link sent to the old address: the
        old address is the account's again (verified), every session ends
        and pending address changes are cancelled. Return the old address.
        """

        def revert(tx: Transaction, now: int) -> str:
            found = tokens.consume(tx, token, tokens.REVERT_EMAIL, now)
            holder = account_by_email(tx, found.email)
            if holder is not None and holder.id != found.account_id:
                raise AccountError(
                    Text(
                        N_(
                            "%(address)s belongs to another account now; ask the operator of "
                            "this Clickpass for help."
                        ),
                        address=found.email,
                    )
                )
            tx.execute(
                "UPDATE accounts SET email = ?, email_verified = 1 WHERE id = ?",
                found.email,
                found.account_id,
            )
            tx.execute("DELETE FROM sessions WHERE account_id = ?", found.account_id)
            tokens.use_up(tx, found.account_id, tokens.CHANGE_EMAIL, now)
            log_event(tx, found.account_id, "email_change_reverted", now, how, found.email)
            return found.email

        try:
            old: str = await self._storage.run(revert, self._now())
        except IntegrityError:
            # Another account took the old address while this ran: nothing changed.
            raise AccountError(
                N_(
                    "That address belongs to another account now; ask the operator of this "
                    "Clickpass for help."
                )
            ) from None
        return old

    # Operators.

    async def operator_verify(self, email: str) -> bool:
        """Mark the address verified (an operator vouches); false when no account has it."""
        address = check_email(email)

        def verify(tx: Transaction, now: int) -> bool:
            account = account_by_email(tx, address)
            if account is None:
                return False
            tx.execute("UPDATE accounts SET email_verified = 1 WHERE id = ?", account.id)
            log_event(tx, account.id, "email_verified", now, None, f"{address}, by an operator")
            return True

        found: bool = await self._storage.run(verify, self._now())
        return found

    async def operator_reset_link(self, email: str) -> str:
        """
        A reset link for the account holding C{email}, for an operator to
        pass on by other means (nothing is mailed); L{AccountError} when
        there is no such account.
        """

        def make(tx: Transaction, now: int) -> str:
            account = account_by_email(tx, check_email(email))
            if account is None:
                raise AccountError(f"no account with email {email}")
            log_event(tx, account.id, "reset_link_by_operator", now, None)
            return tokens.issue(tx, account.id, tokens.RESET, self._settings.reset_lifetime, now)

        token: str = await self._storage.run(make, self._now())
        return self._mailer.url("reset", t=token)


__all__ = [
    "AccountFlows",
    "AddressTaken",
    "Mailer",
    "Reset",
    "TooManyRequests",
    "is_mailbox",
    "log_event",
    "releasable_email",
]

"""
The second factors' operations, for the web pages, the OpenID provider
and the control port: set up and remove a TOTP authenticator, check a
code (throttled, each code good once), recovery codes, second steps,
how each session was signed in, trusted browsers.

The time comes from the injected clock. Each check of a code is one
transaction: the attempt is counted, the code judged, the code's time
step (or the recovery code) spent, so two requests racing with one code
cannot both succeed. Nothing here renders pages or reads requests.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from clickpass.accounts import events
from clickpass.accounts.service import (
    AccountError,
    Throttled,
    _reserve_attempt,
    normalise_email,
    session_hash,
)
from clickpass.i18n import N_
from clickpass.mfa import store, totp
from clickpass.mfa.sealing import (
    SecretBox,
    new_recovery_codes,
    normalise_recovery_code,
)
from clickpass.mfa.settings import MfaSettings
from clickpass.storage.sql import Storage, Transaction

log = Logger()

# The strongest method a session can show, and how PAPE and OpenID
# Connect name what a sign-in was (RFC 8176 amr values).
METHOD_PASSWORD = "pwd"  # noqa: S105 (a method name, RFC 8176, not a password)
METHOD_TOTP = "otp"
METHOD_RECOVERY_CODE = "rc"
METHOD_TRUSTED_BROWSER = "trusted"
# Signed in through an upstream provider (Google and others) instead of a password.
METHOD_FEDERATED = "fed"
# A security key or passkey bound to one device (RFC 8176 "hwk": proof of
# possession of a key held in hardware); a synced passkey, one the
# authenticator says may be backed up (WebAuthn's backup eligible or backed
# up flag: a copy lives in a cloud account and on the person's other
# devices), is RFC 8176 "swk" (a key held in software), never "hwk"; and,
# never put in an amr, that the authenticator verified the person (PIN or
# biometrics): a passkey sign-in with no password.
METHOD_SECURITY_KEY = "hwk"
METHOD_SYNCED_KEY = "swk"
METHOD_USER_VERIFIED = "uv"
# Either kind of key: what the origin-bound WebAuthn signature proves.
KEY_METHODS = frozenset({METHOD_SECURITY_KEY, METHOD_SYNCED_KEY})


def key_method(synced: bool) -> str:
    """The method a key's use is recorded as: L{METHOD_SYNCED_KEY} for a synced passkey."""
    return METHOD_SYNCED_KEY if synced else METHOD_SECURITY_KEY


class MfaError(AccountError):
    """A second-factor request cannot be met; the message is for the person."""


class CodeRefused(MfaError):
    """A wrong, reused or out-of-window code (one message: nothing leaks)."""

    def __init__(self) -> None:
        super().__init__(
            N_(
                "That code is not right, or was used already. Enter the code your app shows "
                "now, or one of your unused recovery codes."
            )
        )


class Outcome(enum.Enum):
    """What became of a code given at the second step or a step-up."""

    TOTP = METHOD_TOTP
    RECOVERY_CODE = METHOD_RECOVERY_CODE
    SECURITY_KEY = METHOD_SECURITY_KEY


class MailQueue(Protocol):
    """The mail outbox (L{clickpass.mail.outbox.Outbox}): queue in the caller's transaction."""

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


@dataclass(frozen=True)
class FactorStatus:
    """What a person has set up, for their account page and C{user mfa}."""

    totp: bool
    recovery_codes_left: int
    trusted_browsers: list[store.TrustedBrowser]
    keys: list[store.Credential] = dataclasses.field(default_factory=list)


def _code_detail(
    tx: Transaction,
    account_id: int,
    outcome: Outcome | None,
    code: str | None,
    recovery_hash: str | None,
) -> str:
    """The security event's detail: the recovery codes left, or what was refused."""
    if outcome is Outcome.RECOVERY_CODE:
        return f"{store.recovery_codes_left(tx, account_id)} recovery codes left"
    if code is not None:
        return "app code: wrong, used already or out of its time window"
    if recovery_hash is not None:
        return "recovery code: wrong or used already"
    return "not a code"


class SecondFactors:
    """The second factors of every account, on one storage."""

    def __init__(
        self,
        storage: Storage,
        settings: MfaSettings,
        master_secret: bytes,
        mail: MailQueue | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.box = SecretBox(master_secret)
        self.mail = mail
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    async def status(self, account_id: int) -> FactorStatus:
        now = self.now()

        def read(tx: Transaction) -> FactorStatus:
            return FactorStatus(
                store.has_totp(tx, account_id),
                store.recovery_codes_left(tx, account_id),
                store.trusted_browsers(tx, account_id, now),
                store.credentials(tx, account_id),
            )

        result: FactorStatus = await self.storage.run(read)
        return result

    async def has_factor(self, account_id: int) -> bool:
        result: bool = await self.storage.run(store.has_factor, account_id)
        return result

    async def has_totp(self, account_id: int) -> bool:
        result: bool = await self.storage.run(store.has_totp, account_id)
        return result

    async def has_keys(self, account_id: int) -> bool:
        result: bool = await self.storage.run(store.has_keys, account_id)
        return result

    async def has_device_keys(self, account_id: int) -> bool:
        """Whether the person has a security key or passkey that is not synced."""
        result: bool = await self.storage.run(store.has_device_keys, account_id)
        return result

    # Setting TOTP up and removing it.

    async def begin_totp(self, account_id: int) -> str:
        """A new secret to show the person, kept until confirmed with a code."""
        secret = totp.new_secret()
        sealed = self.box.seal(account_id, secret)
        if not await self.storage.run(store.begin_totp, account_id, sealed, self.now()):
            raise MfaError(N_("An authenticator app is set up already. Remove it first."))
        return secret

    async def pending_totp(self, account_id: int) -> str | None:
        """The secret being set up (shown again on the same page), or L{None}."""
        row: store.TotpRow | None = await self.storage.run(store.totp, account_id)
        if row is None or row.confirmed:
            return None
        return self.box.unseal(account_id, row.sealed)

    async def confirm_totp(self, account_id: int, typed: str) -> list[str]:
        """
        Finish setting up TOTP with a first code from the app. Return ten new
        recovery codes (to show once). L{CodeRefused} when the code is
        wrong; nothing changes then.
        """
        code = totp.normalise_code(typed)
        secret = await self.pending_totp(account_id)
        if secret is None:
            raise MfaError(N_("Start again: there is no authenticator app being set up."))
        now = self.now()
        step = totp.matching_step(secret, code, now, 0) if code else None
        if step is None:
            raise CodeRefused()
        codes = new_recovery_codes()
        hashes = [self.box.code_hash(c) for c in codes]

        def confirm(tx: Transaction) -> bool:
            if not store.confirm_totp(tx, account_id, step, now):
                return False
            store.replace_recovery_codes(tx, account_id, hashes, now)
            return True

        if not await self.storage.run(confirm):
            raise MfaError(N_("That authenticator app is set up already."))
        log.info("account {account_id} set up a TOTP authenticator", account_id=account_id)
        return codes

    async def remove(self, account_id: int) -> bool:
        """
        Remove the authenticator app (with the recovery codes and trusted
        browsers when no security key or passkey is left); false when
        there was none.
        """
        removed: bool = await self.storage.run(store.remove_totp, account_id)
        log.info("account {account_id} removed its authenticator app", account_id=account_id)
        return removed

    async def operator_reset(self, email: str) -> bool | None:
        """
        An operator removes every second factor of the account with C{email}
        (the person lost them all); the person is mailed in the same
        transaction. L{None} when there is no such account; otherwise
        whether it had a factor.
        """
        now = self.now()

        def reset(tx: Transaction) -> bool | None:
            found = store.account_by_email(tx, normalise_email(email))
            if found is None:
                return None
            account_id, address = found
            had = store.remove_all(tx, account_id)
            if self.mail is not None:
                self.mail.enqueue(
                    tx,
                    address,
                    N_("The second factor of your account was removed"),
                    "mfa_reset",
                    {"email": address},
                    now=now,
                    kind="security",
                )
            return had

        result: bool | None = await self.storage.run(reset)
        if result is not None:
            log.info(
                "operator reset the second factors of {email} (had one: {had})",
                email=normalise_email(email),
                had=result,
            )
        return result

    async def describe(self, email: str) -> dict[str, Any] | None:
        """What C{user mfa} lists for the account with C{email}, or L{None}."""
        now = self.now()

        def read(tx: Transaction) -> dict[str, Any] | None:
            found = store.account_by_email(tx, normalise_email(email))
            if found is None:
                return None
            account_id, address = found
            return {
                "email": address,
                "totp_since": store.confirmed_since(tx, account_id),
                "keys": [
                    {
                        "name": k.name,
                        "passkey": k.passkey,
                        "created": k.created,
                        "last_used": k.last_used,
                        "backed_up": k.backed_up,
                    }
                    for k in store.credentials(tx, account_id)
                ],
                "recovery_codes_left": store.recovery_codes_left(tx, account_id),
                "trusted_browsers": [
                    {"created": b.created, "expires": b.expires, "address": b.client_address}
                    for b in store.trusted_browsers(tx, account_id, now)
                ],
            }

        result: dict[str, Any] | None = await self.storage.run(read)
        return result

    async def new_recovery_codes(self, account_id: int) -> list[str]:
        """Ten new recovery codes replacing the old ones (to show once)."""
        codes = new_recovery_codes()
        hashes = [self.box.code_hash(c) for c in codes]
        now = self.now()

        def replace(tx: Transaction) -> bool:
            if not store.has_factor(tx, account_id):
                return False
            store.replace_recovery_codes(tx, account_id, hashes, now)
            return True

        if not await self.storage.run(replace):
            raise MfaError(
                N_("Set up a second factor first; recovery codes stand in for it when it is lost.")
            )
        log.info("account {account_id} made new recovery codes", account_id=account_id)
        return codes

    # Checking a code.

    async def check_code(
        self,
        account_id: int,
        email: str,
        typed: str,
        *,
        client_address: str = "",
        browser: str = "",
    ) -> Outcome:
        """
        Check a TOTP code or a recovery code, as one throttled attempt.
        Raise L{Throttled} after too many wrong ones, L{CodeRefused} for a
        wrong, reused or out-of-window code (nothing spent then). A refusal
        and a recovery code used are security events in the person's log
        (from C{client_address} with C{browser}, when known).
        """
        code = totp.normalise_code(typed)
        recovery = None if code else normalise_recovery_code(typed)
        recovery_hash = self.box.code_hash(recovery) if recovery else None
        where = (client_address, browser)
        result: Outcome | int | None = await self.storage.run(
            self._check, account_id, email, code, recovery_hash, self.now(), where
        )
        if isinstance(result, Outcome):
            return result
        if result:
            raise Throttled(result)
        log.info("account {account_id}: second-factor code refused", account_id=account_id)
        raise CodeRefused()

    def _check(
        self,
        tx: Transaction,
        account_id: int,
        email: str,
        code: str | None,
        recovery_hash: str | None,
        now: int,
        where: tuple[str, str] = ("", ""),
    ) -> Outcome | int | None:
        # The outcome, or the seconds to wait (throttled), or None (refused).
        # A refusal must commit (the attempt counts), so it is a value, not
        # an exception.
        subjects = [(store.THROTTLE_SCOPE, str(account_id), self.settings.throttle_per_account)]
        wait = _reserve_attempt(tx, subjects, now, self.settings.throttle_window)
        if wait:
            return wait
        outcome: Outcome | None = None
        if code is not None:
            row = store.totp(tx, account_id)
            if row is not None and row.confirmed:
                secret = self.box.unseal(account_id, row.sealed)
                step = totp.matching_step(secret, code, now, row.last_step)
                if step is not None and store.use_step(tx, account_id, step):
                    outcome = Outcome.TOTP
        elif recovery_hash is not None and store.use_recovery_code(
            tx, account_id, recovery_hash, now
        ):
            outcome = Outcome.RECOVERY_CODE
            self._recovery_code_used(tx, email, store.recovery_codes_left(tx, account_id), now)
        address, browser = where
        if outcome is not None:
            store.reset_failures(tx, account_id)
        if outcome is not Outcome.TOTP:
            # Someone gave a code for this account and it was refused (wrong,
            # reused, out of its window, or no code at all), or a recovery
            # code was spent: the person sees either in their security log.
            events.record(
                tx,
                account_id,
                "code_refused" if outcome is None else "recovery_code_used",
                now,
                client_address=address,
                browser=browser,
                detail=_code_detail(tx, account_id, outcome, code, recovery_hash),
            )
        return outcome

    def _recovery_code_used(self, tx: Transaction, email: str, left: int, now: int) -> None:
        # A security event: the person learns of it even if it was not them.
        if self.mail is None:
            return
        self.mail.enqueue(
            tx,
            email,
            N_("A recovery code was used to sign in to your account"),
            "mfa_recovery_code_used",
            {"email": email, "left": left},
            now=now,
            kind="security",
        )

    # Second steps.

    async def start_second_step(
        self, account_id: int, first_method: str = "pwd", signin_method: str = "password"
    ) -> str:
        """
        A token for the browser that gave the first factor (C{first_method}:
        C{pwd}, or C{fed} through an upstream provider; C{signin_method}:
        how the security log names it, "password" or the provider's name),
        until its code.
        """
        token = secrets.token_urlsafe(32)
        now = self.now()
        await self.storage.run(
            store.start_pending,
            session_hash(token),
            account_id,
            now,
            now + self.settings.second_step_lifetime,
            first_method,
            signin_method,
        )
        return token

    async def second_step(self, token: str) -> store.PendingStep | None:
        """The open second step of C{token}, or L{None}."""
        if not token or len(token) > 128:
            return None
        result: store.PendingStep | None = await self.storage.run(
            store.pending, session_hash(token), self.now()
        )
        return result

    async def end_second_step(self, token: str) -> None:
        await self.storage.run(store.end_pending, session_hash(token))

    # Sessions.

    async def record_session(
        self,
        session_token: str,
        account_id: int,
        methods: frozenset[str],
        password_time: int,
        factor_time: int,
        expires: int,
    ) -> None:
        await self.storage.run(
            store.record_session,
            session_hash(session_token),
            account_id,
            methods,
            password_time,
            factor_time,
            expires,
        )

    async def session_auth(self, session_token: str) -> store.SessionAuth | None:
        if not session_token or len(session_token) > 128:
            return None
        result: store.SessionAuth | None = await self.storage.run(
            store.session_auth, session_hash(session_token), self.now()
        )
        return result

    # Trusted browsers.

    async def trust_browser(self, account_id: int, client_address: str) -> str:
        token = secrets.token_urlsafe(32)
        now = self.now()
        await self.storage.run(
            store.trust_browser,
            session_hash(token),
            account_id,
            now,
            now + self.settings.trusted_browser_lifetime,
            client_address,
        )
        return token

    async def is_trusted(self, token: str, account_id: int) -> bool:
        if not token or len(token) > 128:
            return False
        result: bool = await self.storage.run(
            store.is_trusted, session_hash(token), account_id, self.now()
        )
        return result

    async def revoke_browser(self, account_id: int, ref: str) -> bool:
        result: bool = await self.storage.run(store.revoke_browser, account_id, ref)
        return result

    async def expire(self, now: int) -> int:
        """Forget second steps, session records, trusted browsers and challenges past their time."""
        result: int = await self.storage.run(store.expire, now)
        return result

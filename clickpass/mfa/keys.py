"""
Security keys and passkeys (WebAuthn): register several, name them,
remove them, and use one as a second factor after the password or, a
passkey, to sign in with no password at all.

Every ceremony starts with a challenge given to one browser session for
one purpose (L{PURPOSES}); it is stored (hashed) until it expires, and
spending it is part of the transaction that judges the answer, so a
challenge is good once even when two answers race. A refusal commits too
(the challenge is spent, the event logged) and so is a value, not an
exception, inside the transaction.

The checks themselves are L{clickpass.mfa.ceremony}'s; the time comes
from the injected clock. Nothing here renders pages or reads requests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from clickpass.accounts import events
from clickpass.accounts.service import _reserve_attempt
from clickpass.i18n import N_, Text, n_text
from clickpass.mfa import ceremony, store
from clickpass.mfa.ceremony import CeremonyRefused, RelyingParty
from clickpass.mfa.settings import MfaSettings
from clickpass.storage.sql import Storage, Transaction

log = Logger()

# What a challenge is for: adding a credential, the second step after a
# password, a passkey sign-in with no password, and step-up.
REGISTER = "register"
SECOND_STEP = "second-step"
PASSKEY = "passkey"
CONFIRM = "confirm"
PURPOSES = frozenset({REGISTER, SECOND_STEP, PASSKEY, CONFIRM})

NAME_LENGTH = 64
MAX_KEYS = 20
# The open challenges one browser session may hold: a new one replaces its
# oldest (a page shown again, another tab), so no session fills the table.
CHALLENGES_PER_SESSION = 5
# The throttle's scope in signin_failures: challenges given per address.
THROTTLE_SCOPE = "webauthn-address"

# What the person is told (marked for translation, translated where shown).
EXPIRED = N_(
    "That request has expired, was used already, or was replaced by a newer one (from "
    "another tab or a page shown again). Reload the page and try again."
)
UNKNOWN_KEY = N_(
    "That passkey or security key is not registered here. Use another one, or sign in "
    "with your password."
)
DEVICE_BOUND_NEEDED = N_(
    "This needs a security key or passkey bound to one device, not a synced passkey: "
    "use such a key."
)
COPIED = N_(
    "That security key was refused: it looks like a copy of the one you registered. Use "
    "another way to sign in, and remove that key from your account."
)
ALREADY_REGISTERED = N_("That key is registered already.")
NO_KEYS = N_("You have no passkey or security key.")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def synced(backup_eligible: bool, backed_up: bool) -> bool:
    """
    Whether a credential is a synced passkey: its authenticator says it may
    be backed up (WebAuthn's BE flag) or is (BS). Such a key is copied to
    the person's cloud account and their other devices, so it is bound to
    no one physical device; once eligible, always eligible (the flag is
    fixed when the key is made), so either flag, ever seen, decides.
    """
    return backup_eligible or backed_up


@dataclass(frozen=True)
class KeyUsed:
    """
    A credential that proved its holder: whose, which, with user
    verification or not, and whether it is a synced passkey (L{synced}).
    """

    account_id: int
    name: str
    user_verified: bool
    synced: bool


@dataclass(frozen=True)
class Where:
    """Where a change comes from, for the security log."""

    client_address: str = ""
    browser: str = ""


class KeyRefused(CeremonyRefused):
    """A request about keys that cannot be met; the message is for the person."""

    def __init__(self, message: str) -> None:
        super().__init__(message, message)


class ChallengesThrottled(KeyRefused):
    """Too many challenges asked from one address lately: wait C{retry_after} seconds."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, (retry_after + 59) // 60)
        super().__init__(
            n_text(
                "Too many passkey requests from your network. Wait a minute and try again, "
                "or sign in with your password.",
                "Too many passkey requests from your network. Wait %(count)d minutes and try "
                "again, or sign in with your password.",
                minutes,
            )
        )
        self.retry_after = retry_after


def _record_use(
    tx: Transaction, found: store.Credential, verified: ceremony.VerifiedAssertion, now: int
) -> CeremonyRefused | None:
    """
    Record a verified use of C{found}: its new counter, backup state and
    time; the refusal when the counter went back (a copied key?).
    """
    moved = ceremony.counter_ok(found.sign_count, verified.sign_count) and (
        store.use_credential(
            tx,
            _sha256(found.credential_id),
            found.sign_count,
            verified.sign_count,
            verified.backed_up,
            now,
        )
        # With no counter (both 0) the row may be left as it was.
        or verified.sign_count == 0
    )
    if moved:
        return None
    return CeremonyRefused(
        COPIED,
        f"{found.name}: signature counter {verified.sign_count} after "
        f"{found.sign_count} (a copied key?)",
    )


class SecurityKeys:
    """The WebAuthn credentials of every account, on one storage, for one relying party."""

    def __init__(
        self,
        storage: Storage,
        settings: MfaSettings,
        relying_party: RelyingParty,
        master_secret: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.rp = relying_party
        self._handle_key = hmac.new(
            master_secret, b"clickpass key: webauthn user handle", hashlib.sha256
        ).digest()
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    def user_handle(self, account_id: int) -> bytes:
        """
        The opaque user ID a passkey stores for C{account_id}: the same
        every time, naming neither the address nor the row.
        """
        return hmac.new(self._handle_key, str(account_id).encode("ascii"), hashlib.sha256).digest()

    @property
    def timeout_ms(self) -> int:
        return self.settings.webauthn_timeout * 1000

    async def credentials(self, account_id: int) -> list[store.Credential]:
        result: list[store.Credential] = await self.storage.run(store.credentials, account_id)
        return result

    async def has_keys(self, account_id: int) -> bool:
        result: bool = await self.storage.run(store.has_keys, account_id)
        return result

    async def _challenge(self, purpose: str, binding: str, account_id: int, address: str) -> bytes:
        """
        A new challenge for C{purpose}, given to the browser session
        C{binding}: counted against C{address} (L{ChallengesThrottled} past
        [mfa] webauthn_challenges_per_address within webauthn_timeout), and
        replacing the session's oldest past L{CHALLENGES_PER_SESSION}.
        Expired ones are removed by housekeeping (L{store.expire}).
        """
        assert purpose in PURPOSES
        challenge = secrets.token_bytes(32)
        now = self.clock()
        settings = self.settings

        def start(tx: Transaction) -> int:
            subjects = [(THROTTLE_SCOPE, address[:255], settings.webauthn_challenges_per_address)]
            wait = _reserve_attempt(tx, subjects, int(now), settings.webauthn_timeout)
            if wait:
                return wait
            store.start_challenge(
                tx,
                _sha256(challenge),
                purpose,
                _sha256(binding.encode("utf-8")),
                account_id,
                int(now) + settings.webauthn_timeout,
                int(now * 1000),
                CHALLENGES_PER_SESSION,
            )
            return 0

        wait: int = await self.storage.run(start)
        if wait:
            log.warn(
                "{purpose} challenge refused: too many from {address}",
                purpose=purpose,
                address=address,
            )
            raise ChallengesThrottled(wait)
        return challenge

    def _log_refusal(
        self, tx: Transaction, account_id: int, refused: CeremonyRefused, where: Where, now: int
    ) -> None:
        # A security event in the person's log: someone tried a key on
        # their account and it was refused (why, in the detail).
        events.record(
            tx,
            account_id,
            "passkey_refused",
            now,
            client_address=where.client_address,
            browser=where.browser,
            detail=refused.reason,
        )

    # Registering.

    async def registration_options(
        self, account_id: int, email: str, binding: str, passkey: bool, address: str
    ) -> dict[str, Any]:
        """
        The C{create()} options for a new passkey or security key of
        C{account_id}, its challenge given to the browser session C{binding}
        at the client C{address}.
        """
        existing = await self.credentials(account_id)
        if len(existing) >= MAX_KEYS:
            raise KeyRefused(
                Text(
                    N_("You have %(count)d passkeys and security keys already. Remove one first."),
                    count=MAX_KEYS,
                )
            )
        challenge = await self._challenge(REGISTER, binding, account_id, address)
        return ceremony.registration_options(
            self.rp,
            user_handle=self.user_handle(account_id),
            user_name=email,
            challenge=challenge,
            existing=[c.credential_id for c in existing],
            passkey=passkey,
            timeout_ms=self.timeout_ms,
        )

    async def register(
        self,
        account_id: int,
        binding: str,
        answer: str,
        name: str,
        passkey: bool,
        where: Where,
    ) -> store.Credential:
        """
        Check a C{create()} answer and keep the credential under C{name}.
        L{CeremonyRefused} for anything wrong (nothing is added then).
        """
        name = " ".join(name.split())
        if not name or len(name) > NAME_LENGTH or not name.isprintable():
            raise KeyRefused(
                Text(
                    N_(
                        "Give the key a name of 1 to %(limit)d characters, such as "
                        '"Blue key" or "Laptop".'
                    ),
                    limit=NAME_LENGTH,
                )
            )
        try:
            challenge, raw = ceremony.read_registration(answer)
        except CeremonyRefused as e:
            log.info(
                "account {account_id}: new key refused ({reason})",
                account_id=account_id,
                reason=e.reason,
            )
            await self.storage.run(self._log_refusal, account_id, e, where, self.now())
            raise
        now = self.now()

        result: store.Credential | CeremonyRefused = await self.storage.run(
            self._keep, account_id, binding, challenge, raw, name, passkey, where, now
        )
        if isinstance(result, CeremonyRefused):
            log.info(
                "account {account_id}: new key refused ({reason})",
                account_id=account_id,
                reason=result.reason,
            )
            raise result
        log.info(
            "account {account_id} added a {kind}",
            account_id=account_id,
            kind="passkey" if passkey else "security key",
        )
        return result

    def _keep(
        self,
        tx: Transaction,
        account_id: int,
        binding: str,
        challenge: bytes,
        raw: dict[str, Any],
        name: str,
        passkey: bool,
        where: Where,
        now: int,
    ) -> store.Credential | CeremonyRefused:
        """In one transaction: spend the challenge, check the answer, keep the key."""
        owner = store.spend_challenge(
            tx, _sha256(challenge), REGISTER, _sha256(binding.encode("utf-8")), now
        )
        if owner != account_id:
            refused: CeremonyRefused = KeyRefused(EXPIRED)
            self._log_refusal(tx, account_id, refused, where, now)
            return refused
        try:
            new = ceremony.verify_registration(self.rp, raw, challenge, passkey)
        except CeremonyRefused as e:
            self._log_refusal(tx, account_id, e, where, now)
            return e
        id_hash = _sha256(new.credential_id)
        if not store.add_credential(
            tx,
            id_hash,
            new.credential_id,
            account_id,
            new.public_key,
            new.sign_count,
            new.transports,
            name,
            passkey,
            new.backup_eligible,
            new.backed_up,
            now,
        ):
            return KeyRefused(ALREADY_REGISTERED)
        events.record(
            tx,
            account_id,
            "passkey_added",
            now,
            client_address=where.client_address,
            browser=where.browser,
            detail=name,
        )
        found = store.credential(tx, id_hash)
        assert found is not None
        return found

    async def remove(self, account_id: int, ref: str, where: Where) -> str | None:
        """Remove the credential C{ref}; its name, or L{None} when it is not theirs."""
        now = self.now()

        def remove(tx: Transaction) -> str | None:
            name = store.remove_credential(tx, account_id, ref)
            if name is not None:
                events.record(
                    tx,
                    account_id,
                    "passkey_removed",
                    now,
                    client_address=where.client_address,
                    browser=where.browser,
                    detail=name,
                )
            return name

        result: str | None = await self.storage.run(remove)
        if result is not None:
            log.info("account {account_id} removed a key", account_id=account_id)
        return result

    # Signing in with a key.

    async def assertion_options(
        self,
        purpose: str,
        binding: str,
        account_id: int | None,
        address: str,
        device_bound: bool = False,
    ) -> dict[str, Any]:
        """
        The C{get()} options: for C{account_id}'s own keys (second step,
        step-up), only those bound to one device with C{device_bound} (what
        a site asking for a physical factor needs: offering a synced passkey
        would only send the person round again), or, with no account, for
        any discoverable passkey with user verification (a sign-in with no
        password); the challenge given to the browser session C{binding} at
        the client C{address}.
        """
        allow: list[tuple[bytes, tuple[str, ...]]] = []
        if account_id is not None:
            allow = [
                (c.credential_id, c.transports)
                for c in await self.credentials(account_id)
                if not (device_bound and synced(c.backup_eligible, c.backed_up))
            ]
            if not allow and device_bound:
                raise KeyRefused(DEVICE_BOUND_NEEDED)
            if not allow:
                raise KeyRefused(NO_KEYS)
        challenge = await self._challenge(purpose, binding, account_id or 0, address)
        return ceremony.authentication_options(
            self.rp,
            challenge=challenge,
            allow=allow,
            user_verification=account_id is None,
            timeout_ms=self.timeout_ms,
        )

    async def check(
        self,
        purpose: str,
        binding: str,
        answer: str,
        account_id: int | None,
        where: Where,
        device_bound: bool = False,
    ) -> KeyUsed:
        """
        Judge a C{get()} answer given for a challenge of C{purpose} in the
        browser session C{binding}: from C{account_id}'s own key, or (no
        account) any registered passkey, which must then have verified
        the person and carry its user handle; with C{device_bound}, a key
        bound to one device when its owner has one (a synced passkey, as
        its stored or present backup flags tell, is then refused with
        L{DEVICE_BOUND_NEEDED}, its use not recorded). L{CeremonyRefused}
        otherwise.
        """
        try:
            assertion = ceremony.read_assertion(answer)
        except CeremonyRefused as e:
            log.warn("{purpose} with a key refused: {reason}", purpose=purpose, reason=e.reason)
            if account_id is not None:
                await self.storage.run(self._log_refusal, account_id, e, where, self.now())
            raise
        now = self.now()
        passwordless = account_id is None

        def decide(tx: Transaction) -> tuple[KeyUsed | CeremonyRefused, int | None]:
            # The outcome, and whose security log a refusal goes to (None:
            # nobody's is known).
            owner = store.spend_challenge(
                tx, _sha256(assertion.challenge), purpose, _sha256(binding.encode("utf-8")), now
            )
            if owner is None or owner != (account_id or 0):
                return KeyRefused(EXPIRED), account_id
            id_hash = _sha256(assertion.credential_id)
            found = store.credential(tx, id_hash)
            if found is None:
                return CeremonyRefused(UNKNOWN_KEY, "unknown credential"), account_id
            if account_id is not None and found.account_id != account_id:
                return CeremonyRefused(UNKNOWN_KEY, "another account's credential"), account_id
            if passwordless and assertion.user_handle != self.user_handle(found.account_id):
                refused = CeremonyRefused(UNKNOWN_KEY, "user handle not the credential's account")
                return refused, found.account_id
            try:
                verified = ceremony.verify_assertion(
                    self.rp, assertion, found.public_key, require_user_verification=passwordless
                )
            except CeremonyRefused as e:
                return e, found.account_id
            kind = synced(
                found.backup_eligible or verified.backup_eligible,
                found.backed_up or verified.backed_up,
            )
            if device_bound and kind and store.has_device_keys(tx, found.account_id):
                # The person's own key, only not the kind this step needs
                # (one they have): no security event, the challenge spent.
                return CeremonyRefused(DEVICE_BOUND_NEEDED, f"{found.name}: synced"), None
            copied = _record_use(tx, found, verified, now)
            if copied is not None:
                return copied, found.account_id
            return KeyUsed(found.account_id, found.name, verified.user_verified, kind), None

        def judge(tx: Transaction) -> KeyUsed | CeremonyRefused:
            result, subject = decide(tx)
            if isinstance(result, CeremonyRefused) and subject is not None:
                self._log_refusal(tx, subject, result, where, now)
            return result

        result: KeyUsed | CeremonyRefused = await self.storage.run(judge)
        if isinstance(result, CeremonyRefused):
            log.warn(
                "{purpose} with a key refused: {reason}", purpose=purpose, reason=result.reason
            )
            raise result
        return result

"""
The second factors on both storage backends, on an injected clock: setting
TOTP up, a code accepted once within the window, throttling, recovery codes
(spent once, mailed about), secrets sealed under the master secret.
"""

from __future__ import annotations

from typing import Any

import pytest

from clickpass.accounts import events
from clickpass.accounts.service import Throttled
from clickpass.mfa import totp
from clickpass.mfa.sealing import SealError, SecretBox, normalise_recovery_code
from clickpass.mfa.service import CodeRefused, MfaError, Outcome, SecondFactors
from clickpass.mfa.settings import MfaSettings
from clickpass.mfa.store import PendingStep
from clickpass.storage.sql import AdbapiStorage, Transaction
from tests.support.deferreds import async_test

NOW = 1_700_000_010
MASTER = b"m" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


class Mailbag:
    """Records what would be queued, in the caller's transaction."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

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
    ) -> int:
        self.sent.append((to, template, dict(context or {})))
        return len(self.sent)


def _add_account(tx: Transaction) -> int:
    tx.execute(
        "INSERT INTO accounts (uid, email, password_hash, created) VALUES (?, ?, ?, ?)",
        "uid-1",
        "ann@example.com",
        "x",
        NOW,
    )
    return int(tx.scalar("SELECT id FROM accounts WHERE uid = ?", "uid-1"))


async def _enrolled(
    storage: AdbapiStorage, clock: FakeClock, mail: Mailbag | None = None
) -> tuple[SecondFactors, int, str, list[str]]:
    factors = SecondFactors(storage, MfaSettings(), MASTER, mail, clock=clock)
    account_id = await storage.run(_add_account)
    secret = await factors.begin_totp(account_id)
    codes = await factors.confirm_totp(account_id, totp.code_at(secret, clock.now))
    return factors, account_id, secret, codes


@async_test
async def test_set_up_with_a_first_code(storage_backend: AdbapiStorage) -> None:
    """
    A secret is kept sealed until a right code confirms it; a wrong code
    changes nothing; once set up, ten recovery codes are given.
    """
    clock = FakeClock()
    factors = SecondFactors(storage_backend, MfaSettings(), MASTER, None, clock=clock)
    account_id = await storage_backend.run(_add_account)
    secret = await factors.begin_totp(account_id)
    stored = await storage_backend.run(
        lambda tx: bytes(tx.scalar("SELECT secret FROM mfa_totp WHERE account_id = ?", account_id))
    )
    assert secret.encode() not in stored
    assert await factors.pending_totp(account_id) == secret
    wrong = str((int(totp.code_at(secret, NOW)) + 1) % 1_000_000).zfill(6)
    with pytest.raises(CodeRefused):
        await factors.confirm_totp(account_id, wrong)
    assert not await factors.has_factor(account_id)
    codes = await factors.confirm_totp(account_id, totp.code_at(secret, NOW))
    assert len(codes) == 10 and len(set(codes)) == 10
    status = await factors.status(account_id)
    assert status.totp and status.recovery_codes_left == 10
    with pytest.raises(MfaError):
        await factors.begin_totp(account_id)


@async_test
async def test_code_accepted_once_within_window(storage_backend: AdbapiStorage) -> None:
    """
    The confirming code's step is spent; the next step's code is good once;
    a code two steps old is refused, and so is an older one after a newer.
    """
    clock = FakeClock()
    factors, account_id, secret, _ = await _enrolled(storage_backend, clock)
    email = "ann@example.com"
    with pytest.raises(CodeRefused):  # the code that confirmed the set-up
        await factors.check_code(account_id, email, totp.code_at(secret, NOW))
    clock.now = NOW + 30
    code = totp.code_at(secret, clock.now)
    assert await factors.check_code(account_id, email, code) is Outcome.TOTP
    with pytest.raises(CodeRefused):
        await factors.check_code(account_id, email, code)
    clock.now = NOW + 120
    with pytest.raises(CodeRefused):  # out of the window: two steps and more behind
        await factors.check_code(account_id, email, totp.code_at(secret, NOW + 60))
    # One step ahead is in the window (a phone clock a little fast).
    assert (
        await factors.check_code(account_id, email, totp.code_at(secret, clock.now + 30))
        is Outcome.TOTP
    )
    with pytest.raises(CodeRefused):  # older than the last one accepted
        await factors.check_code(account_id, email, totp.code_at(secret, clock.now))


@async_test
async def test_wrong_codes_are_throttled(storage_backend: AdbapiStorage) -> None:
    """
    After the allowed number of wrong codes even the right one is refused
    until the window passes; then it works and the count starts afresh.
    """
    clock = FakeClock()
    factors, account_id, secret, _ = await _enrolled(storage_backend, clock)
    settings = MfaSettings()
    for _ in range(settings.throttle_per_account):
        with pytest.raises(CodeRefused):
            await factors.check_code(account_id, "ann@example.com", "000000x")
    clock.now = NOW + 60
    with pytest.raises(Throttled):
        await factors.check_code(account_id, "ann@example.com", totp.code_at(secret, clock.now))
    clock.now = NOW + settings.throttle_window + 60
    right = totp.code_at(secret, clock.now)
    assert await factors.check_code(account_id, "ann@example.com", right) is Outcome.TOTP


@async_test
async def test_recovery_codes_spent_once_and_mailed(storage_backend: AdbapiStorage) -> None:
    """
    A recovery code works once, typed in any case and spacing; its use is
    mailed to the person; only hashes are stored; new codes void the old.
    """
    clock = FakeClock()
    mail = Mailbag()
    factors, account_id, _, codes = await _enrolled(storage_backend, clock, mail)
    stored = await storage_backend.run(
        lambda tx: [r[0] for r in tx.fetchall("SELECT code_hash FROM mfa_recovery_codes")]
    )
    assert not set(codes) & set(stored)
    typed = " " + codes[0].upper().replace("-", " ") + " "
    assert await factors.check_code(account_id, "ann@example.com", typed) is Outcome.RECOVERY_CODE
    assert mail.sent == [
        ("ann@example.com", "mfa_recovery_code_used", {"email": "ann@example.com", "left": 9})
    ]
    with pytest.raises(CodeRefused):
        await factors.check_code(account_id, "ann@example.com", codes[0])
    assert len(mail.sent) == 1
    fresh = await factors.new_recovery_codes(account_id)
    with pytest.raises(CodeRefused):
        await factors.check_code(account_id, "ann@example.com", codes[1])
    assert (
        await factors.check_code(account_id, "ann@example.com", fresh[1]) is Outcome.RECOVERY_CODE
    )
    assert (await factors.status(account_id)).recovery_codes_left == 9


@async_test
async def test_second_step_expires(storage_backend: AdbapiStorage) -> None:
    """A second step is open for its lifetime and no longer; an unknown token is none."""
    clock = FakeClock()
    factors, account_id, _, _ = await _enrolled(storage_backend, clock)
    token = await factors.start_second_step(account_id)
    assert await factors.second_step(token) == PendingStep(account_id, NOW, "pwd")
    federated = await factors.start_second_step(account_id, "fed")
    assert await factors.second_step(federated) == PendingStep(account_id, NOW, "fed")
    assert await factors.second_step("nope") is None
    clock.now = NOW + MfaSettings().second_step_lifetime
    assert await factors.second_step(token) is None


@async_test
async def test_remove_takes_everything(storage_backend: AdbapiStorage) -> None:
    """Removing the factor removes its recovery codes and trusted browsers too."""
    clock = FakeClock()
    factors, account_id, _, codes = await _enrolled(storage_backend, clock)
    trusted = await factors.trust_browser(account_id, "127.0.0.1")
    assert await factors.is_trusted(trusted, account_id)
    assert await factors.remove(account_id)
    assert not await factors.is_trusted(trusted, account_id)
    status = await factors.status(account_id)
    assert not status.totp and status.recovery_codes_left == 0
    with pytest.raises(CodeRefused):
        await factors.check_code(account_id, "ann@example.com", codes[0])


def test_sealed_secret_bound_to_account_and_master_secret() -> None:
    """A sealed secret opens for its account under its master secret only."""
    box = SecretBox(MASTER)
    sealed = box.seal(7, "ABCDEFGH")
    assert box.unseal(7, sealed) == "ABCDEFGH"
    with pytest.raises(SealError):
        box.unseal(8, sealed)
    with pytest.raises(SealError):
        SecretBox(b"n" * 32).unseal(7, sealed)
    with pytest.raises(SealError):
        box.unseal(7, b"\x01short")


def test_recovery_code_forms() -> None:
    """Recovery codes are forgiven case, spaces and the dash; nothing else."""
    assert normalise_recovery_code("ABCDE FGHJK") == "abcde-fghjk"
    assert normalise_recovery_code("abcdefghjk") == "abcde-fghjk"
    assert normalise_recovery_code("abcde-fghj0") is None
    assert normalise_recovery_code("123456") is None


@async_test
async def test_expiry_forgets_what_has_run_out(storage_backend: AdbapiStorage) -> None:
    """Housekeeping deletes second steps and trusted browsers past their time, no others."""
    clock = FakeClock()
    factors, account_id, _, _ = await _enrolled(storage_backend, clock)
    step = await factors.start_second_step(account_id)
    trusted = await factors.trust_browser(account_id, "127.0.0.1")
    assert await factors.expire(NOW + 10) == 0
    assert await factors.expire(NOW + MfaSettings().second_step_lifetime) == 1  # the step
    clock.now = NOW + 20
    assert await factors.second_step(step) is None
    assert await factors.is_trusted(trusted, account_id)
    assert await factors.expire(NOW + MfaSettings().trusted_browser_lifetime) == 1
    assert not await factors.is_trusted(trusted, account_id)


@async_test
async def test_refused_codes_and_recovery_codes_are_security_events(
    storage_backend: AdbapiStorage,
) -> None:
    """
    A wrong app code, a reused one, one out of its window and a wrong
    recovery code are each refused and recorded in the person's security
    log (with the address and browser given), nothing else changed; a
    recovery code used is recorded too.
    """
    clock = FakeClock()
    factors, account_id, secret, codes = await _enrolled(storage_backend, clock, Mailbag())
    email = "ann@example.com"
    here = {"client_address": "192.0.2.7", "browser": "Firefox on Linux"}
    clock.now = NOW + 30
    good = totp.code_at(secret, clock.now)
    assert await factors.check_code(account_id, email, good, **here) is Outcome.TOTP
    clock.now = NOW + 200
    for typed in ("000000", good, totp.code_at(secret, NOW - 60), "zzzzz-zzzzz"):
        with pytest.raises(CodeRefused):
            await factors.check_code(account_id, email, typed, **here)
    assert await factors.check_code(account_id, email, codes[0], **here) is Outcome.RECOVERY_CODE

    def read(tx: Transaction) -> list[tuple[str, str, str]]:
        return [(e.kind, e.client_address, e.detail) for e in events.recent(tx, account_id)]

    logged = await storage_backend.run(read)
    refused = [e for e in logged if e[0] == "code_refused"]
    assert len(refused) == 4 and {e[1] for e in refused} == {"192.0.2.7"}
    assert sum(1 for e in refused if e[2].startswith("app code")) == 3
    assert ("recovery_code_used", "192.0.2.7", "9 recovery codes left") in logged
    assert (await factors.status(account_id)).recovery_codes_left == 9

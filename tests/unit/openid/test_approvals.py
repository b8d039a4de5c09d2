"""Remembered approvals: recorded, widened, used, and their last use kept coarsely."""

from __future__ import annotations

from clickpass.database.storage import AdbapiStorage, Transaction
from clickpass.openid import approvals
from clickpass.openid.approvals import LAST_USED_RESOLUTION
from tests.support.deferreds import async_test

NOW = 1_700_000_000
REALM = "https://shop.example/"


def _add_account(tx: Transaction) -> int:
    tx.execute(
        "INSERT INTO accounts (uid, email, password_hash, created) VALUES (?, ?, ?, ?)",
        "uid-1",
        "a@example.com",
        "x",
        NOW,
    )
    return int(tx.scalar("SELECT id FROM accounts WHERE uid = ?", "uid-1"))


def _last_used(tx: Transaction, account_id: int) -> int:
    return int(
        tx.scalar(
            "SELECT last_used FROM approvals WHERE account_id = ? AND realm = ?",
            account_id,
            REALM,
        )
    )


@async_test
async def test_never_approved(storage_backend: AdbapiStorage) -> None:
    """A realm never approved gives None, and nothing is written."""
    account_id = await storage_backend.run(_add_account)
    assert await storage_backend.run(approvals.use, account_id, REALM, frozenset(), NOW) is None
    count = await storage_backend.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM approvals"))
    assert count == 0


@async_test
async def test_use_covers_and_widens(storage_backend: AdbapiStorage) -> None:
    """use() gives what was approved; remember() widens it."""
    account_id = await storage_backend.run(_add_account)
    email = frozenset({"email"})
    await storage_backend.run(approvals.remember, account_id, REALM, email, NOW)
    assert await storage_backend.run(approvals.use, account_id, REALM, frozenset(), NOW) == email
    both = frozenset({"email", "nickname"})
    await storage_backend.run(approvals.remember, account_id, REALM, both, NOW)
    assert await storage_backend.run(approvals.use, account_id, REALM, email, NOW) == both


@async_test
async def test_last_used_is_written_at_its_resolution(storage_backend: AdbapiStorage) -> None:
    """A covered sign-in moves last_used forward only when it is LAST_USED_RESOLUTION old."""
    account_id = await storage_backend.run(_add_account)
    email = frozenset({"email"})
    await storage_backend.run(approvals.remember, account_id, REALM, email, NOW)
    soon = NOW + LAST_USED_RESOLUTION - 1
    await storage_backend.run(approvals.use, account_id, REALM, email, soon)
    assert await storage_backend.run(_last_used, account_id) == NOW
    later = NOW + LAST_USED_RESOLUTION
    await storage_backend.run(approvals.use, account_id, REALM, email, later)
    assert await storage_backend.run(_last_used, account_id) == later


@async_test
async def test_an_approval_that_does_not_cover_is_not_used(storage_backend: AdbapiStorage) -> None:
    """Asking for more than was approved leaves last_used alone (the person is asked again)."""
    account_id = await storage_backend.run(_add_account)
    await storage_backend.run(approvals.remember, account_id, REALM, frozenset({"email"}), NOW)
    later = NOW + 2 * LAST_USED_RESOLUTION
    more = frozenset({"email", "fullname"})
    assert await storage_backend.run(approvals.use, account_id, REALM, more, later) == frozenset(
        {"email"}
    )
    assert await storage_backend.run(_last_used, account_id) == NOW

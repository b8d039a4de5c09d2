"""Remembered approvals: recorded, widened, read, and their last use kept coarsely."""

from __future__ import annotations

from clickpass.openid import approvals
from clickpass.openid.approvals import Approval
from clickpass.openid.identifiers import LAST_USED_RESOLUTION
from clickpass.storage.sql import AdbapiStorage, Transaction
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
    """A realm never approved reads as None."""
    account_id = await storage_backend.run(_add_account)
    assert await storage_backend.run(approvals.read, account_id, REALM) is None


@async_test
async def test_read_covers_and_widens(storage_backend: AdbapiStorage) -> None:
    """read() gives what was approved and when; remember() widens it."""
    account_id = await storage_backend.run(_add_account)
    email = frozenset({"email"})
    await storage_backend.run(approvals.remember, account_id, REALM, email, NOW)
    approval = await storage_backend.run(approvals.read, account_id, REALM)
    assert approval == Approval(email, NOW)
    assert approval.covers(frozenset()) and approval.covers(email)
    both = frozenset({"email", "nickname"})
    assert not approval.covers(both)
    await storage_backend.run(approvals.remember, account_id, REALM, both, NOW + 5)
    assert await storage_backend.run(approvals.read, account_id, REALM) == Approval(both, NOW + 5)


def test_stale_at_the_resolution() -> None:
    """A use is recorded only when the last one is LAST_USED_RESOLUTION old."""
    approval = Approval(frozenset(), NOW)
    assert not approval.stale(NOW + LAST_USED_RESOLUTION - 1)
    assert approval.stale(NOW + LAST_USED_RESOLUTION)


@async_test
async def test_touch_records_the_use(storage_backend: AdbapiStorage) -> None:
    """touch() moves last_used and leaves the fields alone."""
    account_id = await storage_backend.run(_add_account)
    email = frozenset({"email"})
    await storage_backend.run(approvals.remember, account_id, REALM, email, NOW)
    await storage_backend.run(approvals.touch, account_id, REALM, NOW + LAST_USED_RESOLUTION)
    assert await storage_backend.run(_last_used, account_id) == NOW + LAST_USED_RESOLUTION
    approval = await storage_backend.run(approvals.read, account_id, REALM)
    assert approval is not None and approval.fields == email


@async_test
async def test_an_approval_reported_kept_is_read_back(storage_backend: AdbapiStorage) -> None:
    """
    Realms that share their first 255 characters are kept apart (or, when
    too long to key, refused): never reported kept and then not found.
    """
    account_id = await storage_backend.run(_add_account)
    prefix = "https://shop.example/" + "p" * (255 - len("https://shop.example/") - 1)
    realms = [prefix + "a", prefix + "b", prefix + "a/longer", prefix + "b/longer"]
    kept = {}
    for index, realm in enumerate(realms):
        fields = frozenset({f"field{index}"})
        if await storage_backend.run(approvals.remember, account_id, realm, fields, NOW):
            kept[realm] = fields
    assert set(kept) == set(realms[:2])
    for realm, fields in kept.items():
        found = await storage_backend.run(approvals.read, account_id, realm)
        assert found is not None and found.fields == fields


@async_test
async def test_declined_fields_and_always_ask(storage_backend: AdbapiStorage) -> None:
    """
    An approval with a field declined answers a request for it without
    asking, and shares only what was allowed; "always ask" keeps the
    approval but never answers at once.
    """
    account_id = await storage_backend.run(_add_account)
    email, nickname = frozenset({"email"}), frozenset({"nickname"})
    await storage_backend.run(approvals.remember, account_id, REALM, email, NOW, email | nickname)
    approval = await storage_backend.run(approvals.read, account_id, REALM)
    assert approval == Approval(email, NOW, nickname, False)
    assert approval.answers(email | nickname) and not approval.covers(email | nickname)
    assert not approval.answers(frozenset({"fullname"}))
    assert approval.shared({"email": "a@example.com", "nickname": "ann"}) == {
        "email": "a@example.com"
    }
    await storage_backend.run(
        approvals.remember, account_id, REALM, email, NOW + 5, frozenset(), True
    )
    approval = await storage_backend.run(approvals.read, account_id, REALM)
    assert approval == Approval(email, NOW + 5, frozenset(), True)
    assert not approval.answers(frozenset()) and not approval.covers(frozenset())
    listed = await storage_backend.run(approvals.remembered, account_id)
    assert [(r.realm, r.always_ask) for r in listed] == [(REALM, True)]

"""
The storage layer against both backends: migrations, transactions, error
mapping, unicode and binary values, the offline path of clickpass-ctl.
Every test here runs once on SQLite and once on a private MariaDB.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread

from clickpass.storage import migrations
from clickpass.storage.migrations import Migration, SchemaTooNew
from clickpass.storage.offline import migrate_offline
from clickpass.storage.sql import (
    AdbapiStorage,
    DatabaseError,
    IntegrityError,
    Transaction,
)
from tests.support.deferreds import async_test
from tests.support.storage import DatabaseTarget

NOW = 1_700_000_000
TABLES = {
    "accounts",
    "sessions",
    "site_identifiers",
    "approvals",
    "openid_associations",
    "openid_nonces",
    "signin_failures",
    "node_metadata",
    "schema_version",
}


def _tables(tx: Transaction) -> set[str]:
    if tx.dialect.name == "sqlite":
        rows = tx.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = tx.fetchall("SHOW TABLES")
    return {str(r[0]) for r in rows}


def _versions(tx: Transaction) -> list[int]:
    return [int(r[0]) for r in tx.fetchall("SELECT version FROM schema_version ORDER BY version")]


def _add_account(tx: Transaction, uid: str, email: str, name: str = "") -> int:
    tx.execute(
        "INSERT INTO accounts (uid, email, display_name, created) VALUES (?, ?, ?, ?)",
        uid,
        email,
        name,
        NOW,
    )
    return tx.lastrowid


# Migrations.


@async_test
async def test_fresh_database_is_migrated_to_the_latest_version(
    database_target: DatabaseTarget,
) -> None:
    """Migrating an empty database applies every migration once and creates every table."""
    storage = database_target.open()
    applied = await migrations.migrate(storage, NOW)
    assert applied == [m.version for m in migrations.MIGRATIONS]
    assert await storage.run(migrations.current_version) == migrations.latest_version()
    assert await storage.run(_tables) >= TABLES


@async_test
async def test_migrating_again_changes_nothing(database_target: DatabaseTarget) -> None:
    """A second migration run applies nothing and keeps one version row per migration."""
    storage = database_target.open()
    await migrations.migrate(storage, NOW)
    await storage.run(_add_account, "u1", "a@example.org")
    assert await migrations.migrate(storage, NOW + 5) == []
    assert await storage.run(_versions) == [m.version for m in migrations.MIGRATIONS]
    assert await storage.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts")) == 1


@async_test
async def test_two_migrators_at_once_both_succeed(
    database_target: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Two processes migrating the same empty database at the same moment both
    finish without error; each migration is recorded exactly once and
    reported as applied by exactly one of them.
    """
    extra = (
        Migration(
            migrations.latest_version() + 1,
            "test: another table",
            (
                "CREATE TABLE IF NOT EXISTS probe (id {pk}, note VARCHAR(32) NOT NULL){opts}",
                "CREATE INDEX IF NOT EXISTS probe_note ON probe (note)",
            ),
        ),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + extra)
    first, second = database_target.open(), database_target.open()
    results = await DeferredList(
        [
            Deferred.fromCoroutine(migrations.migrate(first, NOW)),
            Deferred.fromCoroutine(migrations.migrate(second, NOW)),
        ],
        consumeErrors=True,
    )
    failures = [r for ok, r in results if not ok]
    assert failures == []
    applied = sorted(v for _, r in results for v in r)
    everything = [m.version for m in migrations.MIGRATIONS]
    assert applied == everything
    assert await first.run(_versions) == everything
    assert "probe" in await second.run(_tables)


@async_test
async def test_schema_newer_than_this_release_is_refused(
    storage_backend: AdbapiStorage,
) -> None:
    """A database migrated by a newer release is refused with a message saying so."""
    newer = migrations.latest_version() + 1
    await storage_backend.run(
        lambda tx: tx.execute(
            "INSERT INTO schema_version (version, name, applied) VALUES (?, ?, ?)",
            newer,
            "from the future",
            NOW,
        )
    )
    with pytest.raises(SchemaTooNew, match=f"version {newer}, newer than this release"):
        await migrations.migrate(storage_backend, NOW)


# Transactions.


@async_test
async def test_execute_fetch_and_scalar(storage_backend: AdbapiStorage) -> None:
    """
    execute returns the rows changed; fetchone, fetchall and scalar return
    tuples, lists and values (None when there is no row), with ? placeholders
    and a literal % in the SQL on both backends.
    """

    def work(tx: Transaction) -> tuple[object, ...]:
        _add_account(tx, "u1", "a@example.org", "Ann")
        _add_account(tx, "u2", "b@example.org", "Bob")
        changed = tx.execute("UPDATE accounts SET disabled = 1 WHERE email LIKE ?", "%example.org")
        one = tx.fetchone("SELECT uid, display_name FROM accounts WHERE email = ?", "b@example.org")
        none = tx.fetchone("SELECT uid FROM accounts WHERE email = ?", "nobody@example.org")
        every = tx.fetchall("SELECT uid FROM accounts WHERE display_name LIKE '%n%' ORDER BY uid")
        count = tx.scalar("SELECT COUNT(*) FROM accounts WHERE disabled = ?", 1)
        missing = tx.scalar("SELECT uid FROM accounts WHERE id = ?", -1)
        return changed, one, none, every, count, missing

    changed, one, none, every, count, missing = await storage_backend.run(work)
    assert changed == 2
    assert one == ("u2", "Bob")
    assert none is None
    assert every == [("u1",)]
    assert count == 2
    assert missing is None


@async_test
async def test_question_marks_in_strings_are_text(storage_backend: AdbapiStorage) -> None:
    """A ? inside a string literal is text on both backends; only the bare ? is a placeholder."""

    def work(tx: Transaction) -> object:
        return tx.fetchone("SELECT 'who? 100%', ?, 'it''s ?'", "me")

    assert await storage_backend.run(work) == ("who? 100%", "me", "it's ?")


@async_test
async def test_duplicate_key_raises_integrity_error(storage_backend: AdbapiStorage) -> None:
    """A duplicate unique key surfaces as IntegrityError (a DatabaseError) on both backends."""
    await storage_backend.run(_add_account, "u1", "a@example.org")
    with pytest.raises(IntegrityError) as caught:
        await storage_backend.run(_add_account, "u2", "a@example.org")
    assert isinstance(caught.value, DatabaseError)
    rows = await storage_backend.run(lambda tx: tx.fetchall("SELECT uid FROM accounts"))
    assert rows == [("u1",)]


@async_test
async def test_exception_rolls_the_whole_transaction_back(storage_backend: AdbapiStorage) -> None:
    """When the function raises, all it wrote is rolled back and the error reaches the caller."""

    class Boom(Exception):
        pass

    def work(tx: Transaction) -> None:
        _add_account(tx, "u1", "a@example.org")
        tx.execute("UPDATE accounts SET display_name = ? WHERE uid = ?", "changed", "u1")
        raise Boom()

    with pytest.raises(Boom):
        await storage_backend.run(work)
    assert await storage_backend.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts")) == 0
    # The pool's connection is usable afterwards.
    await storage_backend.run(_add_account, "u1", "a@example.org")


@async_test
async def test_integrity_error_inside_a_transaction_rolls_back_earlier_writes(
    storage_backend: AdbapiStorage,
) -> None:
    """An IntegrityError that escapes the function undoes the transaction's earlier writes too."""
    await storage_backend.run(_add_account, "u1", "a@example.org")

    def work(tx: Transaction) -> None:
        _add_account(tx, "u2", "b@example.org")
        _add_account(tx, "u3", "a@example.org")

    with pytest.raises(IntegrityError):
        await storage_backend.run(work)
    rows = await storage_backend.run(lambda tx: tx.fetchall("SELECT uid FROM accounts"))
    assert rows == [("u1",)]


@async_test
async def test_insert_ignore_skips_existing_keys_only(storage_backend: AdbapiStorage) -> None:
    """insert_ignore inserts a new key (1 row), leaves an existing one untouched (0 rows)."""

    def put(tx: Transaction, name: str, value: str) -> int:
        return tx.execute(
            tx.dialect.insert_ignore() + " INTO node_metadata (name, value) VALUES (?, ?)",
            name,
            value,
        )

    assert await storage_backend.run(put, "k", "first") == 1
    assert await storage_backend.run(put, "k", "second") == 0
    assert await storage_backend.run(put, "other", "x") == 1
    value = await storage_backend.run(
        lambda tx: tx.scalar("SELECT value FROM node_metadata WHERE name = ?", "k")
    )
    assert value == "first"


@async_test
async def test_upsert_inserts_a_new_key_and_updates_an_existing_one(
    storage_backend: AdbapiStorage,
) -> None:
    """
    Dialect.upsert inserts a row whose key is new and, for a key that
    exists, sets the other columns to the new values (one row per key);
    C{update} limits what is set.
    """

    def put(tx: Transaction, handle: str, secret: bytes, issued: int) -> None:
        tx.execute(
            tx.dialect.upsert(
                "openid_associations",
                ("server_url", "handle", "secret", "issued", "lifetime", "assoc_type", "expires"),
                key=("server_url", "handle"),
                update=update,
            ),
            "http://rp.example/",
            handle,
            secret,
            issued,
            60,
            "HMAC-SHA256",
            issued + 60,
        )

    def rows(tx: Transaction) -> list[tuple[object, ...]]:
        return [
            (str(h), bytes(s), int(i))
            for h, s, i in tx.fetchall(
                "SELECT handle, secret, issued FROM openid_associations ORDER BY handle"
            )
        ]

    update: tuple[str, ...] | None = None
    await storage_backend.run(put, "h1", b"first", 1)
    await storage_backend.run(put, "h2", b"other", 2)
    await storage_backend.run(put, "h1", b"second", 3)
    assert await storage_backend.run(rows) == [("h1", b"second", 3), ("h2", b"other", 2)]
    update = ("issued",)
    await storage_backend.run(put, "h1", b"third", 4)
    assert await storage_backend.run(rows) == [("h1", b"second", 4), ("h2", b"other", 2)]


@pytest.mark.parametrize(
    ("name", "value"),
    [("k" * 65, "too long a key"), ("k", None)],
    ids=["too-long", "null"],
)
@async_test
async def test_insert_ignore_does_not_hide_other_errors(
    storage_backend: AdbapiStorage, name: str, value: str | None
) -> None:
    """
    insert_ignore never stores a row that does not fit: on MariaDB, whose
    INSERT IGNORE would truncate a too-long key or store NULL as '', it is
    an error; SQLite skips a NULL and keeps long text whole.
    """

    def put(tx: Transaction) -> int:
        return tx.execute(
            tx.dialect.insert_ignore() + " INTO site_identifiers "
            "(opaque, account_id, sector, created, last_used) VALUES (?, ?, ?, ?, ?)",
            name,
            1,
            value,
            NOW,
            NOW,
        )

    if storage_backend.dialect.name == "sqlite" and value is not None:
        # SQLite does not enforce VARCHAR lengths; the row is stored whole.
        assert await storage_backend.run(put) == 1
        stored = await storage_backend.run(
            lambda tx: tx.scalar("SELECT opaque FROM site_identifiers")
        )
        assert stored == name
        return
    if storage_backend.dialect.name == "sqlite":
        # SQLite's INSERT OR IGNORE skips a NOT NULL violation: nothing stored.
        assert await storage_backend.run(put) == 0
    else:
        with pytest.raises(DatabaseError, match="insert refused"):
            await storage_backend.run(put)
    count = await storage_backend.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM site_identifiers"))
    assert count == 0


@async_test
async def test_run_blocking_from_another_thread(storage_backend: AdbapiStorage) -> None:
    """
    Code running in a non-reactor thread (python3-openid's store) gets the
    result of run_blocking, and its exceptions.
    """
    uid = await deferToThread(
        lambda: storage_backend.run_blocking(
            lambda tx: (
                _add_account(tx, "u1", "a@example.org"),
                tx.scalar("SELECT uid FROM accounts"),
            )[1]
        )
    )
    assert uid == "u1"
    with pytest.raises(IntegrityError):
        await deferToThread(
            lambda: storage_backend.run_blocking(_add_account, "u2", "a@example.org")
        )


# Values.


@async_test
async def test_unicode_round_trip(storage_backend: AdbapiStorage) -> None:
    """Four-byte UTF-8 (emoji) and accents survive in display names and compare exactly."""
    name = "Zoë 🦄 Łukasz 😀 漢字"
    await storage_backend.run(_add_account, "u1", "zoe@example.org", name)
    stored = await storage_backend.run(
        lambda tx: tx.scalar("SELECT display_name FROM accounts WHERE display_name = ?", name)
    )
    assert stored == name


@async_test
async def test_blob_round_trip(storage_backend: AdbapiStorage) -> None:
    """An association secret holding every byte value comes back byte for byte."""
    secret = bytes(range(256)) * 2 + b"\x00'\"\\%?"

    def store(tx: Transaction) -> None:
        tx.execute(
            "INSERT INTO openid_associations "
            "(server_url, handle, secret, issued, lifetime, assoc_type, expires) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            "https://op.example/",
            "{HMAC-SHA256}{1}{abc}",
            secret,
            NOW,
            3600,
            "HMAC-SHA256",
            NOW + 3600,
        )

    await storage_backend.run(store)
    stored = await storage_backend.run(
        lambda tx: tx.scalar(
            "SELECT secret FROM openid_associations WHERE handle = ?", "{HMAC-SHA256}{1}{abc}"
        )
    )
    assert bytes(stored) == secret


# Offline: DirectStorage and clickpass-ctl db migrate.


def test_direct_storage_migrates_offline(database_target: DatabaseTarget) -> None:
    """migrate_offline brings a fresh database to the latest version, then finds nothing to do."""
    settings = database_target.settings()
    latest = migrations.latest_version()
    assert migrate_offline(settings) == ([m.version for m in migrations.MIGRATIONS], latest)
    assert migrate_offline(settings) == ([], latest)
    direct = database_target.open_direct()
    assert direct.run_blocking(_tables) >= TABLES


def test_direct_storage_rolls_back_on_error(database_target: DatabaseTarget) -> None:
    """DirectStorage commits what returns and rolls back what raises."""
    migrate_offline(database_target.settings())
    direct = database_target.open_direct()
    direct.run_blocking(_add_account, "u1", "a@example.org")

    def work(tx: Transaction) -> None:
        _add_account(tx, "u2", "b@example.org")
        _add_account(tx, "u3", "a@example.org")

    with pytest.raises(IntegrityError):
        direct.run_blocking(work)
    failed = direct.run(work)
    failures: list[object] = []
    failed.addErrback(failures.append)
    assert len(failures) == 1
    assert direct.run_blocking(lambda tx: tx.fetchall("SELECT uid FROM accounts")) == [("u1",)]


def test_ctl_db_migrate(database_target: DatabaseTarget, tmp_path: Path) -> None:
    """
    clickpass-ctl db migrate, with no node running, migrates the configured
    database and says so; run again, it says the schema is already current.
    """
    config = database_target.config_file()
    ctl = [sys.executable, "-m", "clickpass.control.ctl", "--config", str(config), "db", "migrate"]
    latest = migrations.latest_version()
    first = subprocess.run(ctl, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        f"applied migrations {', '.join(str(m.version) for m in migrations.MIGRATIONS)}; "
        f"schema is at version {latest}"
    )
    second = subprocess.run(ctl, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"schema already at version {latest}"

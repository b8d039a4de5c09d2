"""
The way back of a rolling upgrade: a node of an older release on a database
a newer release migrated starts when every newer migration admits it
(expand-only), and is refused with one line when one does not (a contract
step) or recorded nothing. On SQLite and on MariaDB.
"""

from __future__ import annotations

import pytest

from clickpass.storage import migrations
from clickpass.storage.migrations import Migration, SchemaTooNew
from clickpass.storage.sql import Transaction
from tests.support.deferreds import async_test
from tests.support.storage import DatabaseTarget

NOW = 1_700_000_000
OURS = migrations.MIGRATIONS
LATEST = migrations.latest_version()


def newer(*steps: tuple[str, int | None]) -> tuple[Migration, ...]:
    """Migrations after this release's, each (a table it creates, compatible_from)."""
    return tuple(
        Migration(
            LATEST + i,
            f"test: table {table}",
            (f"CREATE TABLE IF NOT EXISTS {table} (id {{pk}}, note VARCHAR(32)){{opts}}",),
            compat,
        )
        for i, (table, compat) in enumerate(steps, start=1)
    )


async def migrate_as_newer_release(
    target: DatabaseTarget, monkeypatch: pytest.MonkeyPatch, extra: tuple[Migration, ...]
) -> None:
    """Migrate the database as a release that has C{extra} after this release's migrations."""
    monkeypatch.setattr(migrations, "MIGRATIONS", OURS + extra)
    applied = await migrations.migrate(target.open(), NOW)
    assert applied[-len(extra) :] == [m.version for m in extra]
    monkeypatch.setattr(migrations, "MIGRATIONS", OURS)


def _rows(tx: Transaction) -> list[tuple[int, int]]:
    return [
        (int(v), int(c))
        for v, c in tx.fetchall(
            "SELECT version, compatible_from FROM schema_compatibility ORDER BY version"
        )
    ]


@async_test
async def test_an_older_release_runs_on_a_schema_whose_newer_migrations_are_expand_only(
    database_target: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two newer expand-only migrations: this release starts there, applies nothing, and
    the schema stays the newer one."""
    await migrate_as_newer_release(
        database_target, monkeypatch, newer(("probe_a", None), ("probe_b", None))
    )
    storage = database_target.open()
    assert await migrations.migrate(storage, NOW) == []
    assert await storage.run(migrations.current_version) == LATEST + 2
    rows = await storage.run(_rows)
    assert rows[-2:] == [(LATEST + 1, 0), (LATEST + 2, 0)]
    assert [v for v, _ in rows] == [m.version for m in OURS] + [LATEST + 1, LATEST + 2]


@async_test
async def test_an_older_release_is_refused_after_a_contract_step(
    database_target: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer migration that names its own version (a contract step) refuses every older
    release, even behind an expand-only one; the message names what is needed."""
    await migrate_as_newer_release(
        database_target, monkeypatch, newer(("probe_a", None), ("probe_b", LATEST + 2))
    )
    with pytest.raises(SchemaTooNew) as refused:
        await migrations.migrate(database_target.open(), NOW)
    message = str(refused.value)
    assert "\n" not in message
    assert f"version {LATEST + 2}, newer than this release knows ({LATEST})" in message
    assert f"needs code of version {LATEST + 2} or later" in message


@async_test
async def test_a_contract_step_can_admit_releases_since_it_stopped_using_what_it_drops(
    database_target: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration whose compatible_from is this release's version (what it removes is
    unused since) admits this release; the one after it keeps that value."""
    await migrate_as_newer_release(
        database_target, monkeypatch, newer(("probe_a", LATEST), ("probe_b", None))
    )
    storage = database_target.open()
    assert await migrations.migrate(storage, NOW) == []
    assert (await storage.run(_rows))[-2:] == [(LATEST + 1, LATEST), (LATEST + 2, LATEST)]


@async_test
async def test_a_newer_migration_that_recorded_nothing_is_refused(
    database_target: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer version row with no compatibility row (a release that kept none) refuses."""
    await migrate_as_newer_release(database_target, monkeypatch, newer(("probe_a", None)))
    storage = database_target.open()
    await storage.run(
        lambda tx: tx.execute(
            "INSERT INTO schema_version (version, name, applied) VALUES (?, ?, ?)",
            LATEST + 2,
            "from a release without the record",
            NOW,
        )
    )
    with pytest.raises(SchemaTooNew, match="a newer migration recorded no compatibility"):
        await migrations.migrate(storage, NOW)

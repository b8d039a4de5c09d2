"""What each migration records as the oldest schema version whose code runs after it."""

from __future__ import annotations

import pytest

from clickpass.storage.migrations import MIGRATIONS, Migration, compatible_from

HISTORY = (
    Migration(1, "a", ()),
    Migration(2, "b", ()),
    Migration(3, "contract", (), compatible_from=3),
    Migration(4, "c", ()),
    Migration(5, "contract, unused since 4", (), compatible_from=4),
)


def test_expand_only_migrations_keep_the_previous_value() -> None:
    """None keeps what the migration before said (0 before any contract step)."""
    assert [compatible_from(m, HISTORY) for m in HISTORY] == [0, 0, 3, 3, 4]


def test_a_migration_not_in_the_history_is_an_error() -> None:
    """Asking about a migration the history does not hold is a one-line error."""
    with pytest.raises(ValueError, match="migration 9 is not in the history"):
        compatible_from(Migration(9, "x", ()), HISTORY)


def test_the_real_migrations_admit_the_release_before_each() -> None:
    """
    Every migration so far is expand-only (test_migrations_expand_only.py), so each
    admits the release before it; and none says more than its own version, nor less
    than an earlier one (the value never goes back down).
    """
    values = [compatible_from(m) for m in MIGRATIONS]
    assert values == sorted(values)
    for migration, value in zip(MIGRATIONS, values, strict=True):
        assert value <= migration.version - 1, migration.version
        if migration.compatible_from is not None:
            assert migration.compatible_from <= migration.version

"""Retention: which backups are kept (last N daily, M weekly) and which go."""

from __future__ import annotations

import datetime as dt

from clickpass.backup.store import StoredBackup, new_backup_id, to_delete

NOW = dt.datetime(2025, 3, 31, 12, 0, tzinfo=dt.UTC)


def backup(when: dt.datetime, complete: bool = True, suffix: str = "abcdef") -> StoredBackup:
    return StoredBackup("db2", new_backup_id(when, suffix), complete, 100, ("manifest.enc",))


def ids(backups: list[StoredBackup]) -> set[str]:
    return {b.id for b in backups}


def test_keeps_newest_per_day_for_n_days() -> None:
    """Two a day for ten days, keep 3 daily, 0 weekly: the newest of the last 3 days stay."""
    backups = [
        backup(NOW - dt.timedelta(days=d, hours=h), suffix=f"{d:03d}{h:03d}")
        for d in range(10)
        for h in (0, 6)
    ]
    doomed = to_delete(backups, NOW, keep_daily=3, keep_weekly=0)
    kept = set(ids(backups)) - ids(doomed)
    assert kept == {backup(NOW - dt.timedelta(days=d), suffix=f"{d:03d}000").id for d in range(3)}


def test_weekly_keeps_newest_of_each_recent_week() -> None:
    """With daily backups over 5 weeks, keep 2 daily and 3 weekly."""
    backups = [backup(NOW - dt.timedelta(days=d), suffix=f"{d:06d}") for d in range(35)]
    doomed = to_delete(backups, NOW, keep_daily=2, keep_weekly=3)
    kept = sorted(set(ids(backups)) - ids(doomed), reverse=True)
    # 2025-03-31 is a Monday: the newest of this week is today, then the Sundays before.
    assert kept == [
        backup(NOW, suffix="000000").id,
        backup(NOW - dt.timedelta(days=1), suffix="000001").id,
        backup(NOW - dt.timedelta(days=8), suffix="000008").id,
    ]


def test_never_deletes_the_newest_complete_backup() -> None:
    """Even with nothing recent, the newest complete backup survives."""
    old = backup(NOW - dt.timedelta(days=400))
    assert to_delete([old], NOW, keep_daily=1, keep_weekly=0) == []


def test_incomplete_backups_removed_after_grace() -> None:
    """An upload cut short is removed once it is old enough not to be still running."""
    running = backup(NOW - dt.timedelta(minutes=5), complete=False, suffix="111111")
    abandoned = backup(NOW - dt.timedelta(days=2), complete=False, suffix="222222")
    good = backup(NOW - dt.timedelta(hours=1))
    doomed = to_delete([running, abandoned, good], NOW, keep_daily=7, keep_weekly=4)
    assert ids(doomed) == {abandoned.id}

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
    """
    Two a day for ten days, keep 3 daily, 0 weekly: the newest of the last 3
    days stay, and so does the other one of the last 24 hours.
    """
    backups = [
        backup(NOW - dt.timedelta(days=d, hours=h), suffix=f"{d:03d}{h:03d}")
        for d in range(10)
        for h in (0, 6)
    ]
    doomed = to_delete(backups, NOW, keep_daily=3, keep_weekly=0)
    kept = set(ids(backups)) - ids(doomed)
    assert kept == {
        backup(NOW - dt.timedelta(days=d), suffix=f"{d:03d}000").id for d in range(3)
    } | {backup(NOW - dt.timedelta(hours=6), suffix="000006").id}


def test_same_day_backups_of_the_last_24_hours_are_kept() -> None:
    """
    The backup of this morning survives the "backup now" of this afternoon,
    even with keep_daily = 1 (it may be the one just restored from); once
    it is a day old, the daily rule alone decides: the newest of its day stays.
    """
    morning = backup(NOW - dt.timedelta(hours=10), suffix="aaaaaa")
    afternoon = backup(NOW, suffix="bbbbbb")
    assert to_delete([morning, afternoon], NOW, keep_daily=1, keep_weekly=0) == []
    later = NOW + dt.timedelta(days=1, hours=1)
    next_day = backup(later, suffix="cccccc")
    doomed = to_delete([morning, afternoon, next_day], later, keep_daily=2, keep_weekly=0)
    assert ids(doomed) == {morning.id}

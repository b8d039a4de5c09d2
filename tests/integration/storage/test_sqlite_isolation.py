"""
Transactions on the embedded SQLite database are isolated across the node's
worker processes: two connection pools (L{open_sqlite}, as two workers
open) on one file, a read-then-write overtaken by the other pool between
its read and its write, and the product's attempt throttle counting a burst
from both.
"""

from __future__ import annotations

from typing import Any

import pytest

from twisted.internet.defer import DeferredList

from clickpass.accounts.service import count_attempt
from clickpass.storage import migrations
from clickpass.storage.sql import AdbapiStorage, Transaction
from tests.support.deferreds import async_test
from tests.support.storage import DatabaseTarget

NOW = 1_700_000_000

sqlite_only = pytest.mark.parametrize("database_target", ["sqlite"], indirect=True)


def _value(tx: Transaction) -> int:
    return int(tx.scalar("SELECT failures FROM signin_failures WHERE scope = 'test'"))


def _add_one(tx: Transaction) -> None:
    tx.execute("UPDATE signin_failures SET failures = failures + 1 WHERE scope = 'test'")


async def _two_workers(database_target: DatabaseTarget) -> tuple[AdbapiStorage, AdbapiStorage]:
    first, second = database_target.open(), database_target.open()
    await migrations.migrate(first, NOW)
    return first, second


@sqlite_only
@async_test
async def test_a_read_then_write_overtaken_by_another_worker_runs_again(
    database_target: DatabaseTarget,
) -> None:
    """
    A worker reads a count and writes it back one higher; another worker
    adds one between that read and that write. Both additions count: the
    overtaken transaction runs again, reads the other's, and writes 2.
    """
    first, second = await _two_workers(database_target)
    await first.run(
        lambda tx: tx.execute(
            "INSERT INTO signin_failures (scope, subject, window_start, failures) "
            "VALUES ('test', 'x', 0, 0)"
        )
    )
    reads: list[int] = []

    def increment(tx: Transaction) -> None:
        value = _value(tx)
        reads.append(value)
        if len(reads) == 1:
            # From this pool's thread: the other pool commits, and answers.
            second.run_blocking(_add_one)
        tx.execute("UPDATE signin_failures SET failures = ? WHERE scope = 'test'", value + 1)

    await first.run(increment)
    assert await second.run(_value) == 2
    assert reads == [0, 1]
    assert first.counts["lock_conflicts"] == 1


@sqlite_only
@async_test
async def test_the_attempt_throttle_counts_a_burst_from_two_workers_exactly(
    database_target: DatabaseTarget,
) -> None:
    """
    A burst of attempts against one limited subject (as sign-ins and link
    mails are limited), half through each of two workers at once: exactly
    the limit of them is let through and every other one is told to wait.
    """
    first, second = await _two_workers(database_target)
    limit, window = 4, 600
    subjects = [("link-client", "203.0.113.7", limit)]
    burst = [
        storage.run(count_attempt, subjects, NOW, window)
        for _ in range(6)
        for storage in (first, second)
    ]
    results: list[tuple[bool, Any]] = await DeferredList(burst, consumeErrors=True)
    assert [ok for ok, _ in results] == [True] * len(burst)
    waits = [wait for _, wait in results]
    assert waits.count(0) == limit
    assert all(wait == window for wait in waits if wait)
    count = await first.run(
        lambda tx: tx.scalar(
            "SELECT failures FROM signin_failures WHERE scope = ? AND subject = ?",
            *subjects[0][:2],
        )
    )
    assert count == limit

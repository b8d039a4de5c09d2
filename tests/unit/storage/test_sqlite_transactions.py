"""
A SQLite transaction is one transaction from its first statement, reads
included, across connections to one file (as the node's worker processes
have): a read-then-write that another connection overtook between its read
and its write runs again and writes on what is there now, never on what it
read before. Two plain connections (L{DirectStorage}) on a file in WAL
mode; the other connection's write is made at a chosen point, so the races
are deterministic.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clickpass.storage.sql import Dialect, DirectStorage, Transaction, configure_sqlite


def _open(path: Path) -> DirectStorage:
    connection = sqlite3.connect(str(path), timeout=10.0)
    configure_sqlite(connection)
    return DirectStorage(connection, Dialect("sqlite"), f"sqlite {path}")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "clickpass.sqlite3"


@pytest.fixture
def workers(path: Path) -> Iterator[tuple[DirectStorage, DirectStorage]]:
    """Two storages on one database file, each with its own connection."""
    first, second = _open(path), _open(path)
    first.run_blocking(
        lambda tx: tx.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER)")
    )
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def _value(tx: Transaction) -> int | None:
    value = tx.scalar("SELECT value FROM counters WHERE name = 'hits'")
    return None if value is None else int(value)


def _add_one(tx: Transaction) -> None:
    tx.execute("UPDATE counters SET value = value + 1 WHERE name = 'hits'")


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """C{action} the first time only: the overtaking write happens once."""
    done: list[bool] = []

    def run() -> None:
        if not done:
            done.append(True)
            action()

    return run


def test_a_read_then_write_overtaken_by_another_connection_runs_again(
    workers: tuple[DirectStorage, DirectStorage],
) -> None:
    """
    A counter read, then written back one higher, while another connection
    adds one between the read and the write: both additions count (the
    first transaction runs again and reads 1), none is lost.
    """
    first, second = workers
    first.run_blocking(lambda tx: tx.execute("INSERT INTO counters VALUES ('hits', 0)"))
    overtake = _once(lambda: second.run_blocking(_add_one))
    reads: list[int | None] = []

    def increment(tx: Transaction) -> None:
        value = _value(tx)
        reads.append(value)
        overtake()
        tx.execute("UPDATE counters SET value = ? WHERE name = 'hits'", (value or 0) + 1)

    first.run_blocking(increment)
    assert first.run_blocking(_value) == 2
    assert reads == [0, 1]


def test_a_select_then_insert_if_absent_sees_the_row_another_connection_inserted(
    workers: tuple[DirectStorage, DirectStorage],
) -> None:
    """
    "Insert unless it exists", where another connection inserts the row
    between the check and the insert: the check runs again and finds it,
    so no duplicate-key error reaches the caller and the other's row stays.
    """
    first, second = workers
    overtake = _once(
        lambda: second.run_blocking(
            lambda tx: tx.execute("INSERT INTO counters VALUES ('hits', 7)")
        )
    )

    def create_unless_there(tx: Transaction) -> bool:
        exists = _value(tx) is not None
        overtake()
        if exists:
            return False
        tx.execute("INSERT INTO counters VALUES ('hits', 0)")
        return True

    assert first.run_blocking(create_unless_there) is False
    assert first.run_blocking(_value) == 7


def test_the_reads_of_one_transaction_see_one_state(
    workers: tuple[DirectStorage, DirectStorage],
) -> None:
    """
    Two reads in one transaction that only reads see the same state, even
    when another connection commits between them (the snapshot is taken at
    the first read, not at a write that never comes).
    """
    first, second = workers
    first.run_blocking(lambda tx: tx.execute("INSERT INTO counters VALUES ('hits', 0)"))
    overtake = _once(lambda: second.run_blocking(_add_one))

    def read_twice(tx: Transaction) -> tuple[int | None, int | None]:
        before = _value(tx)
        overtake()
        return before, _value(tx)

    assert first.run_blocking(read_twice) == (0, 0)
    assert first.run_blocking(_value) == 1


def test_take_write_lock_makes_other_writers_wait_and_must_come_first(
    workers: tuple[DirectStorage, DirectStorage], path: Path
) -> None:
    """
    A transaction that took the write lock holds it from its first
    statement: another connection cannot write until it ends (here it
    gives up at once, its busy timeout set to 0). Asked for after a
    statement, the lock is refused with a clear error.
    """
    first, second = workers
    first.run_blocking(lambda tx: tx.execute("INSERT INTO counters VALUES ('hits', 0)"))
    refused: list[str] = []

    def locked(tx: Transaction) -> None:
        tx.take_write_lock()
        _value(tx)
        other = sqlite3.connect(str(path), timeout=0)
        try:
            other.execute("UPDATE counters SET value = 9")
        except sqlite3.OperationalError as e:
            refused.append(str(e))
        finally:
            other.close()

    first.run_blocking(locked)
    assert refused == ["database is locked"]

    def too_late(tx: Transaction) -> None:
        _value(tx)
        tx.take_write_lock()

    with pytest.raises(RuntimeError, match="before the transaction's first statement"):
        second.run_blocking(too_late)

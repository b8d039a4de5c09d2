"""
The storage layer's answer to lost lock conflicts, on a fake pool and a
task.Clock: a deadlock victim or a timed-out lock wait runs again after a
short jittered wait, a bounded number of times, each time logged; any other
error reaches the caller at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, cast

import pymysql
import pytest

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure

from clickpass.application import _storage_metrics
from clickpass.monitor.metrics import Registry
from clickpass.storage.sql import (
    AdbapiStorage,
    Dialect,
    FailoverRetryPolicy,
    IntegrityError,
    LockRetryPolicy,
    NoWritablePrimary,
    Transaction,
    is_deadlock,
    lock_conflict,
)

DEADLOCK = pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
LOCK_WAIT = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
MARIADB = Dialect("mysql")
# Each run of a transaction takes this long on the fake pool.
RUN_TIME = 0.001


class ClockPool:
    """
    A stand-in for adbapi's pool: each run calls the interaction at once and
    answers RUN_TIME later on the clock, with the next scripted error (or
    the interaction's result once the script is used up).
    """

    def __init__(self, clock: Clock, errors: list[Exception]) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.runs: list[float] = []
        # What each run sent, when its transaction function sends anything.
        self.sent: list[list[str]] = []

    def runInteraction(self, interaction: Callable[[Any], Any]) -> Deferred[Any]:
        self.runs.append(self.clock.seconds())
        cursor = RecordingCursor()
        self.sent.append(cursor.sent)
        result = interaction(cursor)
        d: Deferred[Any] = Deferred()
        if self.errors:
            error = self.errors.pop(0)
            self.clock.callLater(RUN_TIME, d.errback, Failure(error))
        else:
            self.clock.callLater(RUN_TIME, d.callback, result)
        return d


class RecordingCursor:
    """A DB-API cursor that keeps the statements sent and answers no rows."""

    rowcount = 0

    def __init__(self) -> None:
        self.sent: list[str] = []

    def execute(self, statement: str, params: object = ()) -> None:
        self.sent.append(statement)

    def fetchone(self) -> None:
        return None


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def storage_on(
    clock: Clock,
    errors: list[Exception],
    policy: LockRetryPolicy | None = None,
    failover: FailoverRetryPolicy | None = None,
    dialect: Dialect = MARIADB,
) -> tuple[AdbapiStorage, ClockPool]:
    pool = ClockPool(clock, errors)
    storage = AdbapiStorage(
        clock,  # type: ignore[arg-type]  # the fake pool never uses the reactor's threads
        dialect,
        cast(adbapi.ConnectionPool, pool),
        "fake",
        clock=clock,
        retry=policy or LockRetryPolicy(),
        failover=failover or FailoverRetryPolicy(),
        draw=lambda: 0.5,
    )
    return storage, pool


def sign(tx: Transaction) -> str:
    return "signed"


def outcome(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_a_deadlock_victim_runs_again_after_a_jittered_wait(
    logged: list[dict[str, Any]],
) -> None:
    """
    Two deadlocks, then success: the caller gets the result. Each new run
    waits as the policy says for the draw (0.5 gives three quarters of the
    ceiling: 7.5 ms, then 15 ms), and not a moment less.
    """
    clock = Clock()
    storage, pool = storage_on(clock, [DEADLOCK, DEADLOCK])
    seen = outcome(storage.run(sign))
    clock.pump([1e-4] * 300)
    # Each run starts when the previous one failed plus the wait (to the
    # clock steps of 0.1 ms).
    first_wait, second_wait = 0.0075, 0.015
    assert pool.runs == pytest.approx(
        [0.0, RUN_TIME + first_wait, 2 * RUN_TIME + first_wait + second_wait], abs=3e-4
    )
    assert seen == ["signed"]
    retries = [e for e in logged if e.get("conflict")]
    assert [(e["conflict"], e["next"], e["delay"]) for e in retries] == [
        ("deadlock", 2, pytest.approx(0.0075)),
        ("deadlock", 3, pytest.approx(0.015)),
    ]
    assert all(e["transaction"] == "sign" for e in retries)


def test_a_sqlite_transaction_that_lost_its_snapshot_runs_again_at_once_with_the_lock() -> None:
    """
    On SQLite every transaction begins at its first statement (BEGIN, so
    its reads are in it). One that lost a lock conflict (it read, and
    another process wrote first) runs again at once, its BEGIN IMMEDIATE
    taking the write lock before it reads; a second loss (the lock not had
    within the busy timeout) waits as the policy says for a second retry
    (0.75 of 20 ms at the draw 0.5).
    """
    clock = Clock()
    locked = sqlite3.OperationalError("database is locked")
    storage, pool = storage_on(clock, [locked, locked], dialect=Dialect("sqlite"))
    seen = outcome(storage.run(lambda tx: tx.fetchone("SELECT 1")))
    clock.pump([1e-4] * 300)
    assert pool.runs == pytest.approx([0.0, RUN_TIME, 2 * RUN_TIME + 0.015], abs=3e-4)
    assert pool.sent == [
        ["BEGIN", "SELECT 1"],
        ["BEGIN IMMEDIATE", "SELECT 1"],
        ["BEGIN IMMEDIATE", "SELECT 1"],
    ]
    assert seen == [None]
    assert storage.counts["lock_conflicts"] == 2


def test_lost_lock_conflicts_are_in_the_metrics() -> None:
    """
    Every lost lock conflict, run again or given up, is counted in the
    worker's /metrics (clickpass_db_lock_conflicts_total), on both backends.
    """
    clock = Clock()
    locked = sqlite3.OperationalError("database is locked")
    on_sqlite, _ = storage_on(clock, [locked, locked], dialect=Dialect("sqlite"))
    on_mariadb, _ = storage_on(clock, [DEADLOCK] * 3, LockRetryPolicy(attempts=2))
    registries = [Registry(), Registry()]
    _storage_metrics(registries[0], on_sqlite)
    _storage_metrics(registries[1], on_mariadb)
    outcome(on_sqlite.run(sign))
    outcome(on_mariadb.run(sign))
    clock.pump([0.01] * 20)
    assert [r.counter("clickpass_db_lock_conflicts_total", "").value() for r in registries] == [
        2.0,
        2.0,
    ]


def test_a_mariadb_transaction_sends_no_begin() -> None:
    """On MariaDB the driver's own transaction is the transaction: no BEGIN is sent."""
    clock = Clock()
    storage, pool = storage_on(clock, [])
    seen = outcome(storage.run(lambda tx: tx.fetchone("SELECT 1")))
    clock.advance(RUN_TIME)
    assert pool.sent == [["SELECT 1"]]
    assert seen == [None]


def test_a_lock_wait_timeout_runs_again() -> None:
    """A timed-out lock wait (1205) is retried like a deadlock."""
    clock = Clock()
    storage, pool = storage_on(clock, [LOCK_WAIT])
    seen = outcome(storage.run(sign))
    clock.pump([RUN_TIME, 0.01, RUN_TIME])
    assert seen == ["signed"]
    assert len(pool.runs) == 2


def test_retries_are_bounded_and_the_last_error_reaches_the_caller(
    logged: list[dict[str, Any]],
) -> None:
    """
    A transaction that keeps losing runs C{attempts} times in all; then the
    caller gets the server's error, and one warning says it gave up.
    """
    clock = Clock()
    storage, pool = storage_on(clock, [DEADLOCK] * 10, LockRetryPolicy(attempts=4))
    seen = outcome(storage.run(sign))
    clock.pump([0.05] * 20)
    assert len(pool.runs) == 4
    assert len(seen) == 1
    assert isinstance(seen[0], Failure)
    assert seen[0].value is DEADLOCK
    gave_up = [
        e for e in logged if e.get("log_level") is not None and "giving up" in e["log_format"]
    ]
    assert len(gave_up) == 1
    assert gave_up[0]["attempt"] == 4
    assert gave_up[0]["log_level"].name == "warn"


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("Duplicate entry"),
        pymysql.err.ProgrammingError(1064, "syntax"),
        ValueError("not a database error"),
    ],
)
def test_other_errors_are_not_retried(error: Exception) -> None:
    """
    Anything but a lost lock conflict (or a transaction that never reached
    a writable primary, below) reaches the caller after one run.
    """
    clock = Clock()
    storage, pool = storage_on(clock, [error])
    seen = outcome(storage.run(sign))
    clock.pump([RUN_TIME, 1.0])
    assert len(pool.runs) == 1
    assert isinstance(seen[0], Failure)
    assert seen[0].value is error
    seen[0].trap(type(error))


def test_the_policy_doubles_its_waits_up_to_a_ceiling_with_jitter() -> None:
    """
    Wait n is drawn between half and all of min(max_delay, first_delay *
    2**(n-1)); the default policy runs at most 5 times and waits at most
    0.15 s in all.
    """
    policy = LockRetryPolicy(attempts=8, first_delay=0.01, max_delay=0.05)
    assert [policy.delay(n, 0.0) for n in range(1, 6)] == pytest.approx(
        [0.005, 0.01, 0.02, 0.025, 0.025]
    )
    assert [policy.delay(n, 0.999999) for n in range(1, 6)] == pytest.approx(
        [0.01, 0.02, 0.04, 0.05, 0.05], rel=1e-5
    )
    default = LockRetryPolicy()
    assert default.attempts == 5
    worst = sum(default.delay(n, 0.999999) for n in range(1, default.attempts))
    assert worst == pytest.approx(0.15, rel=1e-5)


@pytest.mark.parametrize(
    ("error", "conflict"),
    [
        (DEADLOCK, "deadlock"),
        (LOCK_WAIT, "lock wait timeout"),
        (sqlite3.OperationalError("database is locked"), "database is locked"),
        (sqlite3.OperationalError("no such table: x"), None),
        (pymysql.err.OperationalError(2006, "gone away"), None),
        (pymysql.err.IntegrityError(1213, "not an operational error"), None),
        (pymysql.err.OperationalError(), None),
    ],
)
def test_lock_conflicts_are_told_from_other_errors(error: Exception, conflict: str | None) -> None:
    """Deadlock (1213), lock wait timeout (1205) and SQLite's busy lock, and nothing else."""
    assert lock_conflict(error) == conflict
    assert is_deadlock(error) == (conflict in ("deadlock", "database is locked"))


READ_ONLY = pymysql.err.OperationalError(1290, "The MariaDB server is running with --read-only")
REFUSED = pymysql.err.OperationalError(2003, "Can't connect to MySQL server (111)")


def test_a_transaction_refused_by_a_read_only_server_runs_again_with_backoff() -> None:
    """
    Refused as read-only, or no connection made (nothing of it sent): it
    runs again after waits doubling from first_delay up to max_delay (here
    drawn at 3/4 of the ceiling) on the clock, and the caller gets its
    result; each retry is counted.
    """
    clock = Clock()
    storage, pool = storage_on(
        clock,
        [READ_ONLY, REFUSED, READ_ONLY, READ_ONLY],
        failover=FailoverRetryPolicy(wait=5.0, first_delay=0.1, max_delay=0.3),
    )
    seen = outcome(storage.run(sign))
    clock.pump([RUN_TIME] + [0.005] * 400)
    assert seen == ["signed"]
    waits = [round(b - a - RUN_TIME, 4) for a, b in zip(pool.runs, pool.runs[1:], strict=False)]
    assert waits == pytest.approx([0.075, 0.15, 0.225, 0.225], abs=0.006)
    assert storage.counts["failover_retries"] == 4


def test_no_writable_primary_within_the_wait_gives_up_with_one_line(
    logged: list[dict[str, Any]],
) -> None:
    """
    A server read-only for longer than the wait: the transaction stops
    before a wait would end past it, with NoWritablePrimary (one line, the
    last refusal in it), logged once as a warning and counted.
    """
    clock = Clock()
    storage, pool = storage_on(
        clock, [READ_ONLY] * 100, failover=FailoverRetryPolicy(wait=1.0, first_delay=0.1)
    )
    seen = outcome(storage.run(sign))
    clock.pump([RUN_TIME] + [0.005] * 400)
    assert len(seen) == 1 and isinstance(seen[0], Failure)
    error = seen[0].value
    assert isinstance(error, NoWritablePrimary)
    assert str(error).startswith("no writable database primary took transaction sign within 1s")
    assert "read-only" in str(error) and "\n" not in str(error)
    assert pool.runs[-1] <= 1.0 + RUN_TIME
    assert storage.counts == {"failover_retries": len(pool.runs) - 1, "failover_gave_up": 1}
    warned = [e for e in logged if "no writable database primary" in str(e.get("message", ""))]
    assert len(warned) == 1 and warned[0]["log_level"].name == "warn"

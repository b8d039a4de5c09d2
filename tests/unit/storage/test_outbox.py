"""
The leased outbox helper (L{clickpass.storage.outbox}): claiming with a
lease on SQLite and MariaDB, the backoff schedule and giving up, and the
delivery loop on an injected clock.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import cast

import pytest

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from clickpass.storage.outbox import (
    CLEANUP_INTERVAL,
    Backoff,
    LeasedOutboxService,
    Retry,
    claim_rows,
    release_rows,
)
from clickpass.storage.sql import Dialect, DirectStorage, Transaction
from tests.conftest import global_reactor
from tests.support.mariadb import MariaDBServer
from tests.support.storage import DatabaseTarget, WritesRefused

DUE = "SELECT id, payload FROM t_outbox WHERE state = 0 AND lease_until <= ? ORDER BY id"


def create_table(tx: Transaction) -> None:
    tx.execute(
        f"CREATE TABLE t_outbox (id {tx.dialect.autoincrement_pk}, "
        "state INTEGER NOT NULL DEFAULT 0, lease_until BIGINT NOT NULL DEFAULT 0, "
        "lease_owner VARCHAR(64) NOT NULL DEFAULT '', payload VARCHAR(64) NOT NULL)"
    )


def add_rows(tx: Transaction, *payloads: str) -> None:
    for payload in payloads:
        tx.execute("INSERT INTO t_outbox (payload) VALUES (?)", payload)


def claim(tx: Transaction, now: int, lease: int, owner: str | None = None) -> list[str]:
    return [str(r[1]) for r in claim_rows(tx, "t_outbox", DUE, (now,), now, lease, owner=owner)]


def owners(tx: Transaction) -> dict[str, str]:
    return {str(p): str(o) for p, o in tx.fetchall("SELECT payload, lease_owner FROM t_outbox")}


@pytest.fixture
def outbox_db(database_target: DatabaseTarget) -> Iterator[DirectStorage]:
    """A database (SQLite, then MariaDB) with a bare outbox table of three rows."""
    storage = database_target.open_direct()
    storage.run_blocking(create_table)
    storage.run_blocking(add_rows, "a", "b", "c")
    yield storage


# ---------------------------------------------------------------------------
# Claiming.
# ---------------------------------------------------------------------------


def test_a_lease_holds_the_rows_until_it_runs_out_then_they_are_claimed_again(
    outbox_db: DirectStorage,
) -> None:
    """Claimed rows are nobody else's until their lease ends; then anyone may take them."""
    assert outbox_db.run_blocking(claim, 1000, 30, "node1") == ["a", "b", "c"]
    assert outbox_db.run_blocking(owners) == {"a": "node1", "b": "node1", "c": "node1"}
    assert outbox_db.run_blocking(claim, 1029, 30, "node2") == []
    assert outbox_db.run_blocking(claim, 1030, 30, "node2") == ["a", "b", "c"]
    assert outbox_db.run_blocking(owners) == {"a": "node2", "b": "node2", "c": "node2"}


DUE_OR_MINE = (
    "SELECT id, payload FROM t_outbox WHERE state = 0 AND (lease_until <= ? OR lease_owner = ?) "
    "ORDER BY id"
)


def claim_own_again(tx: Transaction, now: int, lease: int, owner: str) -> list[str]:
    rows = claim_rows(
        tx, "t_outbox", DUE_OR_MINE, (now, owner), now, lease, owner=owner, own_again=True
    )
    return [str(r[1]) for r in rows]


def leases(tx: Transaction) -> dict[str, int]:
    return {str(p): int(u) for p, u in tx.fetchall("SELECT payload, lease_until FROM t_outbox")}


def test_an_owner_may_claim_its_own_leased_rows_again(outbox_db: DirectStorage) -> None:
    """
    With own_again, rows still leased to the claimer are taken again (their
    lease renewed from now); another claimer still passes them by.
    """
    assert outbox_db.run_blocking(claim, 1000, 30, "node1") == ["a", "b", "c"]
    assert outbox_db.run_blocking(claim_own_again, 1005, 30, "node2") == []
    assert outbox_db.run_blocking(claim_own_again, 1005, 30, "node1") == ["a", "b", "c"]
    assert outbox_db.run_blocking(leases) == {"a": 1035, "b": 1035, "c": 1035}
    assert outbox_db.run_blocking(owners) == {"a": "node1", "b": "node1", "c": "node1"}
    with pytest.raises(ValueError, match="owner"):
        outbox_db.run_blocking(
            lambda tx: claim_rows(tx, "t_outbox", DUE, (1005,), 1005, 30, own_again=True)
        )


def test_a_claimer_that_read_a_row_another_then_leased_does_not_get_it(
    outbox_db: DirectStorage,
) -> None:
    """
    The lease is taken by a conditional update: a claimer whose read is
    stale (it saw the lease free, another leased the row since) gets nothing.
    """
    outbox_db.run_blocking(claim, 1000, 30, "node1")
    stale = "SELECT id, payload FROM t_outbox ORDER BY id"
    got = outbox_db.run_blocking(
        lambda tx: claim_rows(tx, "t_outbox", stale, (), 1010, 30, owner="node2")
    )
    assert got == []
    assert outbox_db.run_blocking(owners) == {"a": "node1", "b": "node1", "c": "node1"}


def test_released_rows_are_claimed_again_at_once_but_only_the_owner_releases(
    outbox_db: DirectStorage,
) -> None:
    """Giving rows back ends their lease now; another owner's release leaves them alone."""
    outbox_db.run_blocking(claim, 1000, 30, "node1")
    ids = [
        int(r[0])
        for r in outbox_db.run_blocking(
            lambda tx: tx.fetchall("SELECT id FROM t_outbox ORDER BY id")
        )
    ]
    outbox_db.run_blocking(lambda tx: release_rows(tx, "t_outbox", ids[:2], owner="node2"))
    assert outbox_db.run_blocking(claim, 1001, 30, "node2") == []
    outbox_db.run_blocking(lambda tx: release_rows(tx, "t_outbox", ids[:2], owner="node1"))
    assert outbox_db.run_blocking(claim, 1001, 30, "node2") == ["a", "b"]
    outbox_db.run_blocking(lambda tx: release_rows(tx, "t_outbox", []))


@pytest.fixture
def mariadb_target(mariadb_server: MariaDBServer, tmp_path: Path) -> Iterator[DatabaseTarget]:
    """A fresh database on the session's MariaDB server (row locks are MariaDB's)."""
    target = DatabaseTarget(
        "mysql", tmp_path, global_reactor(), mariadb_server,
        f"{mariadb_server.database}_t{secrets.token_hex(6)}",
    )  # fmt: skip
    mariadb_server.create_database(target.database)
    try:
        yield target
    finally:
        target.close()


@pytest.mark.mariadb
def test_two_claimers_at_once_on_mariadb_never_get_the_same_row(
    mariadb_target: DatabaseTarget,
) -> None:
    """
    While one node's claim is still open (its row locks held), another's
    passes over the locked rows (SKIP LOCKED) instead of waiting for them,
    takes the rest, and the two never share a row.
    """
    first = mariadb_target.open_direct()
    second = mariadb_target.open_direct()
    first.run_blocking(create_table)
    first.run_blocking(add_rows, *[f"m{i}" for i in range(10)])
    # Without SKIP LOCKED, the second claim would wait for the first's locks
    # and fail after this long.
    second.run_blocking(lambda tx: tx.execute("SET SESSION innodb_lock_wait_timeout = 2"))
    limited = DUE + " LIMIT 4"
    seen: dict[str, list[str]] = {}

    def first_claim(tx: Transaction) -> None:
        got = claim_rows(tx, "t_outbox", limited, (1000,), 1000, 30, owner="node1")
        seen["first"] = [str(r[1]) for r in got]
        # The first transaction is still open: the second claims now.
        seen["second"] = second.run_blocking(
            lambda tx2: [
                str(r[1])
                for r in claim_rows(tx2, "t_outbox", DUE, (1000,), 1000, 30, owner="node2")
            ]
        )

    first.run_blocking(first_claim)
    assert seen["first"] == ["m0", "m1", "m2", "m3"]
    assert seen["second"] == [f"m{i}" for i in range(4, 10)]
    held = first.run_blocking(owners)
    assert {p for p, o in held.items() if o == "node1"} == set(seen["first"])
    assert {p for p, o in held.items() if o == "node2"} == set(seen["second"])


# ---------------------------------------------------------------------------
# Backoff and giving up.
# ---------------------------------------------------------------------------


def test_backoff_doubles_from_the_first_wait_up_to_the_cap() -> None:
    """10, 20, 40, 80 s, then the 100 s cap; the next attempt rounded up to whole seconds."""
    schedule = Backoff(10, 100)
    assert [schedule.wait(n) for n in range(1, 7)] == [10, 20, 40, 80, 100, 100]
    assert schedule.wait(0) == 10
    assert Backoff(1.5, 60).retry_at(1000, 1) == 1002
    assert Backoff(0.2, 60).retry_at(1000, 1) == 1001
    assert Backoff(0, 0).retry_at(1000, 1) == 1000
    assert Backoff(0, 0, minimum=1).retry_at(1000, 1) == 1001


def test_a_row_is_given_up_at_its_give_up_time_and_not_before() -> None:
    """Retries follow the backoff until the give-up time; from then on the row is given up."""
    schedule = Backoff(10, 100)
    assert schedule.after_failure(1000, 1, give_up_at=1100) == Retry(1010, give_up=False)
    assert schedule.after_failure(1099, 5, give_up_at=1100) == Retry(1199, give_up=False)
    assert schedule.after_failure(1100, 6, give_up_at=1100).give_up
    # Cut short: the last try comes at the give-up time itself.
    assert schedule.after_failure(1099, 5, give_up_at=1100, last_try_at_give_up=True) == Retry(
        1100, give_up=False
    )


# ---------------------------------------------------------------------------
# The loop, on a clock.
# ---------------------------------------------------------------------------


class Recorder(LeasedOutboxService):
    """A loop whose rounds are Deferreds the test fires."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("test-outbox", clock, poll_interval=5)
        self.rounds: list[tuple[int, Deferred[int]]] = []
        self.cleaned: list[int] = []
        self.failures: list[Failure] = []

    async def deliver_due(self, now: int) -> int:
        d: Deferred[int] = Deferred()
        self.rounds.append((now, d))
        return await d

    async def clean(self, now: int) -> None:
        self.cleaned.append(now)

    def round_failed(self, failure: Failure) -> None:
        self.failures.append(failure)


def test_the_loop_looks_again_at_once_after_work_and_after_the_poll_interval_when_idle() -> None:
    """Work done: the next round at once; nothing due: after the poll interval."""
    clock = Clock()
    clock.advance(1000)
    loop = Recorder(clock)
    loop.startService()
    clock.advance(0)
    assert [now for now, _ in loop.rounds] == [1000]
    loop.rounds[-1][1].callback(3)
    clock.advance(0)
    assert len(loop.rounds) == 2
    loop.rounds[-1][1].callback(0)
    clock.advance(4.9)
    assert len(loop.rounds) == 2
    clock.advance(0.1)
    assert len(loop.rounds) == 3
    assert loop.cleaned == [1000]
    loop.rounds[-1][1].callback(0)
    loop.stopService()


def test_waking_the_loop_looks_now_and_after_a_round_under_way() -> None:
    """New rows committed: an idle loop looks at once; a busy one looks again when done."""
    clock = Clock()
    loop = Recorder(clock)
    loop.wake()  # not running: nothing happens
    loop.startService()
    clock.advance(0)
    loop.wake()  # a round is under way
    loop.rounds[-1][1].callback(0)
    clock.advance(0)
    assert len(loop.rounds) == 2
    loop.rounds[-1][1].callback(0)
    clock.advance(1)
    assert len(loop.rounds) == 2
    loop.wake()
    clock.advance(0)
    assert len(loop.rounds) == 3
    loop.rounds[-1][1].callback(0)
    loop.stopService()


def test_a_failed_round_is_reported_and_the_next_comes_after_the_poll_interval() -> None:
    """A round that fails (the database, say) does not end the loop."""
    clock = Clock()
    loop = Recorder(clock)
    loop.startService()
    clock.advance(0)
    loop.rounds[-1][1].errback(sqlite3.OperationalError("database is locked"))
    assert [str(f.value) for f in loop.failures] == ["database is locked"]
    clock.advance(4)
    assert len(loop.rounds) == 1
    clock.advance(1)
    assert len(loop.rounds) == 2
    loop.rounds[-1][1].callback(0)
    loop.stopService()


def test_stopping_waits_for_the_round_under_way_and_schedules_no_other() -> None:
    """stopService's Deferred fires when the round ends; no round starts after it."""
    clock = Clock()
    loop = Recorder(clock)
    loop.startService()
    clock.advance(0)
    stopped = loop.stopService()
    assert stopped is not None and loop.stopping
    fired: list[object] = []
    stopped.addCallback(fired.append)
    assert fired == []
    loop.rounds[-1][1].callback(5)
    assert fired == [None]
    clock.advance(CLEANUP_INTERVAL)
    assert len(loop.rounds) == 1


def test_in_order_delivery_stops_a_receiver_at_its_first_failure_and_releases_the_rest() -> None:
    """
    Each receiver's rows go one at a time, in order: after a failure its
    later rows go back; another receiver's rows are not held up.
    """
    clock = Clock()
    loop = Recorder(clock)
    log: list[str] = []

    async def deliver(row: str) -> None:
        if row == "a2":
            raise ConnectionRefusedError("a is down")
        log.append("sent " + row)

    async def delivered(row: str) -> None:
        log.append("marked " + row)

    async def failed(row: str, error: Exception) -> None:
        log.append(f"failed {row}: {error}")

    async def release(rows: list[str]) -> None:
        log.append("released " + ",".join(rows))

    d = Deferred.fromCoroutine(
        loop.deliver_in_order(
            ["a1", "b1", "a2", "a3", "b2"], lambda row: row[0], 100, 10,
            deliver, delivered, failed, release, "delivery to one receiver failed",
        )
    )  # fmt: skip
    assert d.result == 3
    assert log == [
        "sent a1", "marked a1", "failed a2: a is down", "released a3",
        "sent b1", "marked b1", "sent b2", "marked b2",
    ]  # fmt: skip


def test_in_order_delivery_releases_what_could_outlast_the_lease() -> None:
    """An attempt that could end after the lease does not start: its rows go back."""
    clock = Clock()
    clock.advance(95)
    loop = Recorder(clock)
    log: list[str] = []

    async def deliver(row: str) -> None:
        log.append("sent " + row)
        clock.advance(3)

    async def nothing(row: str) -> None:
        pass

    async def failed(row: str, error: Exception) -> None:
        raise AssertionError("no failure expected")

    async def release(rows: list[str]) -> None:
        log.append("released " + ",".join(rows))

    d = Deferred.fromCoroutine(
        loop.deliver_in_order(
            ["a1", "a2", "a3"], lambda row: row[0], 100, 4,
            deliver, nothing, failed, release, "delivery to one receiver failed",
        )
    )  # fmt: skip
    assert d.result == 1
    assert log == ["sent a1", "released a2,a3"]


# ---------------------------------------------------------------------------
# Recording a delivery the database does not take at once.
# ---------------------------------------------------------------------------


def mark_sent(tx: Transaction, row_id: int) -> None:
    tx.execute("UPDATE t_outbox SET state = 1, lease_until = 0 WHERE id = ?", row_id)


def claim_mine(tx: Transaction, now: int, lease: int, owner: str) -> list[tuple[int, str]]:
    rows = claim_rows(
        tx, "t_outbox", DUE_OR_MINE, (now, owner), now, lease, owner=owner, own_again=True
    )
    return [(int(r[0]), str(r[1])) for r in rows]


def states(tx: Transaction) -> dict[str, int]:
    return {str(p): int(s) for p, s in tx.fetchall("SELECT payload, state FROM t_outbox")}


class Sender(LeasedOutboxService):
    """
    A node's delivery of t_outbox: claims (its own leased rows again too),
    sends one row after the other (C{sent}, a second each), marks each sent.
    C{after_send} runs when a row went.
    """

    def __init__(self, clock: Clock, storage: WritesRefused, owner: str, lease: int) -> None:
        super().__init__("test-outbox", clock, poll_interval=5)
        self.storage = storage
        self.owner = owner
        self.lease = lease
        self.sent: list[str] = []
        self.after_send = lambda: None
        self.failures: list[Failure] = []

    def round_failed(self, failure: Failure) -> None:
        self.failures.append(failure)

    async def deliver_due(self, now: int) -> int:
        rows = await self.storage.run(claim_mine, now, self.lease, self.owner)
        for row_id, payload in rows:
            await deferLater(self._clock, 1, lambda: None)
            self.sent.append(payload)
            self.after_send()
            await self.record_delivery(
                row_id, now + self.lease, partial(self.storage.run, mark_sent, row_id), payload
            )
        return len(rows)


@contextmanager
def logged() -> Iterator[list[str]]:
    """What is logged while the block runs, as text."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observer)


def advance(clock: Clock, seconds: float) -> None:
    for _ in range(int(seconds * 2)):
        clock.advance(0.5)


def test_a_delivery_recorded_only_after_failover_wait_is_sent_once(
    outbox_db: DirectStorage,
) -> None:
    """
    The database takes no write for 40 s (four times failover_wait) from
    the first delivery on, then recovers: the marks are kept and tried
    again while the lease holds, no round claims (its own rows again)
    meanwhile, and each row is sent exactly once; another node never gets
    them. Without the marks kept, the next round (own_again) sent all
    three again.
    """
    clock = Clock()
    clock.advance(1000)
    db = WritesRefused(outbox_db, clock)
    node = Sender(clock, db, "node1", lease=120)
    node.after_send = lambda: db.refuse() if node.sent == ["a"] else None
    other = Sender(clock, WritesRefused(outbox_db, clock), "node2", lease=120)
    node.startService()
    advance(clock, 40)
    assert node.sent == ["a", "b", "c"] and set(node.unmarked) and db.refused > 3
    assert other.run_once().result == 0
    db.recover()
    advance(clock, 60)
    node.stopService()
    assert node.sent == ["a", "b", "c"] and not node.unmarked
    assert outbox_db.run_blocking(states) == {"a": 1, "b": 1, "c": 1}


def test_a_mark_not_taken_until_the_lease_ends_is_given_up_and_the_row_sent_again(
    outbox_db: DirectStorage,
) -> None:
    """
    The database takes nothing for longer than the lease: the marks are
    given up when it runs out (one line each), and the rows are sent again
    once it recovers (at least once).
    """
    clock = Clock()
    clock.advance(1000)
    db = WritesRefused(outbox_db, clock)
    node = Sender(clock, db, "node1", lease=30)
    node.after_send = lambda: db.refuse() if node.sent == ["a"] else None
    with logged() as lines:
        node.startService()
        advance(clock, 60)
        assert node.sent == ["a", "b", "c"] and not node.unmarked
        # Its rounds' claims were refused too.
        assert node.failures
        db.recover()
        advance(clock, 20)
        node.stopService()
    given_up = [line for line in lines if "it will be sent again" in line]
    assert sorted(given_up) == [
        f"{p} was delivered, but no database took the record of it while this node "
        "held its lease: it will be sent again"
        for p in "abc"
    ]
    assert node.sent == ["a", "b", "c", "a", "b", "c"]
    assert outbox_db.run_blocking(states) == {"a": 1, "b": 1, "c": 1}


def test_dialects_other_than_mariadb_take_no_row_locks() -> None:
    """SQLite has no FOR UPDATE; the claim is its conditional update alone."""
    from clickpass.storage.outbox import skip_locked

    assert skip_locked(Dialect("sqlite")) == ""
    assert skip_locked(Dialect("mysql")) == " FOR UPDATE SKIP LOCKED"

"""
The MariaDB connection pool when connections die under it: a server
restarted, a server down, connections killed, a commit cut off. After a
failure the next operation works again, and the node's log gets one line,
never a traceback.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from twisted.enterprise.adbapi import ConnectionLost
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import ILogObserver, globalLogPublisher

from clickpass.storage import migrations
from clickpass.storage.sql import (
    AdbapiStorage,
    DatabaseError,
    OutcomeUnknown,
    Transaction,
    is_connection_lost,
    open_mysql,
)
from tests.support.deferreds import async_test, block_on
from tests.support.mariadb import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

NOW = 1_700_000_000
POOL_MAX = 4


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A server of this module's own, which its tests restart and stop."""
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb-restart"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def storage(reactor: IReactorThreads, own_server: MariaDBServer) -> Iterator[AdbapiStorage]:
    """A migrated pool of up to POOL_MAX connections on a fresh database."""
    if not own_server.running:
        own_server.start()
    name = f"{own_server.database}_loss"
    own_server.drop_database(name)
    own_server.create_database(name)
    pool = open_mysql(
        reactor,
        host=own_server.host,
        port=own_server.port,
        user=own_server.user,
        password=own_server.password,
        database=name,
        pool_min=1,
        pool_max=POOL_MAX,
        connect_timeout=2.0,
        # Short: a test that stops the server waits this long for it.
        failover_wait=0.5,
    )
    try:
        block_on(Deferred.fromCoroutine(migrations.migrate(pool, NOW)))
        yield pool
    finally:
        pool.close()


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def _tracebacks(events: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("log_format") or e.get("why")) for e in events if "log_failure" in e]


def _insert(tx: Transaction, name: str) -> None:
    tx.execute("INSERT INTO node_metadata (name, value) VALUES (?, ?)", name, "v")


def _names(tx: Transaction) -> list[str]:
    return [str(r[0]) for r in tx.fetchall("SELECT name FROM node_metadata ORDER BY name")]


def _slow_select(tx: Transaction) -> object:
    # Holds a pool thread long enough that the others are used too.
    return tx.scalar("SELECT SLEEP(0.05)")


async def _use_every_connection(storage: AdbapiStorage) -> None:
    await DeferredList([storage.run(_slow_select) for _ in range(POOL_MAX * 2)])


def _pool_connection_ids(server: MariaDBServer, database: str) -> list[int]:
    rows = server.admin_execute(
        "SELECT id FROM information_schema.processlist WHERE db = %s", database
    )
    return [int(r[0]) for r in rows]


@async_test
async def test_every_pooled_connection_recovers_after_a_server_restart(
    storage: AdbapiStorage, own_server: MariaDBServer, logged: list[dict[str, Any]]
) -> None:
    """
    After the server restarts under a warm pool, every operation succeeds at
    once (each stale connection reconnects at its next transaction's first
    statement), committed data is still there, and nothing logs a traceback.
    """
    await storage.run(_insert, "before")
    await _use_every_connection(storage)
    own_server.restart()
    for i in range(POOL_MAX * 2):
        await storage.run(_insert, f"after-{i}")
    results = await DeferredList(
        [storage.run(_names) for _ in range(POOL_MAX * 2)], consumeErrors=True
    )
    assert all(ok for ok, _ in results), results
    names = await storage.run(_names)
    assert "before" in names
    assert len(names) == 1 + POOL_MAX * 2
    assert _tracebacks(logged) == []


@async_test
async def test_operations_fail_while_the_server_is_down_and_work_once_it_is_back(
    storage: AdbapiStorage, own_server: MariaDBServer, logged: list[dict[str, Any]]
) -> None:
    """
    With the server stopped an operation fails with a connection error;
    once the server is back, the next operation works.
    """
    await storage.run(_insert, "before")
    own_server.stop()
    try:
        with pytest.raises(Exception) as caught:
            await storage.run(_insert, "during")
        assert is_connection_lost(caught.value), repr(caught.value)
    finally:
        own_server.start()
    await storage.run(_insert, "after")
    assert await storage.run(_names) == ["after", "before"]
    assert _tracebacks(logged) == []


@async_test
async def test_killed_connections_are_replaced(
    storage: AdbapiStorage, own_server: MariaDBServer
) -> None:
    """Connections killed on the server (an idle timeout, an operator) are reopened on next use."""
    await _use_every_connection(storage)
    database = await storage.run(lambda tx: tx.scalar("SELECT DATABASE()"))
    ids = _pool_connection_ids(own_server, database)
    assert ids
    for connection_id in ids:
        own_server.admin_execute(f"KILL CONNECTION {connection_id}")
    for i in range(POOL_MAX * 2):
        await storage.run(_insert, f"k{i}")
    assert len(await storage.run(_names)) == POOL_MAX * 2


@async_test
async def test_connection_lost_mid_transaction_fails_it_and_applies_nothing(
    storage: AdbapiStorage, own_server: MariaDBServer, logged: list[dict[str, Any]]
) -> None:
    """
    A connection lost after the first statement fails the transaction with a
    connection error (it is not silently re-run), nothing of it is applied,
    the pool goes on, and the log has a warning line but no traceback.
    """

    def work(tx: Transaction) -> None:
        _insert(tx, "half")
        connection_id = tx.scalar("SELECT CONNECTION_ID()")
        own_server.admin_execute(f"KILL CONNECTION {int(connection_id)}")
        _insert(tx, "other-half")

    with pytest.raises(Exception) as caught:
        await storage.run(work)
    assert is_connection_lost(caught.value), repr(caught.value)
    assert await storage.run(_names) == []
    assert _tracebacks(logged) == []
    warnings = [e for e in logged if "database connection lost" in str(e.get("log_format"))]
    assert len(warnings) == 1


@async_test
async def test_connection_lost_at_commit_is_reported_as_outcome_unknown(
    storage: AdbapiStorage, own_server: MariaDBServer
) -> None:
    """
    When the connection dies between the last statement and COMMIT, the
    caller gets OutcomeUnknown (a DatabaseError and adbapi ConnectionLost),
    never a success and never a plain failure that suggests nothing happened.
    """

    def work(tx: Transaction) -> None:
        _insert(tx, "maybe")
        connection_id = tx.scalar("SELECT CONNECTION_ID()")
        own_server.admin_execute(f"KILL CONNECTION {int(connection_id)}")

    with pytest.raises(OutcomeUnknown) as caught:
        await storage.run(work)
    assert isinstance(caught.value, DatabaseError)
    assert isinstance(caught.value, ConnectionLost)
    assert "may or may not have been applied" in str(caught.value)
    await storage.run(_insert, "next")
    assert "next" in await storage.run(_names)


def test_the_module_server_runs_in_its_own_directory(own_server: MariaDBServer) -> None:
    """The restarted server is private: its own port (not 3306), socket and data directory."""
    assert own_server.port != 3306
    assert Path(own_server.socket_path).parent == own_server.base_dir
    assert own_server.datadir.is_relative_to(own_server.base_dir)


@async_test
async def test_deadlock_victim_is_run_again(
    storage: AdbapiStorage, logged: list[dict[str, Any]]
) -> None:
    """
    Two transactions that lock two rows in opposite orders deadlock; the
    victim is rolled back by the server and run again, so both succeed.
    """
    import threading

    await storage.run(_insert, "a")
    await storage.run(_insert, "b")
    both_hold_one = threading.Barrier(2, timeout=10)
    runs: list[str] = []

    def lock_both(tx: Transaction, first: str, second: str) -> str:
        runs.append(first)
        tx.execute("UPDATE node_metadata SET value = ? WHERE name = ?", f"by-{first}", first)
        if runs.count(first) == 1:
            both_hold_one.wait()
        tx.execute("UPDATE node_metadata SET value = ? WHERE name = ?", f"by-{first}", second)
        return first

    results = await DeferredList(
        [storage.run(lock_both, "a", "b"), storage.run(lock_both, "b", "a")],
        consumeErrors=True,
    )
    assert [r for ok, r in results if not ok] == []
    assert sorted(runs) == ["a", "a", "b"] or sorted(runs) == ["a", "b", "b"]
    retried = [e for e in logged if e.get("conflict") == "deadlock"]
    assert len(retried) == 1
    assert retried[0]["transaction"].endswith("lock_both")


def _pool(reactor: IReactorThreads, server: MariaDBServer, **timeouts: Any) -> AdbapiStorage:
    """Another pool on the storage fixture's database, with the given timeouts."""
    return open_mysql(
        reactor,
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=f"{server.database}_loss",
        pool_min=1,
        pool_max=2,
        **timeouts,
    )


@async_test
async def test_a_frozen_server_fails_a_transaction_within_the_read_timeout(
    reactor: IReactorThreads, storage: AdbapiStorage, own_server: MariaDBServer
) -> None:
    """
    With read_timeout 1 s, a transaction on a server that stopped answering
    (SIGSTOP) fails as a lost connection within two read timeouts (its
    statement, then the one reconnection a first statement gets), instead
    of waiting on it; once the server answers again, so does the pool.
    """
    pool = _pool(
        reactor,
        own_server,
        read_timeout=1.0,
        write_timeout=1.0,
        lock_wait_timeout=1,
        failover_wait=0.0,
    )
    try:
        await pool.run(_names)
        own_server.kill(signal.SIGSTOP)
        began = time.monotonic()
        try:
            with pytest.raises(Exception) as raised:
                await pool.run(_names)
            waited = time.monotonic() - began
        finally:
            own_server.kill(signal.SIGCONT)
        assert is_connection_lost(raised.value)
        assert 0.9 < waited < 3.0
        assert await pool.run(_names) == []
    finally:
        pool.close()


@async_test
async def test_a_lock_wait_timeout_runs_the_transaction_again(
    reactor: IReactorThreads,
    storage: AdbapiStorage,
    own_server: MariaDBServer,
    logged: list[dict[str, Any]],
) -> None:
    """
    A row held by another client for 1.5 s: with lock_wait_timeout 1 s the
    waiting update fails with 1205 after 1 s, runs again (logged), and
    succeeds once the lock is released; nobody sees the error.
    """
    await storage.run(_insert, "held")
    holder = own_server.connection(f"{own_server.database}_loss")
    pool = _pool(reactor, own_server, read_timeout=3.0, lock_wait_timeout=1)
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT value FROM node_metadata WHERE name = 'held' FOR UPDATE")
        IReactorTime(reactor).callLater(1.5, holder.commit)

        def update(tx: Transaction) -> int:
            return tx.execute("UPDATE node_metadata SET value = ? WHERE name = ?", "new", "held")

        assert await pool.run(update) == 1
    finally:
        pool.close()
        holder.close()
    retried = [e for e in logged if e.get("conflict") == "lock wait timeout"]
    assert len(retried) == 1
    assert retried[0]["transaction"].endswith("update")

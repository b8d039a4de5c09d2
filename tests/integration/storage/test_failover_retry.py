"""
The storage rides a database switchover: a transaction that never reached a
writable primary (the server read-only, the server not listening) runs
again until [database] failover_wait is over, on a real private MariaDB.
A transaction that sent a write and then lost its COMMIT is never run again
here (its outcome is unknown: only the caller knows whether it may repeat).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pymysql
import pytest

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, globalLogPublisher

from clickpass.dbagent import mariadb as ops
from clickpass.storage import migrations
from clickpass.storage.sql import (
    AdbapiStorage,
    NoWritablePrimary,
    OutcomeUnknown,
    Transaction,
    open_mysql,
)
from tests.support.deferreds import async_test, block_on
from tests.support.mariadb import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

NOW = 1_700_000_000
DATABASE_SUFFIX = "_failover"


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A server of this module's own, which its tests stop and make read-only."""
    server = MariaDBServer(Path(tmp_path_factory.mktemp("mariadb-failover")))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(reactor: IReactorThreads, own_server: MariaDBServer) -> Iterator[str]:
    """A fresh migrated database on a writable, running server."""
    if not own_server.running:
        own_server.start()
    own_server.admin_execute("SET GLOBAL read_only = OFF")
    name = f"{own_server.database}{DATABASE_SUFFIX}"
    own_server.drop_database(name)
    own_server.create_database(name)
    pool = _pool(reactor, own_server, name, failover_wait=0.0)
    try:
        block_on(Deferred.fromCoroutine(migrations.migrate(pool, NOW)))
    finally:
        pool.close()
    yield name
    if own_server.running:
        own_server.admin_execute("SET GLOBAL read_only = OFF")


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


def _pool(
    reactor: IReactorThreads, server: MariaDBServer, database: str, failover_wait: float
) -> AdbapiStorage:
    return open_mysql(
        reactor,
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=database,
        pool_min=1,
        pool_max=2,
        connect_timeout=1.0,
        failover_wait=failover_wait,
    )


def _insert(tx: Transaction, name: str) -> None:
    tx.execute("INSERT INTO node_metadata (name, value) VALUES (?, ?)", name, "v")


def _names(tx: Transaction) -> list[str]:
    return [str(r[0]) for r in tx.fetchall("SELECT name FROM node_metadata ORDER BY name")]


def _gave_up(events: list[dict[str, Any]]) -> list[str]:
    return [
        str(e["message"])
        for e in events
        if "no writable database primary" in str(e.get("message", ""))
    ]


def _finished(d: Deferred[Any]) -> list[object]:
    """A list that gets C{d}'s result (or failure) once it has one."""
    results: list[object] = []

    def keep(result: object) -> object:
        results.append(result)
        return result

    d.addBoth(keep)
    return results


def _set_read_only(server: MariaDBServer, on: bool) -> Deferred[object]:
    return deferToThread(server.admin_execute, f"SET GLOBAL read_only = {'ON' if on else 'OFF'}")


@async_test
async def test_a_write_refused_as_read_only_runs_again_once_the_server_is_writable(
    reactor: IReactorThreads, own_server: MariaDBServer, database: str
) -> None:
    """
    A write started while the server is read-only (1290, as on an old
    primary during a switchover) succeeds once the server is writable again
    within failover_wait, applied once; the retries are counted.
    """
    pool = _pool(reactor, own_server, database, failover_wait=10.0)
    try:
        await pool.run(_names)  # a warm connection to the server
        await _set_read_only(own_server, True)
        IReactorTime(reactor).callLater(1.0, lambda: _set_read_only(own_server, False))
        began = time.monotonic()
        await pool.run(_insert, "during")
        assert time.monotonic() - began >= 0.9
        assert await pool.run(_names) == ["during"]
        assert pool.counts["failover_retries"] >= 1
        assert pool.counts["failover_gave_up"] == 0
    finally:
        pool.close()


@async_test
async def test_a_commit_refused_as_read_only_runs_the_transaction_again(
    reactor: IReactorThreads, own_server: MariaDBServer, database: str
) -> None:
    """
    A transaction whose write went through but whose server became
    read-only before its COMMIT is refused cleanly (nothing applied) and
    runs again whole once the server is writable: the row is there once.
    """
    pool = _pool(reactor, own_server, database, failover_wait=10.0)
    runs: list[int] = []

    def write_then_server_goes_read_only(tx: Transaction) -> None:
        _insert(tx, "once")
        runs.append(1)
        if len(runs) == 1:
            own_server.admin_execute("SET GLOBAL read_only = ON")

    try:
        written = pool.run(write_then_server_goes_read_only)
        done = _finished(written)
        await deferLater(cast(IReactorTime, reactor), 1.0, lambda: None)
        assert done == []
        await _set_read_only(own_server, False)
        await written
        assert await pool.run(_names) == ["once"]
        assert len(runs) >= 2
    finally:
        pool.close()


@async_test
async def test_a_refused_connection_runs_again_once_the_server_is_back(
    reactor: IReactorThreads, own_server: MariaDBServer, database: str
) -> None:
    """
    With the server stopped (connection refused, 2003) a write waits and
    runs once the server is started again within failover_wait.
    """
    pool = _pool(reactor, own_server, database, failover_wait=30.0)
    try:
        await pool.run(_names)
        await deferToThread(own_server.stop)
        written = pool.run(_insert, "after-restart")
        done = _finished(written)
        await deferLater(cast(IReactorTime, reactor), 0.5, lambda: None)
        assert done == []
        await deferToThread(own_server.start)
        await written
        assert await pool.run(_names) == ["after-restart"]
        assert pool.counts["failover_retries"] >= 1
    finally:
        pool.close()


@async_test
async def test_a_cut_commit_of_a_write_is_not_run_again(
    reactor: IReactorThreads, own_server: MariaDBServer, database: str
) -> None:
    """
    A write whose connection is cut before its COMMIT answers is reported
    as OutcomeUnknown and never run again by the storage (the caller
    decides): the function ran once, nothing was counted as a retry.
    """
    pool = _pool(reactor, own_server, database, failover_wait=10.0)
    runs: list[int] = []

    def write_then_cut(tx: Transaction) -> None:
        runs.append(1)
        _insert(tx, f"maybe-{len(runs)}")
        connection_id = tx.scalar("SELECT CONNECTION_ID()")
        own_server.admin_execute(f"KILL CONNECTION {int(connection_id)}")

    try:
        with pytest.raises(OutcomeUnknown):
            await pool.run(write_then_cut)
        assert runs == [1]
        assert pool.counts["failover_retries"] == 0
    finally:
        pool.close()


@async_test
async def test_a_pure_read_whose_connection_is_cut_runs_again(
    reactor: IReactorThreads, own_server: MariaDBServer, database: str
) -> None:
    """
    A transaction that only read may lose its connection anywhere, its
    COMMIT included: nothing could have been written, so it runs again and
    its caller gets the answer.
    """
    pool = _pool(reactor, own_server, database, failover_wait=10.0)
    runs: list[int] = []

    def read_then_cut(tx: Transaction) -> list[str]:
        runs.append(1)
        names = _names(tx)
        if len(runs) == 1:
            connection_id = tx.scalar("SELECT CONNECTION_ID()")
            own_server.admin_execute(f"KILL CONNECTION {int(connection_id)}")
        return names

    try:
        await pool.run(_insert, "there")
        assert await pool.run(read_then_cut) == ["there"]
        assert runs == [1, 1]
        assert pool.counts["failover_retries"] == 1
    finally:
        pool.close()


@async_test
async def test_no_writable_primary_within_the_wait_is_one_clear_error(
    reactor: IReactorThreads,
    own_server: MariaDBServer,
    database: str,
    logged: list[dict[str, Any]],
) -> None:
    """
    A server read-only for longer than failover_wait (1 s): the write fails
    after about that long with NoWritablePrimary, one line naming the
    transaction and the server's refusal, logged once; nothing applied.
    """
    pool = _pool(reactor, own_server, database, failover_wait=1.0)
    try:
        await _set_read_only(own_server, True)
        began = time.monotonic()
        with pytest.raises(NoWritablePrimary) as caught:
            await pool.run(_insert, "never")
        waited = time.monotonic() - began
        await _set_read_only(own_server, False)
        message = str(caught.value)
        assert "\n" not in message
        assert "no writable database primary took transaction _insert within 1s" in message
        assert "read-only" in message
        assert 0.5 <= waited < 2.5
        assert _gave_up(logged) == [message]
        assert pool.counts["failover_gave_up"] == 1
        assert await pool.run(_names) == []
    finally:
        pool.close()


@async_test
async def test_a_transaction_after_ddl_is_not_run_again(
    reactor: IReactorThreads, own_server: MariaDBServer, database: str
) -> None:
    """
    DDL commits at once: a transaction refused as read-only after a CREATE
    TABLE is not run again by the storage (that would repeat the applied
    DDL); the caller sees the refusal.
    """
    pool = _pool(reactor, own_server, database, failover_wait=10.0)
    runs: list[int] = []

    def create_then_write(tx: Transaction) -> None:
        runs.append(1)
        tx.execute("CREATE TABLE IF NOT EXISTS ddl_probe (id INT PRIMARY KEY)")
        own_server.admin_execute("SET GLOBAL read_only = ON")
        tx.execute("INSERT INTO ddl_probe (id) VALUES (1)")

    try:
        with pytest.raises(Exception, match="read-only"):
            await pool.run(create_then_write)
        assert runs == [1]
        assert pool.counts["failover_retries"] == 0
    finally:
        await _set_read_only(own_server, False)
        pool.close()


@async_test
async def test_a_drained_old_primary_refuses_an_open_transactions_commit_cleanly(
    reactor: IReactorThreads, own_server: MariaDBServer, database: str
) -> None:
    """
    The database agent's switchover drain (read-only first, ending nobody)
    with a client transaction open that has written: the drain does not
    wait for it, reports it still open, and its COMMIT then gets a clean
    read-only refusal (1290: nothing applied), never a cut connection; a
    transaction through the storage meanwhile waits and runs once the
    server is writable.
    """
    holder = own_server.connection(database)
    pool = _pool(reactor, own_server, database, failover_wait=10.0)
    admin = own_server.admin_connection()
    try:
        with holder.cursor() as cursor:
            cursor.execute("INSERT INTO node_metadata (name, value) VALUES ('open', 'v')")
        with admin.cursor() as cursor:
            left = await deferToThread(ops.drain_writes, cursor, 0.3)
        assert left == 1
        with pytest.raises(pymysql.err.OperationalError) as refused:
            holder.commit()
        assert refused.value.args[0] == 1290
        written = pool.run(_insert, "after")
        done = _finished(written)
        await deferLater(cast(IReactorTime, reactor), 0.5, lambda: None)
        assert done == []
        await _set_read_only(own_server, False)
        await written
        assert await pool.run(_names) == ["after"]
    finally:
        pool.close()
        holder.close()
        admin.close()

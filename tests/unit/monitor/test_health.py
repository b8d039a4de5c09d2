"""/readyz: ready when the database answers and takes writes; 503 with the reason otherwise."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from clickpass import config as configmod
from clickpass.application import build_site
from clickpass.monitor.health import database_problem
from clickpass.storage.sql import AdbapiStorage
from tests.support.deferreds import async_test


@async_test
async def test_ready_on_both_backends(storage_backend: AdbapiStorage, reactor: Any) -> None:
    """A migrated, writable database is ready (SQLite and MariaDB)."""
    assert await database_problem(storage_backend, reactor) is None


@async_test
async def test_database_refusing_writes_is_not_ready(
    database_target: Any, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    MariaDB switched to read-only (as a demoted primary is), or a SQLite
    file locked by another writer: not ready, with the reason; ready again after.
    """
    if database_target.backend == "mysql":
        server = database_target.server
        server.admin_execute("SET GLOBAL read_only = 1")
        try:
            problem = await database_problem(storage_backend, reactor)
        finally:
            server.admin_execute("SET GLOBAL read_only = 0")
        assert problem is not None and "read-only" in problem
    else:
        locker = sqlite3.connect(database_target.sqlite_path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            problem = await database_problem(storage_backend, reactor, timeout=0.5)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert problem == "the database did not answer within 0.5s"
    assert await database_problem(storage_backend, reactor) is None


class HungStorage:
    """A storage whose queries never come back."""

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        return Deferred()


class BrokenStorage:
    """A storage whose queries fail (database gone)."""

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.errback(ConnectionRefusedError("Connection refused\n(111)"))
        return d


def test_hung_database_times_out() -> None:
    """A database that does not answer is reported after the timeout, not waited for forever."""
    clock = Clock()
    results: list[Any] = []
    Deferred.fromCoroutine(database_problem(HungStorage(), clock, 2.0)).addCallback(results.append)  # type: ignore[arg-type]
    clock.advance(1.9)
    assert results == []
    clock.advance(0.2)
    assert results == ["the database did not answer within 2s"]


@async_test
async def test_readyz_route(tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any) -> None:
    """GET /readyz answers 200 "ready" on a good database, and 503 with one line when it fails."""
    settings = configmod.parse({"node": {"data_dir": str(tmp_path)}})
    good = build_site(reactor, settings, storage_backend, b"s" * 32)
    broken = build_site(reactor, settings, BrokenStorage(), b"s" * 32)  # type: ignore[arg-type]
    ports = [reactor.listenTCP(0, site, interface="127.0.0.1") for site in (good, broken)]
    try:
        good_url, broken_url = (f"http://127.0.0.1:{p.getHost().port}/readyz" for p in ports)
        response = await treq.get(good_url, timeout=10)
        assert response.code == 200
        assert await response.text() == "ready\n"
        assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]
        response = await treq.get(broken_url, timeout=10)
        assert response.code == 503
        assert await response.text() == (
            "not ready: the database refused: Connection refused (111)\n"
        )
    finally:
        for port in ports:
            await port.stopListening()

"""
One fresh database per test, on SQLite or on a private MariaDB server, and
the storages and node configurations that point at it.

Nothing here creates or drops anything but the test's own database.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import deferLater

from clickpass.config import Settings, load
from clickpass.storage.offline import open_direct
from clickpass.storage.sql import (
    AdbapiStorage,
    DirectStorage,
    NoWritablePrimary,
    OutcomeUnknown,
    open_mysql,
    open_sqlite,
)
from tests.support.mariadb import MariaDBServer


@dataclass
class DatabaseTarget:
    """
    One fresh, empty database on one backend, for one test: it opens as
    many storages on it as the test needs (as several worker processes
    would) and closes them all afterwards.
    """

    backend: str
    directory: Path
    reactor: IReactorThreads
    server: MariaDBServer | None = None
    database: str = ""
    _opened: list[AdbapiStorage | DirectStorage] = field(default_factory=list)

    @property
    def sqlite_path(self) -> Path:
        return self.directory / "clickpass.sqlite3"

    def open(self, **kwargs: object) -> AdbapiStorage:
        """A new connection pool on this database (not migrated)."""
        storage: AdbapiStorage
        reactor = self.reactor
        if self.backend == "sqlite":
            storage = open_sqlite(reactor, self.sqlite_path)
        else:
            assert self.server is not None
            storage = open_mysql(
                reactor,
                host=self.server.host,
                port=self.server.port,
                user=self.server.user,
                password=self.server.password,
                database=self.database,
                **kwargs,  # type: ignore[arg-type]
            )
        self._opened.append(storage)
        return storage

    def config_file(self, data_dir: Path | None = None, extra: str = "") -> Path:
        """
        A node configuration file pointing at this database (for MariaDB,
        with the password in a password_file, mode 0600, beside it).
        """
        data = data_dir or self.directory / "node-data"
        data.mkdir(parents=True, exist_ok=True)
        lines = ["[node]", f"data_dir = {_toml_string(str(data))}", "", "[database]"]
        if self.backend == "sqlite":
            lines += ['backend = "sqlite"', f"path = {_toml_string(str(self.sqlite_path))}"]
        else:
            assert self.server is not None
            password_file = data / "db-password"
            password_file.write_text(self.server.password + "\n")
            password_file.chmod(0o600)
            lines += [
                'backend = "mysql"',
                f"host = {_toml_string(self.server.host)}",
                f"port = {self.server.port}",
                f"user = {_toml_string(self.server.user)}",
                f"name = {_toml_string(self.database)}",
                f"password_file = {_toml_string(str(password_file))}",
            ]
        path = data.parent / f"{data.name}.toml"
        path.write_text("\n".join(lines) + "\n" + extra)
        return path

    def settings(self, data_dir: Path | None = None) -> Settings:
        """The settings of L{config_file}, loaded as a node would."""
        return load(self.config_file(data_dir))

    def open_direct(self) -> DirectStorage:
        """A DirectStorage on this database, as clickpass-ctl opens it."""
        storage = open_direct(self.settings())
        self._opened.append(storage)
        return storage

    def close(self) -> None:
        for storage in self._opened:
            storage.close()
        self._opened.clear()
        if self.server is not None and self.database:
            self.server.drop_database(self.database)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class WritesRefused:
    """
    A storage (around a L{DirectStorage}) whose database has no writable
    primary from the moment the test calls L{refuse} until it calls
    L{recover}: every transaction C{writes} names (any, when None) waits
    C{[database] failover_wait} on C{clock}, as the real storage does, then
    fails with L{NoWritablePrimary}, nothing of it applied. C{refused}
    counts them.
    """

    def __init__(
        self,
        storage: DirectStorage,
        clock: IReactorTime,
        failover_wait: float = 10.0,
        writes: Collection[Callable[..., Any]] | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.failover_wait = failover_wait
        self.writes = writes
        self.down = False
        self.refused = 0

    def refuse(self) -> None:
        self.down = True

    def recover(self) -> None:
        self.down = False

    def run(self, fn: Callable[..., Any], *args: object) -> Deferred[Any]:
        if not self.down or (self.writes is not None and fn not in self.writes):
            return self.storage.run(fn, *args)
        self.refused += 1

        def no_primary() -> None:
            raise NoWritablePrimary(f"no writable database primary within {self.failover_wait:g}s")

        return deferLater(self.clock, self.failover_wait, no_primary)


class CommitCut:
    """
    A storage (around a L{DirectStorage}) whose first transaction C{fn}
    commits but whose COMMIT's answer is lost (a database failover at that
    moment): it is applied, and the caller is told its outcome is unknown.
    C{cut} counts it.
    """

    def __init__(self, storage: DirectStorage, fn: Callable[..., Any]) -> None:
        self.storage = storage
        self.fn = fn
        self.cut = 0

    def run(self, fn: Callable[..., Any], *args: object) -> Deferred[Any]:
        d = self.storage.run(fn, *args)
        if fn is self.fn and not self.cut:
            self.cut += 1

            def lost(_: object) -> None:
                raise OutcomeUnknown("the database connection was lost while committing")

            d.addCallback(lost)
        return d

"""
Fixtures shared by every test directory.

Keep it organised by section; a fixture used by one directory only belongs
in that directory's conftest.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads

from clickpass.config import Settings, load
from clickpass.database import migrations
from clickpass.database.offline import open_direct
from clickpass.database.storage import AdbapiStorage, DirectStorage, open_mysql, open_sqlite
from tests.support.deferreds import block_on
from tests.support.mariadb import MariaDBServer, MariaDBUnavailable


def global_reactor() -> IReactorThreads:
    """The reactor pytest-twisted runs (tests may name it; the library never does)."""
    from twisted.internet import reactor as running

    return cast(IReactorThreads, running)


@pytest.fixture
def reactor() -> IReactorThreads:
    """The running reactor, for code under test that takes one."""
    return global_reactor()


# ---------------------------------------------------------------------------
# Storage: a private MariaDB server, and a fresh database on either backend.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """
    One private MariaDB server for the whole run, on a free loopback port.
    Missing binaries fail the test: a backend silently skipped is a backend
    not tested.
    """
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    try:
        try:
            server.start()
        except MariaDBUnavailable as e:
            pytest.fail(str(e), pytrace=False)
        yield server
    finally:
        server.stop()


@dataclass
class DatabaseTarget:
    """
    One fresh, empty database on one backend, for one test: it opens as
    many storages on it as the test needs (as several worker processes
    would) and closes them all afterwards.
    """

    backend: str
    directory: Path
    server: MariaDBServer | None = None
    database: str = ""
    _opened: list[AdbapiStorage | DirectStorage] = field(default_factory=list)

    @property
    def sqlite_path(self) -> Path:
        return self.directory / "clickpass.sqlite3"

    def open(self, **kwargs: object) -> AdbapiStorage:
        """A new connection pool on this database (not migrated)."""
        storage: AdbapiStorage
        reactor = global_reactor()
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


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("mysql", marks=[pytest.mark.mariadb, pytest.mark.integration]),
    ]
)
def database_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseTarget]:
    """
    A fresh, empty database, once on SQLite and once on MariaDB (a database
    of its own on the session's server, dropped afterwards).
    """
    if request.param == "sqlite":
        target = DatabaseTarget("sqlite", tmp_path)
    else:
        server: MariaDBServer = request.getfixturevalue("mariadb_server")
        target = DatabaseTarget(
            "mysql", tmp_path, server, f"{server.database}_t{secrets.token_hex(6)}"
        )
        server.create_database(target.database)
    try:
        yield target
    finally:
        target.close()


@pytest.fixture
def storage_backend(database_target: DatabaseTarget) -> AdbapiStorage:
    """A fresh, migrated AdbapiStorage, once on SQLite and once on MariaDB."""
    storage = database_target.open()
    block_on(Deferred.fromCoroutine(migrations.migrate(storage, 1_700_000_000)))
    return storage

"""
The storage layer: one interface over SQLite (the embedded default) and
MariaDB/MySQL (through PyMySQL), both driven by L{twisted.enterprise.adbapi}.

Queries are written once, with C{?} placeholders, against L{Transaction};
the dialect turns them into what the driver expects. Everything runs on
adbapi's thread pool: nothing here may block the reactor thread.

Code that already runs in a worker thread (python3-openid's store) calls
L{Storage.run_blocking}, which hands the work to the pool and waits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger

from clickpass.config import ConfigError, Settings, read_secret_file

T = TypeVar("T")

Row = tuple[Any, ...]


class DatabaseError(Exception):
    """A storage operation failed; the message says what, for operators."""


class IntegrityError(DatabaseError):
    """A uniqueness or reference constraint refused a write."""


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL of the two backends."""

    name: Literal["sqlite", "mysql"]

    @property
    def autoincrement_pk(self) -> str:
        if self.name == "sqlite":
            return "INTEGER PRIMARY KEY AUTOINCREMENT"
        return "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY"

    @property
    def table_options(self) -> str:
        if self.name == "sqlite":
            return ""
        return " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

    def insert_ignore(self) -> str:
        """The statement head that inserts a row unless its key exists."""
        return "INSERT OR IGNORE" if self.name == "sqlite" else "INSERT IGNORE"

    def translate(self, sql: str) -> str:
        """Turn C{?} placeholders into the driver's own."""
        if self.name == "sqlite":
            return sql
        return sql.replace("%", "%%").replace("?", "%s")


class Transaction:
    """
    One database transaction, used from a pool thread. It commits when the
    function given to L{Storage.run} returns, and rolls back if it raises.
    """

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def execute(self, sql: str, *params: object) -> int:
        """Run one statement; return the number of rows it changed."""
        try:
            self._cursor.execute(self.dialect.translate(sql), params)
        except Exception as e:
            if _is_integrity_error(e):
                raise IntegrityError(str(e)) from e
            raise
        return int(self._cursor.rowcount or 0)

    def fetchone(self, sql: str, *params: object) -> Row | None:
        """Run a query and return its first row, or L{None}."""
        self.execute(sql, *params)
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def fetchall(self, sql: str, *params: object) -> list[Row]:
        """Run a query and return all its rows."""
        self.execute(sql, *params)
        return [tuple(r) for r in self._cursor.fetchall()]

    def scalar(self, sql: str, *params: object) -> Any:
        """Run a query and return the first column of its first row, or L{None}."""
        row = self.fetchone(sql, *params)
        return row[0] if row else None

    @property
    def lastrowid(self) -> int:
        return int(self._cursor.lastrowid)


def _is_integrity_error(e: Exception) -> bool:
    if isinstance(e, sqlite3.IntegrityError):
        return True
    try:
        import pymysql
    except ImportError:  # pragma: no cover - pymysql is a dependency
        return False
    return isinstance(e, pymysql.err.IntegrityError)


class Storage(Protocol):
    """What the application needs of the database."""

    dialect: Dialect

    def run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        """Run C{fn(transaction, *args)} in one transaction on the pool."""

    def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """From a non-reactor thread: run C{fn} like L{run} and wait for it."""

    def describe(self) -> str:
        """A short description of the backend for operators (no secrets)."""

    def close(self) -> None:
        """Close every connection."""


class AdbapiStorage:
    """L{Storage} on an adbapi connection pool."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorThreads,
        dialect: Dialect,
        pool: adbapi.ConnectionPool,
        description: str,
    ) -> None:
        self._reactor = reactor
        self.dialect = dialect
        self._pool = pool
        self._description = description

    def run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        dialect = self.dialect

        def interaction(cursor: Any) -> T:
            return fn(Transaction(cursor, dialect), *args)

        d: Deferred[T] = self._pool.runInteraction(interaction)
        return d

    def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        result: T = blockingCallFromThread(self._reactor, self.run, fn, *args)  # type: ignore[arg-type]
        return result

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        self._pool.close()


class DirectStorage:
    """
    L{Storage} on one plain DB-API connection, run in the calling thread.
    For command-line tools (C{clickpass-ctl db migrate}) that have no
    reactor; never for the node, whose reactor must not block.
    """

    def __init__(self, connection: Any, dialect: Dialect, description: str) -> None:
        self._connection = connection
        self.dialect = dialect
        self._description = description

    def run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        from twisted.internet.defer import fail, succeed

        cursor = self._connection.cursor()
        try:
            result = fn(Transaction(cursor, self.dialect), *args)
            self._connection.commit()
        except BaseException:
            self._connection.rollback()
            return fail()
        finally:
            cursor.close()
        return succeed(result)

    def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        cursor = self._connection.cursor()
        try:
            result = fn(Transaction(cursor, self.dialect), *args)
            self._connection.commit()
            return result
        except BaseException:
            self._connection.rollback()
            raise
        finally:
            cursor.close()

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        self._connection.close()


def _sqlite_open(connection: sqlite3.Connection) -> None:
    # WAL lets several worker processes read while one writes; FULL sync
    # means a commit that returned survives a power loss.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=10000")


def open_sqlite(reactor: IReactorThreads, path: Path) -> AdbapiStorage:
    """Open (creating if needed) the SQLite database at C{path}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = adbapi.ConnectionPool(
        "sqlite3",
        str(path),
        check_same_thread=False,
        timeout=10.0,
        cp_min=1,
        cp_max=1,
        cp_openfun=_sqlite_open,
        cp_reactor=reactor,
        cp_noisy=False,
    )
    return AdbapiStorage(reactor, Dialect("sqlite"), pool, f"sqlite {path}")


def open_mysql(
    reactor: IReactorThreads,
    *,
    host: str = "127.0.0.1",
    port: int = 3306,
    unix_socket: str = "",
    user: str,
    password: str,
    database: str,
    pool_min: int = 2,
    pool_max: int = 8,
    connect_timeout: float = 5.0,
) -> AdbapiStorage:
    """Open a connection pool to a MariaDB/MySQL server through PyMySQL."""
    kwargs: dict[str, Any] = {
        "user": user,
        "password": password,
        "database": database,
        "charset": "utf8mb4",
        "autocommit": False,
        "connect_timeout": connect_timeout,
        "read_timeout": 30,
        "write_timeout": 30,
    }
    if unix_socket:
        kwargs["unix_socket"] = unix_socket
        where = unix_socket
    else:
        kwargs["host"] = host
        kwargs["port"] = port
        where = f"{host}:{port}"
    pool = adbapi.ConnectionPool(
        "pymysql",
        cp_min=pool_min,
        cp_max=pool_max,
        cp_reconnect=True,
        cp_good_sql="SELECT 1",
        cp_reactor=reactor,
        cp_noisy=False,
        **kwargs,
    )
    return AdbapiStorage(reactor, Dialect("mysql"), pool, f"mysql {user}@{where}/{database}")


def open_storage(reactor: IReactorThreads, settings: Settings) -> AdbapiStorage:
    """Open the storage the configuration names."""
    db = settings.database
    if db.backend == "sqlite":
        return open_sqlite(reactor, settings.sqlite_path)
    password = ""
    if db.password_file:
        password = read_secret_file(
            settings.data_path(db.password_file), "[database] password_file"
        )
    return open_mysql(
        reactor,
        host=db.host,
        port=db.port,
        unix_socket=db.unix_socket,
        user=db.user,
        password=password,
        database=db.name,
        pool_min=db.pool_min,
        pool_max=db.pool_max,
        connect_timeout=db.connect_timeout,
    )


def placeholders(values: Sequence[object]) -> str:
    """C{?, ?, ?} for an C{IN (...)} clause of C{len(values)} items."""
    return ", ".join("?" for _ in values)


__all__ = [
    "AdbapiStorage",
    "ConfigError",
    "DatabaseError",
    "Dialect",
    "IntegrityError",
    "Storage",
    "Transaction",
    "open_mysql",
    "open_sqlite",
    "open_storage",
    "placeholders",
]

"""
Storage for command-line tools that run without a node or a reactor.

Never used by the node itself: it blocks the calling thread.
"""

from __future__ import annotations

import sqlite3
import time

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from clickpass.config import Settings, read_secret_file
from clickpass.datadir import create_private_file
from clickpass.storage import migrations
from clickpass.storage.sql import (
    MYSQL_SQL_MODE,
    DatabaseError,
    Dialect,
    DirectStorage,
    configure_sqlite,
)


def open_direct(settings: Settings) -> DirectStorage:
    """Open the configured database with one plain connection."""
    db = settings.database
    if db.backend == "sqlite":
        path = settings.sqlite_path
        create_private_file(path)
        connection = sqlite3.connect(str(path), timeout=10.0)
        configure_sqlite(connection)
        return DirectStorage(connection, Dialect("sqlite"), f"sqlite {path}")
    import pymysql

    password = ""
    if db.password_file:
        password = read_secret_file(
            settings.data_path(db.password_file), "[database] password_file"
        )
    # Through a unix socket when one is configured (pymysql then ignores the
    # host and port), else over TCP to the host and port.
    over_tcp = not db.unix_socket
    try:
        server = pymysql.connect(
            user=db.user,
            password=password,
            database=db.name,
            charset="utf8mb4",
            autocommit=False,
            connect_timeout=db.connect_timeout,
            sql_mode=MYSQL_SQL_MODE,
            unix_socket=db.unix_socket or None,
            host=db.host if over_tcp else None,
            port=db.port if over_tcp else 0,
        )
    except pymysql.err.MySQLError as e:
        raise DatabaseError(
            f"cannot connect to MariaDB at {db.host}:{db.port}: {e.args[-1]}"
        ) from None
    return DirectStorage(server, Dialect("mysql"), f"mysql {db.user}@{db.host}:{db.port}/{db.name}")


def migrate_offline(settings: Settings) -> tuple[list[int], int]:
    """Run the migrations now; return (versions applied, schema version)."""
    storage = open_direct(settings)
    try:
        d: Deferred[list[int]] = Deferred.fromCoroutine(
            migrations.migrate(storage, int(time.time()))
        )
        # DirectStorage answers synchronously, so the Deferred has fired.
        outcomes: list[list[int] | Failure] = []
        d.addBoth(outcomes.append)
        (outcome,) = outcomes
        if isinstance(outcome, Failure):
            outcome.raiseException()
            raise AssertionError("unreachable")
        version = storage.run_blocking(migrations.current_version)
        return outcome, version
    finally:
        storage.close()

"""
Two admins of a site removing each other at the same moment, on a real
MariaDB (InnoDB, REPEATABLE READ): the second removal must wait for the
first and then see that only one admin is left, so a site never ends with
none. Two connections of their own, so the first transaction can be held
open while the second one runs.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import pymysql
import pytest

from clickpass.partners import sites
from clickpass.storage.offline import migrate_offline
from clickpass.storage.sql import Dialect, Transaction
from tests.conftest import global_reactor
from tests.support.mariadb import MariaDBServer
from tests.support.storage import DatabaseTarget

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

NOW = 1_700_000_000


def _account(tx: Transaction, email: str) -> int:
    tx.execute(
        "INSERT INTO accounts (uid, email, password_hash, created) VALUES (?, ?, '', ?)",
        email,
        email,
        NOW,
    )
    return int(tx.scalar("SELECT id FROM accounts WHERE email = ?", email))


def test_two_admins_removing_each_other_leave_one(
    mariadb_server: MariaDBServer, tmp_path: Path
) -> None:
    """
    While one admin's removal of the other is not yet committed, the other's
    removal of the first waits for it, then answers "last" and removes
    nobody: one admin is left, never none.
    """
    target = DatabaseTarget(
        "mysql",
        tmp_path,
        global_reactor(),
        mariadb_server,
        f"{mariadb_server.database}_t{secrets.token_hex(6)}",
    )
    mariadb_server.create_database(target.database)
    try:
        migrate_offline(target.settings())
        direct = target.open_direct()
        first = direct.run_blocking(_account, "first@example.com")
        second = direct.run_blocking(_account, "second@example.com")
        settings = sites.check_settings(
            {
                "name": "Race",
                "realm": "https://race.example/",
                "return_to_urls": "https://race.example/r",
            }
        )
        site = direct.run_blocking(sites.create_site, settings, first, NOW)
        token = direct.run_blocking(sites.invite_admin, site.id, "second@example.com", first, NOW)
        direct.run_blocking(sites.accept_invitation, token, second, "second@example.com", NOW)

        def connect() -> pymysql.connections.Connection:
            return pymysql.connect(
                host=mariadb_server.host,
                port=mariadb_server.port,
                user=mariadb_server.user,
                password=mariadb_server.password,
                database=target.database,
                autocommit=False,
            )

        one, two, watcher = connect(), connect(), connect()
        watcher.autocommit(True)
        try:
            held = Transaction(one.cursor(), Dialect("mysql"))
            assert sites.remove_admin(held, site.id, second, NOW) == "removed"

            outcome: list[str] = []

            def other_admin() -> None:
                tx = Transaction(two.cursor(), Dialect("mysql"))
                outcome.append(sites.remove_admin(tx, site.id, first, NOW))
                two.commit()

            racer = threading.Thread(target=other_admin)
            racer.start()
            # The second removal must be waiting for the first one's lock
            # (or, without a lock, it has already finished: the test fails below).
            deadline = time.monotonic() + 20
            waiting = False
            while time.monotonic() < deadline and racer.is_alive() and not waiting:
                with watcher.cursor() as cursor:
                    # Own threads are visible without the PROCESS privilege.
                    cursor.execute(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                        "WHERE COMMAND = 'Query' AND INFO LIKE 'UPDATE partner_sites%'"
                    )
                    row = cursor.fetchone()
                    waiting = row is not None and int(row[0]) > 0
                time.sleep(0.05)
            one.commit()
            racer.join(30)
            assert not racer.is_alive()
            assert waiting, "the second removal did not wait for the first"
            assert outcome == ["last"]
        finally:
            for connection in (one, two, watcher):
                connection.close()
        left = direct.run_blocking(sites.admins, site.id)
        assert [a.account_id for a in left] == [first]
    finally:
        target.close()

"""
Two private MariaDB servers set up for GTID semi-sync replication, as the
database hosts run them: binlog on both, log_slave_updates, strict GTID,
read-only at start, semi-sync slave recovery at start (a crashed primary
truncates the un-acknowledged tail of its binlog).

Used by the agent's integration tests and by scripts/bench-db-failover. It
never touches the machine's own MariaDB: every server is a private one of
L{tests.support.mariadb}.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

from clickpass.dbagent import mariadb as ops
from tests.support.mariadb import MariaDBServer

REPL_USER = "repl"


def replication_options(server_id: int, semisync: bool = True) -> list[str]:
    options = [
        f"--server-id={server_id}",
        "--log-bin=mariadb-bin",
        "--relay-log=relay-bin",
        "--log-slave-updates=ON",
        "--binlog-format=ROW",
        "--gtid-strict-mode=ON",
        "--gtid-domain-id=0",
        "--sync-binlog=1",
        "--innodb-flush-log-at-trx-commit=1",
        "--sync-relay-log=1",
        "--sync-master-info=1",
        "--relay-log-recovery=ON",
        "--read-only=ON",
        "--slave-net-timeout=1",
        "--skip-slave-start",
    ]
    if semisync:
        options += [
            "--rpl-semi-sync-slave-enabled=ON",
            "--init-rpl-role=SLAVE",
            "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
            f"--rpl-semi-sync-master-timeout={ops.SEMISYNC_TIMEOUT_MS}",
        ]
    return options


class Pair:
    """db1 and db2: start them, make db1 the primary and db2 its replica."""

    def __init__(self, base: Path, semisync: bool = True) -> None:
        self.semisync = semisync
        self.repl_password = secrets.token_hex(8)
        # The application connects through the VIP to either server.
        self.app_password = secrets.token_hex(8)
        self.servers = {
            name: MariaDBServer(
                base / name,
                extra_options=replication_options(i + 1, semisync),
                database="app",
                password=self.app_password,
            )
            for i, name in enumerate(("db1", "db2"))
        }

    def __getitem__(self, name: str) -> MariaDBServer:
        return self.servers[name]

    def start(self) -> None:
        for server in self.servers.values():
            server.start()
            self.prepare(server)

    def prepare(self, server: MariaDBServer) -> None:
        """Users every database host has, created outside the binlog."""
        conn = server.admin_connection()
        try:
            with conn.cursor() as c:
                c.execute("SET SESSION sql_log_bin = 0")
                c.execute(
                    f"CREATE USER IF NOT EXISTS '{REPL_USER}'@'%%' IDENTIFIED BY %s",
                    (self.repl_password,),
                )
                c.execute(
                    f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{REPL_USER}'@'%'"
                )
                c.execute(
                    "CREATE USER IF NOT EXISTS 'agent'@'%%' IDENTIFIED BY %s",
                    (self.repl_password,),
                )
                c.execute("GRANT ALL PRIVILEGES ON *.* TO 'agent'@'%' WITH GRANT OPTION")
                c.execute("GRANT ALL PRIVILEGES ON `app`.* TO 'clickpass'@'%'")
                c.execute("RESET MASTER")
        finally:
            conn.close()

    def account(self, name: str, port: int | None = None) -> ops.ReplicaAccount:
        server = self.servers[name]
        return ops.ReplicaAccount(server.host, port or server.port, REPL_USER, self.repl_password)

    def admin(self, name: str) -> ops.ServerAddress:
        return ops.ServerAddress(unix_socket=str(self.servers[name].socket_path))

    def tcp_admin(self, name: str, port: int | None = None) -> ops.ServerAddress:
        server = self.servers[name]
        return ops.ServerAddress(
            host=server.host, port=port or server.port, user="agent", password=self.repl_password
        )

    def run(self, name: str, fn: Any, *args: Any) -> Any:
        """Run a role operation on a server, blocking (test threads only)."""
        conn = self.servers[name].admin_connection(read_timeout=30)
        try:
            with conn.cursor() as c:
                return fn(c, *args)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def status(self, name: str) -> ops.ServerStatus:
        result: ops.ServerStatus = self.run(name, ops.read_status)
        return result

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop(timeout=10)

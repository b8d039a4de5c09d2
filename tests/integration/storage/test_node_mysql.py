"""
A real node (twistd -n clickpass) on the MariaDB backend: it migrates the
database at start and reports it through clickpass-ctl status; with a wrong
password it refuses to start with one clear line.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickpass.storage import migrations
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, free_port, run_twistd, write_config

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]


@pytest.fixture
def node_database(mariadb_server: MariaDBServer) -> Iterator[str]:
    """A fresh, empty database on the session's server for one node."""
    name = f"{mariadb_server.database}_node{secrets.token_hex(4)}"
    mariadb_server.create_database(name)
    try:
        yield name
    finally:
        mariadb_server.drop_database(name)


def _mysql_config(
    tmp_path: Path, server: MariaDBServer, database: str, password: str, port: int
) -> Path:
    password_file = tmp_path / "db-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return write_config(
        tmp_path,
        port,
        extra=f"""
[database]
backend = "mysql"
host = "{server.host}"
port = {server.port}
user = "{server.user}"
name = "{database}"
password_file = "{password_file}"
connect_timeout = 3.0
""",
    )


def test_node_on_mariadb_migrates_and_reports_the_database(
    tmp_path: Path, mariadb_server: MariaDBServer, node_database: str
) -> None:
    """
    A node configured for MariaDB brings the empty database to the latest
    schema at start, and clickpass-ctl status says the mysql backend answers.
    """
    port = free_port()
    config = _mysql_config(tmp_path, mariadb_server, node_database, mariadb_server.password, port)
    node = NodeProcess(tmp_path, config, port=port)
    try:
        node.start()
        status = json.loads(node.ctl("--json", "status").stdout)
        database = status["database"]
        assert database["backend"] == "mysql"
        assert database["answers"] is True
        assert database["schema_version"] == migrations.latest_version()
        assert node_database in database["description"]
        assert mariadb_server.password not in json.dumps(status)
        text = node.ctl("status").stdout
        assert "database:  mysql (answers)" in text
        versions = mariadb_server.admin_execute(
            f"SELECT version FROM `{node_database}`.schema_version"
        )
        assert [int(v[0]) for v in versions] == [m.version for m in migrations.MIGRATIONS]
        assert "applied schema migration 1" in node.log()
    finally:
        node.stop()


def test_wrong_database_password_stops_the_node_with_one_clear_line(
    tmp_path: Path, mariadb_server: MariaDBServer, node_database: str
) -> None:
    """
    With a wrong MariaDB password the node exits non-zero at once (it does
    not wait for the database forever) and says why in one line, without a
    traceback.
    """
    config = _mysql_config(tmp_path, mariadb_server, node_database, "not-the-password", free_port())
    result = run_twistd(tmp_path, config, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "cannot start" in line]
    assert len(errors) == 1, output
    assert "database refused us" in errors[0]
    assert "Access denied for user" in errors[0]
    assert "not-the-password" not in output

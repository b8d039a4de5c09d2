"""Fixtures for the OpenID interop tests: a real node, relying-party sites."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.openid.harness import Person, RelyingPartySite
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, free_port, write_config

# The relying parties of these tests live on loopback; let the provider's
# relying-party discovery reach them.
OPENID_CONFIG = """
[openid]
allow_private_rp_discovery = true
rp_discovery_timeout = 5.0
"""


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """
    One running node (free port, its own data directory) for a test module,
    on each storage backend: SQLite, and a fresh database on the session's
    private MariaDB server.
    """
    tmp = tmp_path_factory.mktemp("openid-node")
    port = free_port()
    extra = OPENID_CONFIG
    database = None
    server: MariaDBServer | None = None
    if request.param == "mysql":
        server = request.getfixturevalue("mariadb_server")
        database = f"{server.database}_openid{secrets.token_hex(4)}"
        server.create_database(database)
        password_file = tmp / "db-password"
        password_file.write_text(server.password + "\n")
        extra += f"""
[database]
backend = "mysql"
host = "{server.host}"
port = {server.port}
user = "{server.user}"
name = "{database}"
password_file = "{password_file}"
"""
    proc = NodeProcess(tmp, write_config(tmp, port, extra), port=port)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        if server is not None and database is not None:
            server.drop_database(database)


@pytest.fixture(scope="module")
def rp_site() -> Iterator[RelyingPartySite]:
    """A relying party's realm on 127.0.0.1, publishing its return_to in XRDS."""
    site = RelyingPartySite("127.0.0.1").start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="module")
def other_site() -> Iterator[RelyingPartySite]:
    """A second relying party, on another host name (localhost)."""
    site = RelyingPartySite("localhost").start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture
def person(node: NodeProcess) -> Person:
    """A new person (not signed up yet) with a fresh browser."""
    return Person(node.url, f"p{secrets.token_hex(4)}@example.com")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path

"""Fixtures for the OpenID interop tests: a real node, relying-party sites."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.openid.harness import Person, RelyingPartySite
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, running_node

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
    server: MariaDBServer | None = None
    if request.param == "mysql":
        server = request.getfixturevalue("mariadb_server")
    with running_node(tmp, OPENID_CONFIG, server, "openid") as proc:
        yield proc


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

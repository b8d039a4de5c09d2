"""Fixtures for the second factors' tests: a real node on each storage backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.openid.conftest import OPENID_CONFIG
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, running_node


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """One running node for a test module, on SQLite and on a fresh MariaDB database."""
    tmp = tmp_path_factory.mktemp("mfa-node")
    server: MariaDBServer | None = None
    if request.param == "mysql":
        server = request.getfixturevalue("mariadb_server")
    with running_node(tmp, OPENID_CONFIG, server, "mfa") as proc:
        yield proc

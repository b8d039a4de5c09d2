"""
Fixtures for the database agent's integration tests: a replicating pair of
servers, and the loopback harness (both agents, groups, links and VIP).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import global_reactor
from tests.integration.dbagent.cluster import Cluster
from tests.integration.dbagent.pair import Pair
from tests.support.mariadb import MariaDBUnavailable


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """db1 and db2, started, read-only, not replicating yet; stopped afterwards."""
    servers = Pair(tmp_path)
    try:
        try:
            servers.start()
        except MariaDBUnavailable as e:
            pytest.fail(str(e), pytrace=False)
        yield servers
    finally:
        servers.stop()


def make_cluster(base: Path, witness: bool = False) -> Cluster:
    """The loopback harness with both servers started (its agents not yet)."""
    cluster = Cluster(global_reactor(), base, witness=witness, check_timeout=1.0)
    cluster.start_servers()
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = make_cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
        c.stop_servers()


@pytest.fixture
def witnessed(tmp_path: Path) -> Iterator[Cluster]:
    """The harness with a witness voting in the db group."""
    c = make_cluster(tmp_path, witness=True)
    try:
        yield c
    finally:
        c.stop()
        c.stop_servers()

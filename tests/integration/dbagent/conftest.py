"""Fixtures for the database agent's integration tests: a replicating pair."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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

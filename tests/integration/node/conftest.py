from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import NodeProcess, free_port, write_config


def started_node(directory: Path) -> NodeProcess:
    """A node on SQLite with a free port and its data under C{directory}, started."""
    port = free_port()
    return NodeProcess(directory, write_config(directory, port), port=port).start()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A running node on SQLite with a free port and its own data directory."""
    proc = started_node(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """
    One running node for a test module, for tests that only read or add
    accounts of their own (each its own email), so that they need not start
    a node each. A test that counts something node-wide takes L{node}.
    """
    proc = started_node(tmp_path_factory.mktemp("shared-node"))
    yield proc
    proc.stop()

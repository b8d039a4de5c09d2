from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import NodeProcess, free_port, write_config


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A running node on SQLite with a free port and its own data directory."""
    port = free_port()
    proc = NodeProcess(tmp_path, write_config(tmp_path, port), port=port)
    proc.start()
    yield proc
    proc.stop()

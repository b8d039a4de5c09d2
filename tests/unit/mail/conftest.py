"""A migrated in-memory SQLite outbox, run synchronously, and a fake clock at a fixed time."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from twisted.internet.task import Clock

from clickpass.storage import migrations
from clickpass.storage.sql import Dialect, DirectStorage

NOW = 1_700_000_000
BASE_URL = "https://login.example.com/"


@pytest.fixture
def storage() -> Iterator[DirectStorage]:
    connection = sqlite3.connect(":memory:")
    storage = DirectStorage(connection, Dialect("sqlite"), "sqlite :memory:")
    for migration in migrations.MIGRATIONS:
        storage.run_blocking(migrations._apply, migration, NOW)
    try:
        yield storage
    finally:
        storage.close()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock

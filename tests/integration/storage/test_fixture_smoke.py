"""The storage fixtures give a fresh, migrated database on each backend."""

from __future__ import annotations

from clickpass.storage import migrations
from clickpass.storage.sql import AdbapiStorage
from tests.support.deferreds import async_test


@async_test
async def test_storage_backend_is_migrated(storage_backend: AdbapiStorage) -> None:
    """The storage a test receives is already at the latest schema version."""
    assert await storage_backend.run(migrations.current_version) == migrations.latest_version()

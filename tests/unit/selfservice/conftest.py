"""The partners' migrated in-memory SQLite database, shared here."""

from tests.unit.partners.conftest import storage

__all__ = ["storage"]

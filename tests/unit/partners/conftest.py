"""A migrated in-memory SQLite database, run synchronously (no threads, no reactor)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from clickpass.partners import sites
from clickpass.storage import migrations
from clickpass.storage.sql import Dialect, DirectStorage, Transaction

NOW = 1_700_000_000


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


def add_account(tx: Transaction, email: str) -> int:
    tx.execute(
        "INSERT INTO accounts (uid, email, password_hash, created) VALUES (?, ?, '', ?)",
        email,
        email,
        NOW,
    )
    return int(tx.scalar("SELECT id FROM accounts WHERE email = ?", email))


def make_site(
    storage: DirectStorage,
    realm: str = "https://partner.example/",
    webhook: bool = True,
    verified: bool = True,
) -> sites.Site:
    settings = sites.check_settings(
        {
            "name": "Partner",
            "realm": realm,
            "return_to_urls": realm + "return",
            "registration_url": realm + "register",
            "connect_url": realm + "connect",
            "requested_fields": ["email", "nickname"],
            "required_fields": ["email"],
            "webhook_url": realm + "hook" if webhook else "",
        }
    )
    admin = storage.run_blocking(add_account, f"admin@{realm.split('/')[2]}")
    site: sites.Site = storage.run_blocking(sites.create_site, settings, admin, NOW)
    if verified:
        site = verify_site(storage, site)
    return site


def verify_site(storage: DirectStorage, site: sites.Site) -> sites.Site:
    """Record a successful realm check for C{site} (as the console does after fetching)."""
    token = storage.run_blocking(sites.verification_token, site.id)
    assert storage.run_blocking(sites.record_verification, site.id, token, None, NOW)
    found: sites.Site | None = storage.run_blocking(sites.site_by_id, site.id)
    assert found is not None and found.verified
    return found

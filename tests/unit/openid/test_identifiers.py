"""Per-site identifiers: derivation, sectors, persistence and rebuilding."""

from __future__ import annotations

import pytest

from clickpass.openid.identifiers import (
    LAST_USED_RESOLUTION,
    OPAQUE_PATTERN,
    BadRealm,
    IdentifierConflict,
    Identifiers,
    derive_opaque,
    opaque_from_url,
    recorded,
    sector_of,
)
from clickpass.storage.sql import AdbapiStorage, Transaction
from tests.support.deferreds import async_test

KEY = b"k" * 32
BASE = "https://login.example.net/"
NOW = 1_700_000_000


@pytest.mark.parametrize(
    ("realm", "sector"),
    [
        ("http://example.com/", "example.com"),
        ("https://EXAMPLE.com:8443/some/path?x=1", "example.com"),
        ("http://*.example.com/", "example.com"),
        ("https://www.example.com/", "www.example.com"),
        ("http://example.com./", "example.com"),
        ("http://bücher.de/", "xn--bcher-kva.de"),
        ("http://xn--bcher-kva.de/", "xn--bcher-kva.de"),
        ("http://BÜCHER.de/", "xn--bcher-kva.de"),
        ("http://127.0.0.1:8000/", "127.0.0.1"),
        ("http://[::1]:8000/", "::1"),
    ],
)
def test_sector_normalisation(realm: str, sector: str) -> None:
    """The sector is the realm's host: lowercase, no wildcard, no trailing dot, IDNA."""
    assert sector_of(realm) == sector


@pytest.mark.parametrize("realm", ["", "example.com", "http:///path", "http://*/", "http://a.*.b/"])
def test_sector_of_unusable_realm(realm: str) -> None:
    """A realm without a usable host has no sector."""
    with pytest.raises(BadRealm):
        sector_of(realm)


def test_derivation_is_deterministic() -> None:
    """The same person at the same site always gets the same opaque identifier."""
    first = derive_opaque(KEY, "uid-1", "example.com")
    assert first == derive_opaque(KEY, "uid-1", "example.com")
    assert OPAQUE_PATTERN.match(first)


def test_two_sites_differ() -> None:
    """One person gets a different identifier at each site."""
    assert derive_opaque(KEY, "uid-1", "a.example") != derive_opaque(KEY, "uid-1", "b.example")


def test_two_people_differ() -> None:
    """Two people at one site get different identifiers."""
    assert derive_opaque(KEY, "uid-1", "a.example") != derive_opaque(KEY, "uid-2", "a.example")


def test_key_matters() -> None:
    """Without the key, the identifier cannot be computed from uid and sector."""
    assert derive_opaque(KEY, "uid-1", "a.example") != derive_opaque(
        b"x" * 32, "uid-1", "a.example"
    )


def test_no_ambiguity_between_uid_and_sector() -> None:
    """Moving characters between uid and sector gives a different identifier."""
    assert derive_opaque(KEY, "ab", "c.example") != derive_opaque(KEY, "a", "bc.example")


def test_identifier_urls() -> None:
    """Only our own well-formed /id/ URLs yield an opaque part."""
    opaque = derive_opaque(KEY, "u", "s")
    assert opaque_from_url(BASE, BASE + "id/" + opaque) == opaque
    assert opaque_from_url(BASE, "https://evil.example/id/" + opaque) is None
    assert opaque_from_url(BASE, BASE + "id/" + opaque + "/x") is None
    assert opaque_from_url(BASE, BASE + "id/NOTVALID") is None


def _add_account(tx: Transaction, uid: str, email: str) -> int:
    tx.execute(
        "INSERT INTO accounts (uid, email, password_hash, created) VALUES (?, ?, ?, ?)",
        uid,
        email,
        "x",
        NOW,
    )
    return int(tx.scalar("SELECT id FROM accounts WHERE uid = ?", uid))


@async_test
async def test_persisted_and_resolved(storage_backend: AdbapiStorage) -> None:
    """An issued identifier is recorded and resolves to its account and sector."""
    ids = Identifiers(storage_backend, KEY, BASE)
    account_id = await storage_backend.run(_add_account, "uid-1", "a@example.com")
    site = await ids.for_site(account_id, "uid-1", "https://*.shop.example/", NOW)
    assert site.sector == "shop.example"
    assert site.opaque == derive_opaque(KEY, "uid-1", "shop.example")
    assert await ids.resolve(site.opaque) == site
    # Another realm of the same sector gets the same identifier.
    again = await ids.for_site(account_id, "uid-1", "http://shop.example/cart", NOW + 1)
    assert again == site
    assert await ids.resolve(derive_opaque(KEY, "uid-1", "elsewhere.example")) is None
    assert await ids.resolve("../../etc") is None


@async_test
async def test_lost_row_is_rebuilt_to_the_same_value(storage_backend: AdbapiStorage) -> None:
    """A lost mapping row comes back with the same identifier at the next sign-in."""
    ids = Identifiers(storage_backend, KEY, BASE)
    account_id = await storage_backend.run(_add_account, "uid-1", "a@example.com")
    site = await ids.for_site(account_id, "uid-1", "https://shop.example/", NOW)
    await storage_backend.run(lambda tx: tx.execute("DELETE FROM site_identifiers"))
    assert await ids.resolve(site.opaque) is None
    rebuilt = await ids.for_site(account_id, "uid-1", "https://shop.example/", NOW + 5)
    assert rebuilt == site
    assert await ids.resolve(site.opaque) == site


@async_test
async def test_two_people_two_sites_in_the_database(storage_backend: AdbapiStorage) -> None:
    """Two people at two sites hold four distinct identifiers."""
    ids = Identifiers(storage_backend, KEY, BASE)
    one = await storage_backend.run(_add_account, "uid-1", "a@example.com")
    two = await storage_backend.run(_add_account, "uid-2", "b@example.com")
    found = set()
    for account_id, uid in ((one, "uid-1"), (two, "uid-2")):
        for realm in ("https://a.example/", "https://b.example/"):
            found.add((await ids.for_site(account_id, uid, realm, NOW)).opaque)
    assert len(found) == 4


@async_test
async def test_changed_secret_is_detected(storage_backend: AdbapiStorage) -> None:
    """A stored identifier that disagrees with the derived one is refused, not overwritten."""
    account_id = await storage_backend.run(_add_account, "uid-1", "a@example.com")
    await Identifiers(storage_backend, KEY, BASE).for_site(
        account_id, "uid-1", "http://a.example/", NOW
    )
    other_key = Identifiers(storage_backend, b"z" * 32, BASE)
    with pytest.raises(IdentifierConflict):
        await other_key.for_site(account_id, "uid-1", "http://a.example/", NOW)


def _last_used(tx: Transaction, opaque: str) -> int:
    return int(tx.scalar("SELECT last_used FROM site_identifiers WHERE opaque = ?", opaque))


@async_test
async def test_last_used_is_written_at_its_resolution(storage_backend: AdbapiStorage) -> None:
    """A sign-in moves last_used forward only when it is LAST_USED_RESOLUTION old."""
    ids = Identifiers(storage_backend, KEY, BASE)
    account_id = await storage_backend.run(_add_account, "uid-1", "a@example.com")
    site = await ids.for_site(account_id, "uid-1", "https://shop.example/", NOW)
    assert await storage_backend.run(_last_used, site.opaque) == NOW
    later = NOW + LAST_USED_RESOLUTION - 1
    assert await ids.for_site(account_id, "uid-1", "https://shop.example/", later) == site
    assert await storage_backend.run(_last_used, site.opaque) == NOW
    later = NOW + LAST_USED_RESOLUTION
    assert await ids.for_site(account_id, "uid-1", "https://shop.example/", later) == site
    assert await storage_backend.run(_last_used, site.opaque) == later


@async_test
async def test_changed_secret_is_detected_on_a_stale_row(storage_backend: AdbapiStorage) -> None:
    """The conflict is found on the writing path too, and the row is left as it was."""
    account_id = await storage_backend.run(_add_account, "uid-1", "a@example.com")
    site = await Identifiers(storage_backend, KEY, BASE).for_site(
        account_id, "uid-1", "http://a.example/", NOW
    )
    other_key = Identifiers(storage_backend, b"z" * 32, BASE)
    with pytest.raises(IdentifierConflict):
        await other_key.for_site(
            account_id, "uid-1", "http://a.example/", NOW + 2 * LAST_USED_RESOLUTION
        )
    assert await storage_backend.run(_last_used, site.opaque) == NOW


@async_test
async def test_for_site_seen_uses_what_the_caller_read(storage_backend: AdbapiStorage) -> None:
    """Given a fresh recorded row, for_site_seen trusts it; given none, it records one."""
    ids = Identifiers(storage_backend, KEY, BASE)
    account_id = await storage_backend.run(_add_account, "uid-1", "a@example.com")
    realm = "https://shop.example/"
    assert await storage_backend.run(recorded, account_id, "shop.example") is None
    site = await ids.for_site_seen(account_id, "uid-1", realm, NOW, None)
    found = await storage_backend.run(recorded, account_id, "shop.example")
    assert found == (site.opaque, NOW)
    assert await ids.for_site_seen(account_id, "uid-1", realm, NOW + 1, found) == site
    # A row that disagrees is refused, as on the reading path.
    with pytest.raises(IdentifierConflict):
        await ids.for_site_seen(account_id, "uid-1", realm, NOW + 1, ("a" * 32, NOW))

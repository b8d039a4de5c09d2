"""The OpenID store on our database, on both backends."""

from __future__ import annotations

from openid.association import Association
from openid.store.nonce import SKEW

from twisted.internet.threads import deferToThread

from clickpass.openid.store import DatabaseOpenIDStore, cleanup
from clickpass.storage.sql import AdbapiStorage
from tests.support.deferreds import async_test

NOW = 1_700_000_000
SERVER = "http://localhost/|normal"


def assoc(handle: str, issued: int = NOW, lifetime: int = 600) -> Association:
    return Association(handle, b"s" * 20, issued, lifetime, "HMAC-SHA1")


@async_test
async def test_association_round_trip(storage_backend: AdbapiStorage) -> None:
    """A stored association comes back whole, by handle and as the newest for its server."""
    store = DatabaseOpenIDStore(storage_backend, clock=lambda: NOW)
    await deferToThread(store.storeAssociation, SERVER, assoc("{HMAC-SHA1}{1}{a}", NOW - 10))
    await deferToThread(store.storeAssociation, SERVER, assoc("{HMAC-SHA1}{2}{b}", NOW - 5))
    got = await deferToThread(store.getAssociation, SERVER, "{HMAC-SHA1}{1}{a}")
    assert got == assoc("{HMAC-SHA1}{1}{a}", NOW - 10)
    assert isinstance(got.secret, bytes)
    newest = await deferToThread(store.getAssociation, SERVER)
    assert newest is not None
    assert newest.handle == "{HMAC-SHA1}{2}{b}"
    assert await deferToThread(store.getAssociation, "http://localhost/|dumb", None) is None


@async_test
async def test_remove_association(storage_backend: AdbapiStorage) -> None:
    """Removing says whether there was something to remove, and it is gone."""
    store = DatabaseOpenIDStore(storage_backend, clock=lambda: NOW)
    await deferToThread(store.storeAssociation, SERVER, assoc("h1"))
    assert await deferToThread(store.removeAssociation, SERVER, "h1") is True
    assert await deferToThread(store.removeAssociation, SERVER, "h1") is False
    assert await deferToThread(store.getAssociation, SERVER, "h1") is None


@async_test
async def test_storing_again_replaces(storage_backend: AdbapiStorage) -> None:
    """Storing an association under an existing handle replaces it."""
    store = DatabaseOpenIDStore(storage_backend, clock=lambda: NOW)
    await deferToThread(store.storeAssociation, SERVER, assoc("h1", lifetime=10))
    await deferToThread(store.storeAssociation, SERVER, assoc("h1", lifetime=999))
    got = await deferToThread(store.getAssociation, SERVER, "h1")
    assert got is not None
    assert got.lifetime == 999


@async_test
async def test_expired_association_is_not_the_newest(storage_backend: AdbapiStorage) -> None:
    """Without a handle, an expired association is never returned."""
    store = DatabaseOpenIDStore(storage_backend, clock=lambda: NOW)
    await deferToThread(store.storeAssociation, SERVER, assoc("old", NOW - 1000, 100))
    assert await deferToThread(store.getAssociation, SERVER) is None


@async_test
async def test_nonce_is_used_once(storage_backend: AdbapiStorage) -> None:
    """A nonce is accepted once; the same (server, time, salt) again is a replay."""
    store = DatabaseOpenIDStore(storage_backend, clock=lambda: NOW)
    assert await deferToThread(store.useNonce, "http://op/", NOW, "abc") is True
    assert await deferToThread(store.useNonce, "http://op/", NOW, "abc") is False
    assert await deferToThread(store.useNonce, "http://op/", NOW, "abd") is True
    assert await deferToThread(store.useNonce, "http://other/", NOW, "abc") is True


@async_test
async def test_stale_or_future_nonce_is_refused(storage_backend: AdbapiStorage) -> None:
    """A nonce outside the allowed clock skew is refused without being stored."""
    store = DatabaseOpenIDStore(storage_backend, clock=lambda: NOW)
    assert await deferToThread(store.useNonce, "http://op/", NOW - SKEW - 1, "a") is False
    assert await deferToThread(store.useNonce, "http://op/", NOW + SKEW + 1, "a") is False
    assert await deferToThread(store.useNonce, "http://op/", NOW - SKEW + 1, "a") is True


@async_test
async def test_overlong_keys_are_refused_not_truncated(storage_backend: AdbapiStorage) -> None:
    """A salt longer than the column is refused, so two long salts never collide."""
    store = DatabaseOpenIDStore(storage_backend, clock=lambda: NOW)
    assert await deferToThread(store.useNonce, "http://op/", NOW, "x" * 65) is False
    assert await deferToThread(store.getAssociation, "u" * 300, "h") is None


@async_test
async def test_cleanup(storage_backend: AdbapiStorage) -> None:
    """Cleanup deletes stale nonces and expired associations, and keeps the rest."""
    early = DatabaseOpenIDStore(storage_backend, clock=lambda: NOW)
    await deferToThread(early.useNonce, "http://op/", NOW, "old")
    await deferToThread(early.storeAssociation, SERVER, assoc("short", NOW, 60))
    await deferToThread(early.storeAssociation, SERVER, assoc("long", NOW, 10 * SKEW))
    later = NOW + SKEW + 100
    await deferToThread(
        DatabaseOpenIDStore(storage_backend, clock=lambda: later).useNonce,
        "http://op/",
        later,
        "new",
    )
    assert await cleanup(storage_backend, later) == (1, 1)
    late_store = DatabaseOpenIDStore(storage_backend, clock=lambda: later)
    assert await deferToThread(late_store.getAssociation, SERVER, "long") is not None
    assert await deferToThread(late_store.getAssociation, SERVER, "short") is None
    # The stale nonce's row is gone; the fresh one still blocks a replay.
    assert await deferToThread(late_store.useNonce, "http://op/", later, "new") is False
    assert await deferToThread(late_store.cleanupNonces) == 0

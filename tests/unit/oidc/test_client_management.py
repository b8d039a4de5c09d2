"""
Managing a client in a migrated in-memory SQLite database: token
lifetimes (bounded, kept, used by the grants' tokens), secret rotation
with a grace period for the old secret, and the RFC 7592 update that may
not move a client to another host or way of authenticating.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from clickpass.oidc import clients, tokens
from clickpass.oidc.clients import ClientError, Lifetimes
from clickpass.partners import sites
from clickpass.storage import migrations
from clickpass.storage.sql import Dialect, DirectStorage
from tests.unit.partners.conftest import NOW, make_site

URI = "https://partner.example/cb"


@pytest.fixture
def storage() -> Iterator[DirectStorage]:
    storage = DirectStorage(sqlite3.connect(":memory:"), Dialect("sqlite"), "sqlite :memory:")
    for migration in migrations.MIGRATIONS:
        storage.run_blocking(migrations._apply, migration, NOW)
    try:
        yield storage
    finally:
        storage.close()


def made(storage: DirectStorage, **settings: object) -> tuple[clients.Client, str]:
    site = storage.run_blocking(sites.site_by_sector, "partner.example") or make_site(storage)
    checked = clients.check_settings([URI], **settings)  # type: ignore[arg-type]
    client, secret = storage.run_blocking(clients.create_client, site.public_id, checked, NOW)
    return client, secret


def test_lifetimes_are_bounded_and_named() -> None:
    """Whole seconds within bounds, known kinds, a refresh token outliving the access token."""
    assert clients.check_lifetimes({}) == Lifetimes()
    assert clients.check_lifetimes({"access_token": 300}).access_token == 300
    for bad, message in (
        ({"access_token": 59}, "from 60 to 86400"),
        ({"id_token": 86401}, "from 60 to 86400"),
        ({"refresh_token": 91 * 86400}, "refresh token lifetime"),
        ({"access_token": "600"}, "whole seconds"),
        ({"access_token": True}, "whole seconds"),
        ({"code": 60}, "unknown token lifetime"),
        ({"access_token": 7200, "refresh_token": 3600}, "at least the access token's"),
    ):
        with pytest.raises(ClientError, match=message):
            clients.check_lifetimes(bad)


def test_lifetimes_are_kept_and_given_to_the_tokens(storage: DirectStorage) -> None:
    """A client's lifetimes come back from the database; its tokens live that long."""
    client, _ = made(storage, lifetimes={"access_token": 600, "id_token": 300})
    assert client.lifetimes == Lifetimes(600, tokens.REFRESH_TOKEN_LIFETIME, 300)
    changed = storage.run_blocking(
        clients.set_lifetimes, client.client_id, Lifetimes(120, 3600, 60)
    )
    assert changed is not None and changed.lifetimes == Lifetimes(120, 3600, 60)
    back = storage.run_blocking(clients.set_lifetimes, client.client_id, Lifetimes())
    assert back is not None and back.lifetimes == Lifetimes()
    grant = tokens.Grant("g1", client.client_id, 1, "sub", ("openid",), frozenset(), "", NOW,
                         NOW, NOW + 120)  # fmt: skip
    storage.run_blocking(tokens.start_grant, grant, "code-1", URI, "")
    issued = storage.run_blocking(
        tokens.redeem_code, "code-1", client.client_id, URI, "", NOW, 120, 3600
    )
    assert isinstance(issued, tokens.Issued)
    access = storage.run_blocking(tokens.live_token, issued.access_token, NOW)
    refresh = storage.run_blocking(tokens.live_token, issued.refresh_token, NOW)
    assert access is not None and refresh is not None
    assert (access.expires, refresh.expires) == (NOW + 120, NOW + 3600)
    assert storage.run_blocking(tokens.live_token, issued.access_token, NOW + 120) is None


def test_a_rotated_secret_keeps_working_for_the_grace_period(storage: DirectStorage) -> None:
    """Both secrets work until the grace ends; then only the new one. Grace 0: at once."""
    client, old = made(storage)
    rotated, new = storage.run_blocking(clients.rotate_secret, client.client_id, 3600, NOW)
    assert new != old and rotated.previous_secret_expires == NOW + 3600
    assert rotated.authenticates(new, NOW) and rotated.authenticates(old, NOW + 3599)
    assert not rotated.authenticates(old, NOW + 3600)
    again, newest = storage.run_blocking(clients.rotate_secret, client.client_id, 0, NOW + 10)
    assert again.authenticates(newest, NOW + 10)
    assert not again.authenticates(new, NOW + 10) and not again.authenticates(old, NOW + 10)
    assert new not in repr(again.describe()) and clients.secret_hash(new) not in repr(again)


def test_only_a_secret_client_rotates_and_within_bounds(storage: DirectStorage) -> None:
    """A public client has no secret to rotate; the grace is 0 to 30 days; an unknown client."""
    client, _ = made(storage, public=True)
    with pytest.raises(ClientError, match="no secret to rotate"):
        storage.run_blocking(clients.rotate_secret, client.client_id, 60, NOW)
    confidential, _ = made(storage)
    with pytest.raises(ClientError, match="grace period"):
        storage.run_blocking(clients.rotate_secret, confidential.client_id, 31 * 86400, NOW)
    with pytest.raises(ClientError, match="no OpenID Connect client"):
        storage.run_blocking(clients.rotate_secret, "oidc_nosuch", 60, NOW)


def test_an_update_keeps_the_host_and_the_way_of_authenticating(storage: DirectStorage) -> None:
    """New URIs on the same host are taken; another host or type is refused, nothing changed."""
    client, secret = made(storage, lifetimes={"access_token": 600})
    settings = clients.check_settings(
        ["https://partner.example/other"], id_token_alg="ES256",
        backchannel_logout_uri="https://partner.example/bc",
    )  # fmt: skip
    updated = storage.run_blocking(clients.update_client, client.client_id, settings)
    assert updated.redirect_uris == ("https://partner.example/other",)
    assert updated.id_token_alg == "ES256" and updated.lifetimes.access_token == 600
    assert updated.backchannel_logout_uri == "https://partner.example/bc"
    assert updated.authenticates(secret, NOW)
    for bad, message in (
        (clients.check_settings(["https://elsewhere.example/cb"]), "must stay on partner.example"),
        (clients.check_settings([URI], public=True), "authenticates with client_secret"),
    ):
        with pytest.raises(ClientError, match=message):
            storage.run_blocking(clients.update_client, client.client_id, bad)
    assert storage.run_blocking(clients.client_by_id, client.client_id) == updated

"""
Sector identifier URIs without I/O: the settings they allow (redirect
URIs on several hosts, the sector their host), the document's checks, and
a private address refused before any connection is made.
"""

from __future__ import annotations

import json

import pytest

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from clickpass.oidc import clients
from clickpass.oidc.clients import ClientError
from clickpass.oidc.sector import SectorFetcher
from clickpass.openid.settings import OpenIDSettings

URIS = ["https://a.shop.example/cb", "https://b.shop.example/cb"]
SIU = "https://shop.example/sector.json"


def test_a_sector_identifier_uri_lets_redirect_uris_span_hosts() -> None:
    """Without one, two hosts are refused; with one, the sector is its host."""
    with pytest.raises(ClientError, match="one host"):
        clients.check_settings(URIS)
    settings = clients.check_settings(URIS, sector_identifier_uri=SIU)
    assert settings.sector == "shop.example" and settings.sector_identifier_uri == SIU
    assert clients.check_settings(URIS[:1]).sector == "a.shop.example"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://shop.example/sector.json", "must use https"),
        ("https://shop.example/sector.json#x", "fragment"),
        ("not a url", "sector identifier URI"),
    ],
)
def test_bad_sector_identifier_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(ClientError, match=message):
        clients.check_settings(URIS, sector_identifier_uri=uri)


def test_the_document_must_list_every_redirect_uri() -> None:
    """A JSON array of strings holding each redirect URI; anything else names the problem."""
    clients.check_sector_document(
        SIU, json.dumps([*URIS, "https://c.shop.example/"]).encode(), URIS
    )
    for body, message in (
        (b"<html>", "does not serve JSON"),
        (b"\xff\xfe", "does not serve JSON"),
        (json.dumps({"redirect_uris": URIS}).encode(), "JSON array"),
        (json.dumps([URIS[0], 1]).encode(), "JSON array"),
        (json.dumps(URIS[:1]).encode(), "does not list the redirect URI https://b.shop.example/cb"),
    ):
        with pytest.raises(ClientError, match=message):
            clients.check_sector_document(SIU, body, URIS)


def test_a_private_address_is_refused_without_connecting() -> None:
    """Unless the trial setting allows it, a loopback sector URI is not fetched at all."""
    reactor = MemoryReactorClock()
    fetcher = SectorFetcher(reactor, OpenIDSettings(allow_private_rp_discovery=False))
    settings = clients.check_settings(
        ["http://127.0.0.1:9/cb"], sector_identifier_uri="http://127.0.0.1:9/sector.json"
    )
    done = Deferred.fromCoroutine(fetcher.check(settings))
    failures: list[BaseException | None] = []

    def failed(failure: Failure) -> None:
        failures.append(failure.value)

    done.addErrback(failed)
    assert len(failures) == 1 and isinstance(failures[0], ClientError)
    assert "private address and was not fetched" in str(failures[0])
    assert reactor.tcpClients == []


def test_no_sector_identifier_uri_fetches_nothing() -> None:
    reactor = MemoryReactorClock()
    fetcher = SectorFetcher(reactor, OpenIDSettings())
    done = Deferred.fromCoroutine(fetcher.check(clients.check_settings(URIS[:1])))
    results: list[object] = []
    done.addCallback(results.append)
    assert results == [None] and reactor.tcpClients == []

"""
Sector identifier URIs (OpenID Connect Core 1.0 8.1): before a client
with a C{sector_identifier_uri} is stored, the JSON document there is
fetched and must list every one of its redirect URIs; the URI's host is
then the client's sector, so its pairwise subjects are the same on all
its redirect hosts.

The fetch goes through the OpenID provider's relying-party discovery
client rules (C{[openid]} C{allow_private_rp_discovery},
C{rp_discovery_timeout}): no redirect followed, a bounded body, and no
private or loopback address unless that setting allows it (a local
trial).

This module must never block the reactor, nor reach a private address
unless configured to.
"""

from __future__ import annotations

from typing import Any, Protocol

import treq
from twisted.web.client import Agent

from clickpass.oidc.clients import (
    MAX_SECTOR_DOCUMENT,
    ClientError,
    ClientSettings,
    check_sector_document,
)
from clickpass.openid.rp_discovery import (
    CheckedEndpointFactory,
    RefusedAddress,
    TimedOut,
    TooLarge,
    bounded_get,
    system_resolver,
    within,
)
from clickpass.openid.settings import OpenIDSettings


class SectorCheck(Protocol):
    """Checks a client's sector identifier URI's document (L{SectorFetcher})."""

    async def check(self, settings: ClientSettings) -> None:
        """Nothing when C{settings} has no such URI or its document lists every redirect URI."""
        ...


class SectorFetcher:
    """Fetches and checks sector identifier documents."""

    def __init__(self, reactor: Any, settings: OpenIDSettings, http: Any | None = None) -> None:
        self._reactor = reactor
        self._timeout = settings.rp_discovery_timeout
        if http is None:
            factory = CheckedEndpointFactory(
                reactor,
                system_resolver(reactor),
                settings.allow_private_rp_discovery,
                settings.rp_discovery_timeout,
            )
            http = treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, factory))
        self._http = http

    async def check(self, settings: ClientSettings) -> None:
        uri = settings.sector_identifier_uri
        if not uri:
            return
        try:
            status, _, body = await within(
                self._reactor,
                self._timeout,
                bounded_get(self._http, uri, MAX_SECTOR_DOCUMENT, {"Accept": ["application/json"]}),
            )
        except TimedOut:
            raise ClientError(f"the sector identifier URI {uri} did not answer in time") from None
        except RefusedAddress:
            raise ClientError(
                f"the sector identifier URI {uri} is on a private address and was not fetched"
            ) from None
        except TooLarge:
            raise ClientError(
                f"the sector identifier URI {uri} serves more than {MAX_SECTOR_DOCUMENT} bytes"
            ) from None
        except Exception:
            raise ClientError(f"the sector identifier URI {uri} could not be fetched") from None
        if status != 200:
            raise ClientError(f"the sector identifier URI {uri} answered HTTP {status}, not 200")
        check_sector_document(uri, body, settings.redirect_uris)

"""
Realm ownership: before a partner site gets API keys, webhooks or linked
identifiers, its admins prove they control the realm's host by publishing
the site's verification token at

    <realm scheme>://<realm host>[:port]/.well-known/clickpass-verification.txt

(for a wildcard realm, on the host without the C{*.}). The file may hold
other lines; one of them must be the token itself.

Fetched through treq on the reactor with the same rules as relying-party
discovery (L{clickpass.openid.rp_discovery}): one overall time limit, a
size limit, no redirects followed, and no connection to non-public
addresses unless C{[openid] allow_private_rp_discovery} says so (checked on
the resolved addresses at connect time).

This module must never fetch anything but that one well-known URL, and must
never raise for a failure of the partner's site: the result is a reason
sentence for the admin, or success. The sentence is kept as written (in
English, in the database); L{reread} finds the message it came from, so
the console shows it in the admin's language.
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import treq
from twisted.logger import Logger
from twisted.web.client import Agent

from clickpass.i18n import N_, Text
from clickpass.openid.rp_discovery import (
    CheckedEndpointFactory,
    RefusedAddress,
    Resolver,
    TimedOut,
    TooLarge,
    bounded_get,
    system_resolver,
    within,
)
from clickpass.openid.settings import OpenIDSettings

log = Logger()

WELL_KNOWN_PATH = "/.well-known/clickpass-verification.txt"
TOKEN_PREFIX = "clickpass-verify-"  # noqa: S105 - a public token's prefix, not a secret
MAX_BYTES = 4096


# Why a check failed, one sentence each (C{url}: where the token was looked for).
TIMED_OUT = N_("%(url)s did not answer in time.")
PRIVATE = N_("%(url)s is on a private address, which Clickpass does not fetch from.")
TOO_LARGE = N_("%(url)s is larger than %(limit)d bytes.")
UNREACHABLE = N_("%(url)s could not be reached.")
BAD_STATUS = N_("%(url)s answered with status %(status)d (expected 200 with the token).")
NO_TOKEN = N_("%(url)s does not contain this site's verification token.")
PROBLEMS = (TIMED_OUT, PRIVATE, TOO_LARGE, UNREACHABLE, BAD_STATUS, NO_TOKEN)
_PARAMETER = re.compile(r"%\((url|limit|status)\)[sd]")


def _pattern(message: str) -> re.Pattern[str]:
    parts = _PARAMETER.split(message)
    regex = ""
    for index, part in enumerate(parts):
        if index % 2 == 0:
            regex += re.escape(part)
        else:
            regex += r"(?P<url>\S+)" if part == "url" else rf"(?P<{part}>[0-9]+)"
    return re.compile(regex + r"\Z")


_PATTERNS = [(message, _pattern(message)) for message in PROBLEMS]


def reread(problem: str) -> str:
    """
    A kept problem sentence as the message it was written from (a L{Text},
    shown in the reader's language), or as it is when it is none of them
    (cut short by the column, or from an older release).
    """
    for message, pattern in _PATTERNS:
        found = pattern.match(problem)
        if found is not None:
            params: dict[str, object] = {
                name: int(value) if name != "url" else value
                for name, value in found.groupdict().items()
            }
            return Text(message, **params)
    return problem


def new_token() -> str:
    """A fresh verification token (public: it is meant to be published)."""
    return TOKEN_PREFIX + secrets.token_hex(16)


def verification_url(realm: str) -> str:
    """Where the token for C{realm} must be published."""
    parts = urlsplit(realm)
    host = parts.hostname or ""
    if host.startswith("*."):
        host = host[2:]
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, WELL_KNOWN_PATH, "", ""))


def token_published(body: bytes, token: str) -> bool:
    """True when one line of C{body} is exactly C{token} (surrounding spaces ignored)."""
    text = body.decode("utf-8", "replace")
    return any(line.strip() == token for line in text.splitlines())


class RealmVerifier:
    """Checks that a realm's host publishes a site's verification token."""

    def __init__(
        self,
        reactor: Any,
        settings: OpenIDSettings,
        http_client: Any | None = None,
        resolve: Resolver | None = None,
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        if http_client is None:
            factory = CheckedEndpointFactory(
                reactor,
                resolve or system_resolver(reactor),
                settings.allow_private_rp_discovery,
                settings.rp_discovery_timeout,
            )
            http_client = treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, factory))
        self._http: Any = http_client

    async def check(self, realm: str, token: str) -> str | None:
        """L{None} when the token is published for C{realm}; else why not, as one sentence."""
        url = verification_url(realm)
        try:
            status, body = await within(
                self._reactor, self._settings.rp_discovery_timeout, self._fetch(url)
            )
        except TimedOut:
            return Text(TIMED_OUT, url=url)
        except Exception as e:
            if isinstance(e, RefusedAddress):
                return Text(PRIVATE, url=url)
            if isinstance(e, TooLarge):
                return Text(TOO_LARGE, url=url, limit=MAX_BYTES)
            log.info("realm verification fetch of {url} failed: {error}", url=url, error=str(e))
            return Text(UNREACHABLE, url=url)
        if status != 200:
            return Text(BAD_STATUS, url=url, status=status)
        if not token_published(body, token):
            return Text(NO_TOKEN, url=url)
        return None

    async def _fetch(self, url: str) -> tuple[int, bytes]:
        status, _headers, body = await bounded_get(self._http, url, MAX_BYTES)
        return status, body

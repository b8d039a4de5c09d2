"""
Validation of the C{[upstream]} configuration section: one clear line per
mistake, naming the provider and key.

This module must never touch the network or the files it names (the
configuration loader checks files separately).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from clickpass.upstream.settings import UpstreamProviderSettings, UpstreamSettings

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
MICROSOFT_TENANT = re.compile(r"^[A-Za-z0-9.-]{1,128}$")


def _https(where: str, url: str, error: type[Exception]) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise error(f"{where}: {url!r} must be an https:// URL")


def check_provider(where: str, provider: UpstreamProviderSettings, error: type[Exception]) -> None:
    """Raise C{error} with one line if this provider's table cannot be used."""
    if not provider.client_id:
        raise error(f"{where} client_id: the client id registered at the provider is needed")
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
        value = getattr(provider, key)
        if value:
            _https(f"{where} {key}", value, error)
    if provider.kind == "oidc" and not provider.issuer:
        raise error(f"{where} issuer: an oidc provider needs its issuer URL")
    if provider.kind == "oauth2":
        for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
            if not getattr(provider, key):
                raise error(f"{where} {key}: an oauth2 provider needs it")
        if not provider.subject_field:
            raise error(
                f"{where} subject_field: an oauth2 provider needs the profile field "
                "holding the stable user id (e.g. id)"
            )
    if provider.kind == "microsoft" and not MICROSOFT_TENANT.match(provider.tenant):
        raise error(
            f"{where} tenant: {provider.tenant!r} must be common, organizations, consumers "
            "or a tenant id"
        )
    if provider.kind in ("google", "microsoft", "facebook") and provider.issuer:
        raise error(f"{where} issuer: the {provider.kind} preset sets its own issuer")


def check_upstream_settings(settings: UpstreamSettings, error: type[Exception]) -> None:
    """Raise C{error} with one line if the C{[upstream]} section cannot be used."""
    if settings.timeout <= 0:
        raise error("[upstream] timeout: must be more than 0")
    if settings.max_response_bytes < 1024:
        raise error("[upstream] max_response_bytes: must be at least 1024")
    if settings.clock_skew < 0 or settings.clock_skew > 600:
        raise error("[upstream] clock_skew: must be between 0 and 600 seconds")
    if settings.jwks_refetch_interval < 0:
        raise error("[upstream] jwks_refetch_interval: must be 0 or more")
    if settings.pending_lifetime < 60:
        raise error("[upstream] pending_lifetime: must be at least 60 seconds")
    seen: set[str] = set()
    for i, provider in enumerate(settings.provider):
        where = f"[[upstream.provider]] #{i + 1}"
        if not NAME_PATTERN.match(provider.name):
            raise error(
                f"{where} name: {provider.name!r} must be 1-32 lower-case letters, digits or dashes"
            )
        where = f"[[upstream.provider]] {provider.name}"
        if provider.name in seen:
            raise error(f"{where}: the name is used by two providers")
        seen.add(provider.name)
        check_provider(where, provider, error)

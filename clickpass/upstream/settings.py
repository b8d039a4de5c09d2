"""
Upstream sign-in's section, [upstream] with its [[upstream.provider]]
tables: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal
from urllib.parse import urlsplit

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
MICROSOFT_TENANT = re.compile(r"^[A-Za-z0-9.-]{1,128}$")


@dataclasses.dataclass(frozen=True)
class UpstreamProviderSettings:
    """[[upstream.provider]]: one upstream sign-in provider (OpenID Connect or OAuth 2)."""

    name: str = dataclasses.field(
        default="",
        metadata=_doc("Short id used in URLs and the database, e.g. google (a-z, 0-9, -)."),
    )
    kind: Literal["oidc", "oauth2", "google", "microsoft", "facebook"] = dataclasses.field(
        default="oidc",
        metadata=_doc('"oidc", "oauth2", or a preset: "google", "microsoft", "facebook".'),
    )
    display_name: str = dataclasses.field(
        default="", metadata=_doc("Button label. Default: from the preset or the name.")
    )
    client_id: str = dataclasses.field(
        default="", metadata=_doc("Client id registered at the provider.")
    )
    client_secret_file: str = dataclasses.field(
        default="", metadata=_doc("File holding the client secret (first line); empty: none.")
    )
    issuer: str = dataclasses.field(
        default="",
        metadata=_doc("oidc: issuer URL (discovery at <issuer>/.well-known/openid-configuration)."),
    )
    tenant: str = dataclasses.field(
        default="common",
        metadata=_doc("microsoft: common, organizations, consumers, or a tenant id."),
    )
    scopes: list[str] = dataclasses.field(
        default_factory=list, metadata=_doc("Scopes to ask for. Default: from the kind.")
    )
    authorization_endpoint: str = dataclasses.field(
        default="", metadata=_doc("oauth2: authorization URL (oidc: overrides discovery).")
    )
    token_endpoint: str = dataclasses.field(
        default="", metadata=_doc("oauth2: token URL (oidc: overrides discovery).")
    )
    userinfo_endpoint: str = dataclasses.field(
        default="", metadata=_doc("oauth2: profile URL (oidc: overrides discovery).")
    )
    token_auth: Literal["", "client_secret_basic", "client_secret_post", "none"] = (
        dataclasses.field(
            default="",
            metadata=_doc("How the client authenticates at the token endpoint. Default: by kind."),
        )
    )
    subject_field: str = dataclasses.field(
        default="", metadata=_doc("oauth2: profile field holding the stable user id.")
    )
    email_field: str = dataclasses.field(
        default="", metadata=_doc("oauth2: profile field holding the email.")
    )
    email_verified_field: str = dataclasses.field(
        default="",
        metadata=_doc("oauth2: profile field true when the email is verified (empty: never)."),
    )
    name_field: str = dataclasses.field(
        default="", metadata=_doc("oauth2: profile field holding the person's name.")
    )


@dataclasses.dataclass(frozen=True)
class UpstreamSettings:
    """[upstream]: sign-in through OpenID Connect / OAuth 2 providers."""

    ca_bundle: str = dataclasses.field(
        default="",
        metadata=_doc("PEM file of CA certificates trusted for providers. Default: the system's."),
    )
    timeout: float = dataclasses.field(
        default=10.0, metadata=_doc("Seconds allowed for each request to a provider.")
    )
    max_response_bytes: int = dataclasses.field(
        default=512 * 1024, metadata=_doc("Largest response read from a provider.")
    )
    clock_skew: int = dataclasses.field(
        default=120, metadata=_doc("Seconds of clock difference tolerated in ID tokens.")
    )
    jwks_refetch_interval: int = dataclasses.field(
        default=60,
        metadata=_doc("Least seconds between refetches of a provider's keys on an unknown key id."),
    )
    metadata_lifetime: int = dataclasses.field(
        default=3600, metadata=_doc("Seconds a provider's discovery document is cached.")
    )
    pending_lifetime: int = dataclasses.field(
        default=600, metadata=_doc("Seconds a person has to finish signing in at a provider.")
    )
    provider: list[UpstreamProviderSettings] = dataclasses.field(
        default_factory=list, metadata=_doc("The providers ([[upstream.provider]] tables).")
    )

    def check(self) -> None:
        """Raise L{ConfigError} with one line if the C{[upstream]} section cannot be used."""
        settings = self
        if settings.timeout <= 0:
            raise ConfigError("[upstream] timeout: must be more than 0")
        if settings.max_response_bytes < 1024:
            raise ConfigError("[upstream] max_response_bytes: must be at least 1024")
        if settings.clock_skew < 0 or settings.clock_skew > 600:
            raise ConfigError("[upstream] clock_skew: must be between 0 and 600 seconds")
        if settings.jwks_refetch_interval < 0:
            raise ConfigError("[upstream] jwks_refetch_interval: must be 0 or more")
        if settings.pending_lifetime < 60:
            raise ConfigError("[upstream] pending_lifetime: must be at least 60 seconds")
        seen: set[str] = set()
        for i, provider in enumerate(settings.provider):
            where = f"[[upstream.provider]] #{i + 1}"
            if not NAME_PATTERN.match(provider.name):
                raise ConfigError(
                    f"{where} name: {provider.name!r} must be 1-32 lower-case letters, "
                    "digits or dashes"
                )
            where = f"[[upstream.provider]] {provider.name}"
            if provider.name in seen:
                raise ConfigError(f"{where}: the name is used by two providers")
            seen.add(provider.name)
            _check_provider(where, provider)


def _https(where: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} must be an https:// URL")


def _check_provider(where: str, provider: UpstreamProviderSettings) -> None:
    """Raise L{ConfigError} with one line if this provider's table cannot be used."""
    if not provider.client_id:
        raise ConfigError(f"{where} client_id: the client id registered at the provider is needed")
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
        value = getattr(provider, key)
        if value:
            _https(f"{where} {key}", value)
    if provider.kind == "oidc" and not provider.issuer:
        raise ConfigError(f"{where} issuer: an oidc provider needs its issuer URL")
    if provider.kind == "oauth2":
        for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
            if not getattr(provider, key):
                raise ConfigError(f"{where} {key}: an oauth2 provider needs it")
        if not provider.subject_field:
            raise ConfigError(
                f"{where} subject_field: an oauth2 provider needs the profile field "
                "holding the stable user id (e.g. id)"
            )
    if provider.kind == "microsoft" and not MICROSOFT_TENANT.match(provider.tenant):
        raise ConfigError(
            f"{where} tenant: {provider.tenant!r} must be common, organizations, consumers "
            "or a tenant id"
        )
    if provider.kind in ("google", "microsoft", "facebook") and provider.issuer:
        raise ConfigError(f"{where} issuer: the {provider.kind} preset sets its own issuer")


__all__ = ["UpstreamProviderSettings", "UpstreamSettings"]

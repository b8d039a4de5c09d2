"""
Upstream sign-in's section, [upstream] with its [[upstream.provider]]
tables: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from clickpass.settings_base import doc as _doc


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


__all__ = ["UpstreamProviderSettings", "UpstreamSettings"]

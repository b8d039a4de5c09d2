"""
Dynamic client registration: OpenID Connect Dynamic Client Registration
1.0 / RFC 7591 at C{POST /oidc/register}, and the RFC 7592 management
endpoint C{/oidc/register/<client_id>} (read, update and delete).

The initial access token is a partner site's API key
(C{Authorization: Bearer cpk_...}): the client belongs to that site, whose
realm must be verified, and every redirect URI must lie in that realm. The
response holds the client's secret (if any) and a registration access
token, each shown once and stored only as a hash.

This module must never register a client for a site whose key was not
presented, nor outside its verified realm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from openid.server.trustroot import TrustRoot

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.oidc import clients, tokens
from clickpass.oidc.clients import Client, ClientError
from clickpass.oidc.sector import SectorCheck
from clickpass.partners import sites
from clickpass.web.app import WebApp

MAX_BODY = 16 * 1024
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")

log = Logger()


class RegistrationError(Exception):
    """An RFC 7591 error answer."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def _json(request: Request, status: int, body: Mapping[str, Any] | None) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"cache-control", b"no-store")
    if body is None:
        return b""
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8")


def _bearer(request: Request) -> str:
    header = request.getHeader(b"authorization") or b""
    if header[:7].lower() != b"bearer " or len(header) > 1024:
        raise RegistrationError(401, "invalid_token", "send a bearer token")
    return header[7:].strip().decode("ascii", "replace")


def _metadata(request: Request) -> dict[str, Any]:
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        raise RegistrationError(400, "invalid_client_metadata", "the body must be JSON")
    assert request.content is not None
    request.content.seek(0)
    raw = request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise RegistrationError(400, "invalid_client_metadata", "the body is too large")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RegistrationError(400, "invalid_client_metadata", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise RegistrationError(400, "invalid_client_metadata", "the body must be an object")
    return body


def _strings(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistrationError(400, "invalid_client_metadata", f"{name} must be strings")
    return value


def settings_of(body: Mapping[str, Any], realm: str) -> clients.ClientSettings:
    """The client settings of RFC 7591 metadata, its redirect URIs in C{realm}."""
    uris = _strings(body, "redirect_uris")
    trust_root = TrustRoot.parse(realm)
    for uri in uris:
        if trust_root is None or not trust_root.validateURL(uri):
            raise RegistrationError(
                400, "invalid_redirect_uri", f"{uri} is not in the site's realm {realm}"
            )
    method = body.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise RegistrationError(
            400, "invalid_client_metadata", "unknown token_endpoint_auth_method"
        )
    if not set(_strings(body, "response_types") or ["code"]) <= {"code"} or not set(
        _strings(body, "grant_types") or ["authorization_code"]
    ) <= {"authorization_code", "refresh_token"}:
        raise RegistrationError(400, "invalid_client_metadata", "only the code flow is offered")
    scope = body.get("scope", "openid email profile")
    if not isinstance(scope, str):
        raise RegistrationError(400, "invalid_client_metadata", "scope must be a string")
    sector_uri = body.get("sector_identifier_uri", "")
    if not isinstance(sector_uri, str):
        raise RegistrationError(
            400, "invalid_client_metadata", "sector_identifier_uri must be a string"
        )
    backchannel = body.get("backchannel_logout_uri", "")
    session_required = body.get("backchannel_logout_session_required", False)
    if not isinstance(backchannel, str) or not isinstance(session_required, bool):
        raise RegistrationError(
            400,
            "invalid_client_metadata",
            "backchannel_logout_uri must be a string, backchannel_logout_session_required "
            "a boolean",
        )
    try:
        return clients.check_settings(
            uris,
            public=method == "none",
            id_token_alg=str(body.get("id_token_signed_response_alg", "RS256")),
            scopes=[s for s in scope.split(" ") if s in clients.SCOPES],
            jwks=body.get("jwks") if method == "private_key_jwt" else None,
            post_logout_uris=_strings(body, "post_logout_redirect_uris"),
            backchannel_logout_uri=backchannel,
            backchannel_logout_session_required=session_required,
            sector_identifier_uri=sector_uri,
            client_name=body.get("client_name", ""),
        )
    except ClientError as e:
        error = "invalid_redirect_uri" if "redirect URI" in str(e) else "invalid_client_metadata"
        raise RegistrationError(400, error, str(e)) from None


def client_metadata(client: Client, issuer: str) -> dict[str, Any]:
    """The client as RFC 7591 metadata (never its secret)."""
    method = {"none": "none", "private_key_jwt": "private_key_jwt"}.get(
        client.auth_method, "client_secret_basic"
    )
    metadata: dict[str, Any] = {
        "client_id": client.client_id,
        "client_id_issued_at": client.created,
        "redirect_uris": list(client.redirect_uris),
        "token_endpoint_auth_method": method,
        "id_token_signed_response_alg": client.id_token_alg,
        "scope": " ".join(sorted(client.scopes)),
        "response_types": ["code"],
        "grant_types": ["authorization_code", "refresh_token"],
        "subject_type": "pairwise",
        "post_logout_redirect_uris": list(client.post_logout_uris),
        "registration_client_uri": f"{issuer}/oidc/register/{client.client_id}",
    }
    if client.client_name:
        metadata["client_name"] = client.client_name
    if client.jwks:
        metadata["jwks"] = client.jwks
    if client.sector_identifier_uri:
        metadata["sector_identifier_uri"] = client.sector_identifier_uri
    if client.backchannel_logout_uri:
        metadata["backchannel_logout_uri"] = client.backchannel_logout_uri
        metadata["backchannel_logout_session_required"] = client.backchannel_logout_session_required
    return metadata


class Registration:
    """The registration endpoint and its management endpoint."""

    def __init__(self, app: WebApp, issuer: str, sector: SectorCheck) -> None:
        self.app = app
        self.issuer = issuer
        self.sector = sector

    async def _check_sector(self, settings: clients.ClientSettings) -> None:
        try:
            await self.sector.check(settings)
        except ClientError as e:
            raise RegistrationError(400, "invalid_client_metadata", str(e)) from None

    def _now(self) -> int:
        return int(self.app.reactor.seconds())

    def _error(self, request: Request, e: RegistrationError) -> bytes:
        if e.status == 401:
            request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
        return _json(request, e.status, {"error": e.error, "error_description": e.description})

    async def register(self, request: Request) -> bytes:
        try:
            key = _bearer(request)
            site = await self.app.storage.run(sites.site_for_key, sites.key_hash(key), self._now())
            if site is None:
                raise RegistrationError(401, "invalid_token", "the API key is not valid")
            if not site.verified:
                raise RegistrationError(
                    403, "access_denied", "the site's realm is not verified yet"
                )
            settings = settings_of(_metadata(request), site.realm)
            await self._check_sector(settings)
        except RegistrationError as e:
            return self._error(request, e)
        client, secret = await self.app.storage.run(
            clients.create_client, site.public_id, settings, self._now()
        )
        token = tokens.new_secret()
        await self.app.storage.run(
            clients.set_registration_token, client.client_id, tokens.hashed(token)
        )
        log.info("oidc client {client} registered by site {site}", client=client.client_id,
                 site=site.public_id)  # fmt: skip
        body = {**client_metadata(client, self.issuer), "registration_access_token": token}
        if secret:
            body.update(client_secret=secret, client_secret_expires_at=0)
        return _json(request, 201, body)

    async def _managed(self, request: Request, client_id: str) -> Client:
        token = _bearer(request)
        client = await self.app.storage.run(
            clients.client_by_registration, client_id, tokens.hashed(token)
        )
        if client is None:
            raise RegistrationError(401, "invalid_token", "the registration token is not valid")
        return client

    async def read(self, request: Request, client_id: str) -> bytes:
        try:
            client = await self._managed(request, client_id)
        except RegistrationError as e:
            return self._error(request, e)
        return _json(request, 200, client_metadata(client, self.issuer))

    async def update(self, request: Request, client_id: str) -> bytes:
        """
        RFC 7592 2.2: the client's metadata replaced by the body's (what it
        omits goes back to its default). Its id, type, way of
        authenticating and host cannot change; a C{client_secret} given
        must be its secret.
        """
        try:
            client = await self._managed(request, client_id)
            body = _metadata(request)
            if body.get("client_id") != client.client_id:
                raise RegistrationError(
                    400, "invalid_client_metadata", "client_id must be the client's own"
                )
            given = body.get("client_secret")
            if given is not None and (
                not isinstance(given, str) or not client.authenticates(given, self._now())
            ):
                raise RegistrationError(
                    400, "invalid_client_metadata", "client_secret is not the client's"
                )
            settings = settings_of(body, client.realm)
            await self._check_sector(settings)
            updated = await self.app.storage.run(clients.update_client, client_id, settings)
        except RegistrationError as e:
            return self._error(request, e)
        except ClientError as e:
            return self._error(request, RegistrationError(400, "invalid_client_metadata", str(e)))
        log.info("oidc client {client} updated", client=client_id)
        return _json(request, 200, client_metadata(updated, self.issuer))

    async def delete(self, request: Request, client_id: str) -> bytes:
        try:
            client = await self._managed(request, client_id)
        except RegistrationError as e:
            return self._error(request, e)
        await self.app.storage.run(clients.remove_client, client.client_id, self._now())
        return _json(request, 204, None)

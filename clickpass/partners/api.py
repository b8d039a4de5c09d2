"""
The partner API: JSON over HTTPS, authenticated with a site's API key
(C{Authorization: Bearer cpk_...}). See docs/partner-api.md and
docs/partner-api.openapi.yaml.

A key sees only its own site: anything of another site is answered 404,
exactly as if it did not exist. Errors are JSON objects
C{{"error": {"code": ..., "message": ...}}}; a missing, unknown or
revoked key gets 401. Never answer with HTML or a traceback under /api/.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts import events
from clickpass.openid.identifiers import OPAQUE_PATTERN
from clickpass.partners import sites
from clickpass.storage.sql import Transaction
from clickpass.web.app import WebApp
from clickpass.web.routing import ErrorPage, HTTPError, Router

log = Logger()

PREFIX = "/api/v1"
MAX_BODY = 64 * 1024
MAX_PAGE = 500
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal",
}


# PATCH /site's one boolean setting: everyone signing in must give a second factor.
REQUIRE_SECOND_FACTOR = "require_second_factor"
# The settings PATCH /site may change, and the JSON type each must have
# (SiteChanges in docs/partner-api.openapi.yaml).
SETTING_TYPES: dict[str, type] = {
    "name": str,
    "logo_url": str,
    "realm": str,
    "return_to_urls": list,
    "registration_url": str,
    "connect_url": str,
    "requested_fields": list,
    "required_fields": list,
    "webhook_url": str,
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def check_types(changes: dict[str, Any]) -> None:
    """
    Refuse (L{ApiError} 422, naming the setting) a value whose JSON type is
    not the one the OpenAPI document gives: a string, or an array of strings.
    Nothing is ever converted: C{["a"]} for a name is an error, not C{"['a']"}.
    """
    for name in sorted(changes):
        value = changes[name]
        if SETTING_TYPES[name] is str:
            if not isinstance(value, str):
                raise ApiError(422, f"{name} must be a string, not {_json_type(value)}.")
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ApiError(422, f"{name} must be an array of strings.")
        try:
            for text in [value] if isinstance(value, str) else value:
                sites.plain_text(text, name)
        except sites.SiteError as e:
            raise ApiError(422, str(e)) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def parse_json(raw: bytes) -> Any:
    """
    Standard JSON only: Python's own extensions (NaN, Infinity) and numbers
    too large for a float (1e999, read as infinity) are refused with
    L{ValueError}.
    """
    return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message


def send_json(request: Request, status: int, document: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return json.dumps(document, sort_keys=True).encode("utf-8") + b"\n"


def send_error(request: Request, status: int, message: str, code: str | None = None) -> bytes:
    if status == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="clickpass partner api"')
    return send_json(
        request, status, {"error": {"code": code or CODES.get(status, "error"), "message": message}}
    )


def json_errors(previous: ErrorPage) -> ErrorPage:
    """The router's error page, answering in JSON under /api/."""

    def error_page(request: Request, status: int, message: str) -> bytes:
        if request.path.startswith(b"/api/"):
            return send_error(request, status, message)
        return previous(request, status, message)

    return error_page


Handler = Callable[..., Awaitable[bytes]]


class PartnerApi:
    def __init__(self, app: WebApp) -> None:
        self.app = app

    def _now(self) -> int:
        return int(self.app.reactor.seconds())

    def _identifier(self, opaque: str) -> str:
        return self.app.settings.base_url + "id/" + opaque

    def _link_json(self, link: sites.Link) -> dict[str, Any]:
        return {
            "identifier": self._identifier(link.opaque),
            "id": link.opaque,
            "outcome": link.outcome,
            "created": link.created,
            "last_signin": link.last_signin,
        }

    async def _site(self, request: Request) -> sites.Site:
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key.startswith(sites.KEY_PREFIX) or len(key) > 200:
            raise ApiError(401, "Send your API key as: Authorization: Bearer cpk_...")
        site = await self.app.storage.run(sites.site_for_key, sites.key_hash(key), self._now())
        if site is None:
            raise ApiError(401, "This API key is not valid (unknown or revoked).")
        if not site.verified:
            raise ApiError(
                403,
                f"The site's ownership of {site.sector} is not verified yet; verify it in the "
                "partner console first.",
                "site_not_verified",
            )
        return site

    def _body(self, request: Request) -> dict[str, Any]:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type != b"application/json":
            raise ApiError(415, "Send the request body as application/json.")
        assert request.content is not None
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise ApiError(413, "The request body is too large.")
        try:
            document = parse_json(raw)
        except RecursionError:
            raise ApiError(400, "The request body is not valid JSON: nested too deeply.") from None
        except ValueError as e:
            # UnicodeDecodeError is a ValueError too; the reason stays on one line.
            reason = " ".join(str(e).split())[:200]
            raise ApiError(400, f"The request body is not valid JSON: {reason}.") from None
        if not isinstance(document, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return document

    def wrap(self, handler: Handler) -> Handler:
        async def run(request: Request, **params: Any) -> bytes:
            try:
                return await handler(request, **params)
            except ApiError as e:
                return send_error(request, e.status, e.message, e.code)
            except HTTPError as e:
                return send_error(request, e.status, e.message)

        return run

    # Site settings.

    async def get_site(self, request: Request) -> bytes:
        site = await self._site(request)
        return send_json(request, 200, site.to_json())

    async def patch_site(self, request: Request) -> bytes:
        site = await self._site(request)
        changes = self._body(request)
        unknown = sorted(set(changes) - set(SETTING_TYPES) - {REQUIRE_SECOND_FACTOR})
        if unknown:
            shown = ", ".join(ascii(u)[1:-1] for u in unknown)[:200]
            settable = sorted({*SETTING_TYPES, REQUIRE_SECOND_FACTOR})
            raise ApiError(
                422,
                f"Unknown or read-only setting {shown} (settable: {', '.join(settable)}).",
            )
        # A boolean, apart from the settings checked together below.
        required = changes.pop(REQUIRE_SECOND_FACTOR, None)
        if required is not None and not isinstance(required, bool):
            raise ApiError(
                422, f"{REQUIRE_SECOND_FACTOR} must be true or false, not {_json_type(required)}."
            )
        check_types(changes)
        merged = {**site.to_json(), **changes}
        now = self._now()

        def update(tx: Transaction) -> sites.Site:
            if required is not None:
                sites.set_require_second_factor(tx, site.id, required, now)
            return sites.update_site(tx, site, settings, now)

        try:
            settings = sites.check_settings(merged)
            updated = await self.app.storage.run(update)
        except sites.SiteError as e:
            raise ApiError(422, str(e)) from None
        return send_json(request, 200, updated.to_json())

    # Linked identifiers.

    async def list_identifiers(self, request: Request) -> bytes:
        site = await self._site(request)
        after = self.app.form(request, "after")
        try:
            limit = int(self.app.form(request, "limit", "100"))
        except ValueError:
            raise ApiError(400, "limit must be a whole number.") from None
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError(400, f"limit must be between 1 and {MAX_PAGE}.")
        links = await self.app.storage.run(sites.list_links, site.id, after, limit + 1)
        more = len(links) > limit
        links = links[:limit]
        document: dict[str, Any] = {"identifiers": [self._link_json(link) for link in links]}
        document["next_after"] = links[-1].opaque if more and links else None
        return send_json(request, 200, document)

    async def _link(self, site: sites.Site, opaque: str) -> sites.Link:
        link = None
        if OPAQUE_PATTERN.match(opaque):
            link = await self.app.storage.run(sites.link_by_opaque, site.id, opaque)
        if link is None:
            raise ApiError(404, "No person with this identifier is linked to your site.")
        return link

    async def get_identifier(self, request: Request, opaque: str) -> bytes:
        site = await self._site(request)
        return send_json(request, 200, self._link_json(await self._link(site, opaque)))

    async def delete_identifier(self, request: Request, opaque: str) -> bytes:
        site = await self._site(request)
        link = await self._link(site, opaque)
        identifier = self._identifier(opaque)
        now = self._now()

        def unlink(tx: Transaction) -> bool:
            if not sites.unlink(tx, site, link, identifier, "partner", now):
                return False
            # The site's approval went too: the person's log says why it asks again.
            events.record(tx, link.account_id, "site_unlinked", now, detail=site.display_name)
            return True

        done = await self.app.storage.run(unlink)
        if not done:
            raise ApiError(404, "No person with this identifier is linked to your site.")
        log.info("partner {site} unlinked an identifier", site=site.public_id)
        return send_json(request, 200, {"unlinked": identifier})

    # Deletion requests.

    def _boolean(self, request: Request, name: str) -> bool:
        """A boolean query parameter (absent: false); any other text is a 400 naming it."""
        value = self.app.form(request, name).lower()
        if value in ("", "false", "0"):
            return False
        if value in ("true", "1"):
            return True
        raise ApiError(400, f"{name} must be true or false.")

    async def list_deletions(self, request: Request) -> bytes:
        site = await self._site(request)
        include = self._boolean(request, "include_completed")
        found = await self.app.storage.run(sites.deletion_requests, site.id, include)
        return send_json(
            request,
            200,
            {
                "deletion_requests": [
                    {
                        "id": d.public_id,
                        "identifier": self._identifier(d.subject),
                        "requested": d.requested,
                        "completed": d.completed or None,
                    }
                    for d in found
                ]
            },
        )

    async def complete_deletion(self, request: Request, request_id: str) -> bytes:
        site = await self._site(request)
        done = await self.app.storage.run(
            sites.complete_deletion, site.id, request_id[:40], self._now()
        )
        if done is None:
            raise ApiError(404, "There is no such deletion request for your site.")
        return send_json(request, 200, {"id": request_id, "completed": True})


def install(app: WebApp, router: Router) -> PartnerApi:
    api = PartnerApi(app)
    router.error_page = json_errors(router.error_page)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/site", api.get_site),
        ("PATCH", "/site", api.patch_site),
        ("GET", "/identifiers", api.list_identifiers),
        ("GET", "/identifiers/{opaque}", api.get_identifier),
        ("DELETE", "/identifiers/{opaque}", api.delete_identifier),
        ("GET", "/deletion-requests", api.list_deletions),
        ("POST", "/deletion-requests/{request_id}/complete", api.complete_deletion),
    ]
    for method, path, handler in routes:
        router.add(method, PREFIX + path, api.wrap(handler))
    return api

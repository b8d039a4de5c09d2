"""
RP-Initiated Logout 1.0: C{/oidc/logout}, the provider's
C{end_session_endpoint}.

A client sends the person here with the ID token it holds
(C{id_token_hint}), and may ask to have them sent back to one of its
registered post-logout URIs (exact match) with its C{state}. When the
hint is a token Clickpass signed for the person signed in now, they are
signed out at once; otherwise (no hint, or another person's) they are
asked first, so that a link cannot sign anyone out.

This module must never redirect to an address the client did not
register for logout, and never trust a hint it did not sign.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.i18n import N_, Text
from clickpass.oidc import clients
from clickpass.oidc.authorize import MAX_STATE, redirect_url
from clickpass.oidc.clients import Client
from clickpass.oidc.keys import SigningKeys, UnknownAlgorithm, check_algorithm
from clickpass.openid.identifiers import derive_opaque
from clickpass.web.app import WebApp
from clickpass.web.routing import HTTPError

MAX_HINT = 4096

log = Logger()


def verify_hint(token: str, jwks: Mapping[str, Any], issuer: str) -> dict[str, Any]:
    """
    The claims of an ID token Clickpass signed (an expired one too: a
    person may sign out long after signing in); L{HTTPError} otherwise.
    """
    try:
        header = jwt.get_unverified_header(token)
        alg = check_algorithm(str(header.get("alg")))
        found = jwt.PyJWKSet.from_dict(dict(jwks))
        key = next(k for k in found.keys if k.key_id == header.get("kid"))
        if key.algorithm_name != alg:
            raise jwt.InvalidAlgorithmError(alg)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            issuer=issuer,
            options={"verify_exp": False, "verify_aud": False, "require": ["sub", "aud"]},
        )
    except (jwt.PyJWTError, UnknownAlgorithm, StopIteration):
        raise HTTPError(
            400, N_("The site sent a sign-out request with an ID token Clickpass did not sign.")
        ) from None
    return claims


class Logout:
    """The end_session_endpoint."""

    def __init__(self, app: WebApp, keys: SigningKeys, issuer: str, subject_key: bytes) -> None:
        self.app = app
        self.keys = keys
        self.issuer = issuer
        self._subject_key = subject_key

    def _param(self, request: Request, name: str, limit: int) -> str:
        values = (request.args or {}).get(name.encode("ascii")) or []
        if len(values) > 1:
            raise HTTPError(400, Text(N_("The sign-out request repeats %(name)s."), name=name))
        if not values:
            return ""
        if len(values[0]) > limit:
            raise HTTPError(
                400, Text(N_("The sign-out request's %(name)s is too long."), name=name)
            )
        try:
            return str(values[0].decode("utf-8"))
        except UnicodeDecodeError:
            raise HTTPError(
                400, Text(N_("The sign-out request's %(name)s is not valid UTF-8."), name=name)
            ) from None

    async def _client_and_hint(
        self, request: Request
    ) -> tuple[Client | None, dict[str, Any] | None]:
        hint = self._param(request, "id_token_hint", MAX_HINT)
        claims = verify_hint(hint, await self.keys.jwks(), self.issuer) if hint else None
        client_id = self._param(request, "client_id", 64)
        audience = claims.get("aud") if claims is not None else None
        if isinstance(audience, list):
            audience = audience[0] if len(audience) == 1 else None
        if claims is not None and not isinstance(audience, str):
            raise HTTPError(400, N_("The sign-out request's ID token names no single client."))
        if client_id and audience is not None and client_id != audience:
            raise HTTPError(400, N_("The sign-out request's client_id is not its ID token's."))
        wanted = client_id or audience
        client = await self.app.storage.run(clients.client_by_id, wanted) if wanted else None
        if wanted and client is None:
            raise HTTPError(400, N_("The sign-out request names a client Clickpass does not know."))
        return client, claims

    async def end_session(self, request: Request) -> bytes:
        client, claims = await self._client_and_hint(request)
        back = self._param(request, "post_logout_redirect_uri", clients.MAX_REDIRECT_URI)
        state = self._param(request, "state", MAX_STATE)
        if back and (client is None or back not in client.post_logout_uris):
            raise HTTPError(
                400,
                N_(
                    "The sign-out request asks to send you to an address its site did not register."
                ),
            )
        account = await self.app.current_account(request)
        confirmed = request.method == b"POST" and self.app.form(request, "decision") == "signout"
        if confirmed:
            self.app.check_csrf(request)
        elif account is not None and not self._hint_is_for(claims, client, account.uid):
            # Not provably the signed-in person's own client: ask.
            return self.app.render(
                request, "oidc/logout.html", site_name=client.site_name if client else None,
                params=[(k, v) for k, v in (
                    ("id_token_hint", self._param(request, "id_token_hint", MAX_HINT)),
                    ("client_id", client.client_id if client else ""),
                    ("post_logout_redirect_uri", back), ("state", state),
                ) if v],
            )  # fmt: skip
        if account is not None:
            await self.app.sign_out(request)
            log.info("oidc logout of account {account}", account=account.id)
        if back:
            return self.app.redirect(
                request, redirect_url(back, {"state": state} if state else {}), 302
            )
        return self.app.render(request, "oidc/logged_out.html")

    def _hint_is_for(self, claims: dict[str, Any] | None, client: Client | None, uid: str) -> bool:
        if claims is None or client is None:
            return False
        return bool(claims.get("sub") == derive_opaque(self._subject_key, uid, client.sector))

"""
The OpenID Connect provider's web glue: discovery
(C{/.well-known/openid-configuration}), the JWKS document
(C{/oidc/jwks}), RP-initiated logout (C{/oidc/logout}, in
L{clickpass.oidc.logout}), dynamic registration (C{/oidc/register}, in
L{clickpass.oidc.registration}), the authorization endpoint (C{/oidc/authorize}) and its
consent decision (C{/oidc/decide}), the token endpoint (C{/oidc/token}),
UserInfo (C{/oidc/userinfo}), introspection (C{/oidc/introspect}, RFC
7662) and revocation (C{/oidc/revoke}, RFC 7009).

The person signs in on Clickpass's own sign-in page and consents once per
partner site: the consent is the OpenID 2.0 provider's (table
C{approvals}, keyed by the site's realm; a scope maps to the same fields),
so a person who approved the site's OpenID 2.0 realm is not asked again.
The subject is the per-site identifier OpenID 2.0 uses, for the sector
of the client's redirect URIs.

The seams this module calls are its own: L{HeldValues} (what can be
released about a person) and L{EmailVerified} (whether an address may be
released as verified). It must never redirect to an address that is not
one of the client's registered redirect URIs, never issue or accept
C{alg: none}, and never log a code, token or secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from jinja2 import ChoiceLoader, FileSystemLoader

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass import i18n
from clickpass.accounts.flows import releasable_email
from clickpass.accounts.service import Account, session_hash
from clickpass.i18n import N_
from clickpass.oidc import assertions, authorize, backchannel, clients, tokens
from clickpass.oidc.authorize import (
    AuthorizationRequest,
    AuthorizeErrorAt,
    Destination,
    NotForClient,
)
from clickpass.oidc.clients import Client
from clickpass.oidc.keys import SigningKeys
from clickpass.oidc.logout import Logout
from clickpass.oidc.registration import Registration
from clickpass.oidc.sector import SectorFetcher
from clickpass.openid import approvals
from clickpass.openid.extensions import FIELD_LABELS
from clickpass.openid.identifiers import KEY_PURPOSE, BadRealm, Identifiers, recorded, sector_of
from clickpass.storage.sql import Transaction
from clickpass.web.app import WebApp
from clickpass.web.routing import HTTPError, Router

TEMPLATES = Path(__file__).parent / "templates"
CONSENT_LIFETIME = 3600
MAX_PAYLOAD = 32 * 1024
MAX_TOKEN_BODY = 16 * 1024
FORM_POST_SCRIPT = "document.forms[0].submit();"
FORM_POST_SCRIPT_HASH = base64.b64encode(
    hashlib.sha256(FORM_POST_SCRIPT.encode("ascii")).digest()
).decode("ascii")

# A client assertion's audience: the issuer or the endpoint it is sent to.
AUDIENCE_PATHS = ("/oidc/token", "/oidc/introspect", "/oidc/revoke")

log = Logger()


class HeldValues(Protocol):
    """What can be released about a person, by consent-store field (clickpass.openid)."""

    async def held(self, account: Account) -> dict[str, str]: ...


EmailVerified = Callable[[Account], bool]

# OpenID Connect acr values (Core 1.0 2): "0", no assurance claimed, and
# the PAPE multi-factor policy URI, a registered acr value; what the
# second factors' judge (clickpass.mfa.strength) says a session meets.
ACR_NONE = "0"
ACR_MULTI_FACTOR = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"
ACR_VALUES = (ACR_NONE, ACR_MULTI_FACTOR)


class SignInContext(Protocol):
    """How a session was signed in, as partners may be told it."""

    @property
    def acr(self) -> str: ...

    @property
    def amr(self) -> tuple[str, ...]: ...


class SignInStrength(Protocol):
    """
    How strongly the person is signed in (clickpass.mfa's PapeStrength):
    for C{acr} and C{amr}, and the step-up that C{acr_values} may ask for.
    """

    async def context(self, request: Request) -> SignInContext | None:
        """How this request's session was signed in, or L{None} when signed out."""
        ...

    def step_up_url(self, back: str) -> str:
        """Where the person signs in more strongly, then comes back to C{back}."""
        ...


# Whether an account has a second factor to give (a step-up can succeed).
HasFactor = Callable[[int], Awaitable[bool]]


def account_email_verified(account: Account) -> bool:
    """
    Whether C{account}'s own address is proven: the accounts' rule for
    every release to a partner (L{releasable_email}: verified, and a real
    mailbox). (An address an upstream provider verified is released
    without asking this.)
    """
    return bool(releasable_email(account))


@dataclass(frozen=True)
class ConsentField:
    """
    One value the consent page offers to share, as a checkbox: C{name} in
    the consent store, its label, its value and the scope that asked for
    it. OpenID Connect has no optional scope (and this provider takes no
    C{claims} parameter), so each is ticked; the person may untick it.
    """

    name: str
    label: str
    value: str
    scope: str


def scope_of(field: str, scopes: tuple[str, ...]) -> str:
    """The first of C{scopes} that asks for C{field} (L{authorize.SCOPE_FIELDS})."""
    for scope in scopes:
        if field in authorize.SCOPE_FIELDS.get(scope, frozenset()):
            return scope
    return ""


def granted_scopes(scopes: tuple[str, ...], declined: frozenset[str]) -> tuple[str, ...]:
    """
    C{scopes} without those whose every field the person declined: the
    token response's C{scope} says what the client was given.
    """
    return tuple(
        s
        for s in scopes
        if not (authorize.SCOPE_FIELDS.get(s) and authorize.SCOPE_FIELDS[s] <= declined)
    )


def client_label(client: Client, redirect_uri: str) -> dict[str, str]:
    """
    How the pages name C{client} for a person going back to
    C{redirect_uri}: C{name} (its verified partner site's name; else the
    name its owner typed, which anyone may type), C{host} (the redirect
    URI's), and C{unverified} ("yes" when the name is not verified, else
    empty).
    """
    host = urlsplit(redirect_uri).hostname or client.sector
    if client.site_verified:
        return {"name": client.site_name, "host": host, "unverified": ""}
    return {"name": client.registered_name or host, "host": host, "unverified": "yes"}


class TokenError(Exception):
    """An error answer of the token, introspection or revocation endpoint (RFC 6749 5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def install(
    app: WebApp,
    router: Router,
    held: HeldValues,
    email_verified: EmailVerified = account_email_verified,
    strength: SignInStrength | None = None,
    has_factor: HasFactor | None = None,
) -> OIDCWeb:
    """
    Register the provider's routes on C{router}, with its templates.
    Without C{strength}, ID tokens carry no C{acr} or C{amr} and
    C{acr_values} is ignored.
    """
    loader = app.templates.loader
    assert loader is not None
    app.templates.loader = ChoiceLoader([loader, FileSystemLoader(str(TEMPLATES))])
    keys = SigningKeys(app.reactor, app.reactor, app.storage, app.secret)
    web = OIDCWeb(app, keys, held, email_verified, strength, has_factor)
    logout = Logout(app, keys, web.issuer, app.derive_key(KEY_PURPOSE))
    registration = Registration(app, web.issuer, SectorFetcher(app.reactor, app.settings.openid))
    router.add("GET", "/.well-known/openid-configuration", web.discovery)
    router.add("GET", "/oidc/jwks", web.jwks)
    router.add("GET", "/oidc/authorize", web.authorize)
    router.add("POST", "/oidc/authorize", web.authorize)
    router.add("POST", "/oidc/decide", web.decide)
    router.add("POST", "/oidc/token", web.token)
    router.add("GET", "/oidc/userinfo", web.userinfo)
    router.add("POST", "/oidc/userinfo", web.userinfo)
    router.add("POST", "/oidc/introspect", web.introspect)
    router.add("POST", "/oidc/revoke", web.revoke)
    # Browser-based public clients call these from their own origin (CORS;
    # no cookies are involved, so any origin may).
    for path in ("/oidc/token", "/oidc/userinfo", "/oidc/revoke", "/oidc/introspect"):
        router.add("OPTIONS", path, preflight)
    router.add("GET", "/oidc/logout", logout.end_session)
    router.add("POST", "/oidc/logout", logout.end_session)
    router.add("POST", "/oidc/register", registration.register)
    router.add("GET", "/oidc/register/{client_id}", registration.read)
    router.add("PUT", "/oidc/register/{client_id}", registration.update)
    router.add("DELETE", "/oidc/register/{client_id}", registration.delete)
    return web


class SigninBranding(Protocol):
    """Who a person signs in for, for the sign-in page (clickpass.web.pages)."""

    async def branding(self, next_url: str) -> dict[str, str] | None: ...


class ClientBranding:
    """
    The sign-in page's "to continue to": the OpenID Connect client an
    authorization request names, else what C{others} (the partner
    sites' OpenID 2.0 branding) say.
    """

    def __init__(self, web: OIDCWeb, others: SigninBranding) -> None:
        self.web = web
        self.others = others

    async def branding(self, next_url: str) -> dict[str, str] | None:
        found = await self.web.branding(next_url)
        if found is not None:
            return found
        return await self.others.branding(next_url)


def issuer_of(base_url: str) -> str:
    """The issuer identifier: the public URL without its trailing slash."""
    return base_url.rstrip("/")


def discovery_document(base_url: str) -> dict[str, Any]:
    """The provider's metadata (OpenID Connect Discovery 1.0, RFC 8414)."""
    issuer = issuer_of(base_url)
    auth_methods = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/oidc/authorize",
        "token_endpoint": issuer + "/oidc/token",
        "userinfo_endpoint": issuer + "/oidc/userinfo",
        "jwks_uri": issuer + "/oidc/jwks",
        "introspection_endpoint": issuer + "/oidc/introspect",
        "revocation_endpoint": issuer + "/oidc/revoke",
        "end_session_endpoint": issuer + "/oidc/logout",
        "registration_endpoint": issuer + "/oidc/register",
        "scopes_supported": list(clients.SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": sorted(authorize.PROMPTS),
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "email",
            "email_verified", "name", "nickname", "preferred_username", "openid2_id", "sid",
            "acr", "amr",
        ],
        "authorization_response_iss_parameter_supported": True,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "acr_values_supported": list(ACR_VALUES),
        "ui_locales_supported": list(i18n.LANGUAGES),
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
    }  # fmt: skip


def at_hash(access_token: str) -> str:
    """The ID token's C{at_hash}: the left half of the token's SHA-256, base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


def _session_created(tx: Transaction, account: Account, token: str) -> int:
    created = tx.scalar("SELECT created FROM sessions WHERE token_hash = ?", session_hash(token))
    return int(created or 0)


async def preflight(request: Request) -> bytes:
    """A CORS preflight for the endpoints clients call from a browser."""
    request.setResponseCode(204)
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"access-control-allow-methods", b"GET, POST")
    request.setHeader(b"access-control-allow-headers", b"authorization, content-type")
    request.setHeader(b"access-control-max-age", b"600")
    return b""


def _json(request: Request, status: int, body: Mapping[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"pragma", b"no-cache")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


class OIDCWeb:
    """The provider's endpoints."""

    def __init__(
        self,
        app: WebApp,
        keys: SigningKeys,
        held: HeldValues,
        email_verified: EmailVerified,
        strength: SignInStrength | None = None,
        has_factor: HasFactor | None = None,
    ) -> None:
        self.app = app
        self.strength = strength
        self.has_factor = has_factor
        self.keys = keys
        self.held_values = held
        self.email_verified = email_verified
        self.base_url = app.settings.base_url
        self.issuer = issuer_of(self.base_url)
        self.identifiers = Identifiers(
            app.storage, app.derive_key(KEY_PURPOSE), self.base_url, clock=app.reactor
        )
        self._consent_key = app.derive_key(b"oidc consent form")
        self._sid_key = app.derive_key(b"oidc session id")

    def now(self) -> int:
        return int(self.app.reactor.seconds())

    async def approval_forgotten(self, account_id: int, realm: str) -> None:
        """The person forgot their approval of C{realm}: its clients lose their grants."""
        revoked = await self.app.storage.run(tokens.revoke_for_realm, account_id, realm, self.now())
        log.info("oidc grants revoked with an approval: {count}", count=revoked)

    # The sign-in page's "to continue to".

    async def branding(self, next_url: str) -> dict[str, str] | None:
        """
        The client a person signs in for, when C{next_url} is an
        authorization request naming a client and one of its registered
        redirect URIs (a made-up link cannot borrow a client's name): its
        name (L{client_label}), the redirect URI's host as C{realm}, and
        C{unverified}. L{None} for anything else.
        """
        parts = urlsplit(next_url)
        if parts.path != "/oidc/authorize":
            return None
        query = parse_qs(parts.query)
        client_ids, redirect_uris = query.get("client_id", []), query.get("redirect_uri", [])
        if len(client_ids) != 1 or len(redirect_uris) != 1:
            return None
        client = await self.app.storage.run(clients.client_by_id, client_ids[0])
        if client is None or redirect_uris[0] not in client.redirect_uris:
            return None
        label = client_label(client, redirect_uris[0])
        return {
            "name": label["name"],
            "logo_url": "",
            "realm": label["host"],
            "unverified": label["unverified"],
        }

    # Discovery and keys.

    async def discovery(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"access-control-allow-origin", b"*")
        return json.dumps(discovery_document(self.base_url), indent=1).encode("utf-8")

    async def jwks(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/jwk-set+json")
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"cache-control", b"max-age=300")
        return json.dumps(await self.keys.jwks()).encode("utf-8")

    # Authorization.

    async def authorize(self, request: Request) -> bytes:
        # ui_locales (OpenID Connect Core 3.1.2.1): the pages of this flow,
        # from the sign-in page on, follow the first language we speak.
        ui_locales = (request.args or {}).get(b"ui_locales") or [b""]
        self.app.follow_partner_language(
            request, i18n.wishes(ui_locales[0].decode("utf-8", "replace"))
        )
        try:
            auth = await self._read_request(authorize.single_values(request.args or {}))
            return await self._authorize(request, auth)
        except NotForClient as e:
            raise HTTPError(400, str(e)) from None
        except AuthorizeErrorAt as e:
            log.info(
                "oidc authorization refused for {client}: {error}",
                client=e.destination.client.client_id,
                error=e.error,
            )
            params = authorize.error_parameters(e, self.issuer)
            return self._answer(request, e.destination, params)

    async def _read_request(self, params: Mapping[str, list[str]]) -> AuthorizationRequest:
        client_ids = params.get("client_id") or [""]
        client = None
        if len(client_ids) == 1 and client_ids[0]:
            client = await self.app.storage.run(clients.client_by_id, client_ids[0])
        return authorize.check(params, authorize.destination(params, client))

    def _must_sign_in(self, auth: AuthorizationRequest, auth_time: int, now: int) -> bool:
        if auth.signed_in_after is not None:
            # Back from the sign-in page that prompt=login or max_age sent
            # the person to: only a sign-in since then counts.
            return auth_time < auth.signed_in_after
        if "login" in auth.prompt:
            return True
        # max_age=0 asks for a sign-in now, however recent the last one.
        return auth.max_age is not None and (auth.max_age == 0 or now - auth_time > auth.max_age)

    async def _authorize(self, request: Request, auth: AuthorizationRequest) -> bytes:
        account = await self.app.current_account(request)
        now = self.now()
        auth_time = 0
        if account is not None:
            token = self.app.session_token(request)
            auth_time = await self.app.storage.run(_session_created, account, token)
        if account is None or self._must_sign_in(auth, auth_time, now):
            if "none" in auth.prompt:
                raise AuthorizeErrorAt(auth.destination, "login_required", "no one is signed in")
            return await self._to_signin(request, auth, account, now)
        stepping_up = await self._step_up(request, auth, account)
        if stepping_up is not None:
            return stepping_up
        released = await self._released(auth.fields, account)
        approval = await self.app.storage.run(approvals.read, account.id, auth.client.realm)
        # A remembered approval answers when each field asked for was
        # allowed or declined before (and the person did not ask to be
        # asked every time): only the allowed ones are released.
        asked = "consent" in auth.prompt
        if asked or approval is None or not approval.answers(frozenset(released)):
            if "none" in auth.prompt:
                raise AuthorizeErrorAt(
                    auth.destination, "consent_required", "the person has not consented"
                )
            return await self._consent_page(request, auth, account, released, auth_time)
        if approval.stale(now):
            await self.app.storage.run(approvals.touch, account.id, auth.client.realm, now)
        shared = frozenset(approval.shared(released))
        declined = frozenset(released) - shared
        return await self._issue_code(request, auth, account, shared, auth_time, declined)

    async def _step_up(
        self, request: Request, auth: AuthorizationRequest, account: Account
    ) -> bytes | None:
        """
        When the client asks for a multi-factor sign-in (C{acr_values}) that
        this session has not made and the person has a second factor: send
        them to give it and come back (once), or, with C{prompt=none},
        C{interaction_required}. L{None}: go on (acr_values are voluntary;
        the ID token's C{acr} says what was met).
        """
        if self.strength is None or ACR_MULTI_FACTOR not in auth.acr_values or auth.stepped_up:
            return None
        context = await self.strength.context(request)
        if context is not None and context.acr == ACR_MULTI_FACTOR:
            return None
        if self.has_factor is None or not await self.has_factor(account.id):
            return None
        if "none" in auth.prompt:
            raise AuthorizeErrorAt(
                auth.destination, "interaction_required", "a second factor is needed"
            )
        back = "/oidc/authorize?" + auth.query(stepped_up=True)
        return self.app.redirect(request, self.strength.step_up_url(back))

    async def _to_signin(
        self, request: Request, auth: AuthorizationRequest, account: Account | None, now: int
    ) -> bytes:
        fresh = account is not None or "login" in auth.prompt or auth.max_age is not None
        if account is not None:
            # The sign-in page sends a signed-in person straight on.
            await self.app.sign_out(request)
        query = auth.query(drop_prompt_login=True, signed_in_after=now if fresh else None)
        url = self.app.signin_url("/oidc/authorize?" + query)
        if auth.login_hint:
            url += "&" + urlencode({"login_hint": auth.login_hint})
        return self.app.redirect(request, url)

    async def _released(self, fields: frozenset[str], account: Account) -> dict[str, str]:
        """What would be released for C{fields} (L{releasable})."""
        if not fields:
            return {}
        held = await self.held_values.held(account)
        return releasable(fields, held, account, self.email_verified)

    async def _consent_page(
        self,
        request: Request,
        auth: AuthorizationRequest,
        account: Account,
        released: dict[str, str],
        auth_time: int,
    ) -> bytes:
        payload, mac = self._form_payload(account.id, auth.query(), auth_time)
        redirect_uri = auth.destination.redirect_uri
        label = client_label(auth.client, redirect_uri)
        return self.app.render(
            request,
            "oidc/consent.html",
            # The heading names a verified site by its name, else by the
            # host the person goes back to (the typed name shown as such).
            site=label["host"] if label["unverified"] else label["name"],
            unverified_name=label["name"] if label["unverified"] else "",
            host=label["host"],
            client_name=auth.client.client_name,
            redirect_uri=redirect_uri.split("?", 1)[0],
            subject=self.identifiers.opaque(account.uid, auth.client.sector),
            fields=[
                ConsentField(f, FIELD_LABELS[f], v, scope_of(f, auth.scopes))
                for f, v in released.items()
            ],
            payload=payload,
            mac=mac,
        )

    def _form_payload(self, account_id: int, query: str, auth_time: int) -> tuple[str, str]:
        data = json.dumps({"q": query, "t": self.now(), "a": auth_time}).encode("utf-8")
        payload = base64.urlsafe_b64encode(data).decode("ascii")
        return payload, self._mac(account_id, payload)

    def _mac(self, account_id: int, payload: str) -> str:
        message = f"{account_id}\n{payload}".encode()
        return hmac.new(self._consent_key, message, hashlib.sha256).hexdigest()

    async def decide(self, request: Request) -> bytes:
        """The consent form's answer: allow (and remember) or deny."""
        self.app.check_csrf(request)
        account = await self.app.current_account(request)
        if account is None:
            raise HTTPError(403, N_("You were signed out. Go back to the site and sign in again."))
        query, auth_time = self._restore(request, account)
        try:
            auth = await self._read_request(parse_qs(query, keep_blank_values=True))
            if self.app.form(request, "decision") != "allow":
                log.info("oidc sign-in at {client}: denied", client=auth.client.client_id)
                raise AuthorizeErrorAt(auth.destination, "access_denied", "the person said no")
            offered = await self._released(auth.fields, account)
            shared = frozenset(offered)
            if self.app.form(request, "choosing") == "yes":
                # The values the person left ticked; the others are not
                # released. A form without the choice (rendered by the
                # previous release during a rolling upgrade) allowed all.
                args = (request.args or {}).get(b"share", [])
                shared = frozenset(offered) & {v.decode("utf-8", "replace") for v in args}
            declined = frozenset(offered) - shared
            always_ask = self.app.form(request, "always_ask") == "yes"
            await self.app.storage.run(
                approvals.remember,
                account.id,
                auth.client.realm,
                shared,
                self.now(),
                declined,
                always_ask,
            )
            log.info(
                "oidc sign-in at {client}: approved, releasing {fields}",
                client=auth.client.client_id,
                fields=",".join(sorted(shared)) or "nothing",
            )
            return await self._issue_code(request, auth, account, shared, auth_time, declined)
        except NotForClient as e:
            raise HTTPError(400, str(e)) from None
        except AuthorizeErrorAt as e:
            return self._answer(request, e.destination, authorize.error_parameters(e, self.issuer))

    def _restore(self, request: Request, account: Account) -> tuple[str, int]:
        payload = self.app.form(request, "payload")
        if not payload or len(payload) > MAX_PAYLOAD:
            raise HTTPError(400, N_("The consent form is missing its request."))
        if not hmac.compare_digest(self._mac(account.id, payload), self.app.form(request, "mac")):
            raise HTTPError(
                400, N_("This consent form was changed or is not yours. Go back to the site.")
            )
        try:
            data = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
            query, issued, auth_time = str(data["q"]), int(data["t"]), int(data["a"])
        except (ValueError, KeyError, TypeError):
            raise HTTPError(400, N_("This consent form cannot be read.")) from None
        if self.now() - issued > CONSENT_LIFETIME:
            raise HTTPError(400, N_("This consent form has expired. Go back to the site."))
        return query, auth_time

    async def _issue_code(
        self,
        request: Request,
        auth: AuthorizationRequest,
        account: Account,
        fields: frozenset[str],
        auth_time: int,
        declined: frozenset[str] = frozenset(),
    ) -> bytes:
        now = self.now()
        dest = auth.destination
        # The client's sector: its redirect URIs' host, or its sector
        # identifier URI's when it has one.
        where = auth.client.sector_identifier_uri or dest.redirect_uri
        site_id = await self.identifiers.for_site(account.id, account.uid, where, now)
        openid2_id = ""
        if auth.openid2_realm:
            openid2_id = await self._openid2_id(account, auth.openid2_realm)
        code = tokens.new_secret()
        session = session_hash(self.app.session_token(request))
        sid = backchannel.session_sid(self._sid_key, session)
        context = await self.strength.context(request) if self.strength is not None else None
        grant = tokens.Grant(
            grant_id=tokens.new_secret(),
            client_id=auth.client.client_id,
            account_id=account.id,
            subject=site_id.opaque,
            scopes=granted_scopes(auth.scopes, declined),
            fields=fields,
            nonce=auth.nonce or "",
            auth_time=auth_time,
            created=now,
            expires=now + 2 * tokens.CODE_LIFETIME,
            openid2_id=openid2_id,
            sid=sid,
            acr=context.acr if context is not None else "",
            amr=tuple(context.amr) if context is not None else (),
            session_hash=session,
        )
        # A client that takes logout tokens hears when this session ends.
        logout_uri = auth.client.backchannel_logout_uri

        def start(tx: Transaction) -> None:
            tokens.start_grant(tx, grant, code, dest.redirect_uri, auth.code_challenge)
            if logout_uri:
                backchannel.record_session(tx, session, grant.client_id, sid, grant.subject, now)

        await self.app.storage.run(start)
        log.debug("oidc code issued to {client}", client=auth.client.client_id)
        return self._answer(request, dest, authorize.success_parameters(code, dest, self.issuer))

    async def _openid2_id(self, account: Account, realm: str) -> str:
        """
        The person's OpenID 2.0 identifier at C{realm} if they have one (they
        signed in there), else empty: a site learns only identifiers it was
        given.
        """
        try:
            sector = sector_of(realm)
        except BadRealm:
            return ""
        found = await self.app.storage.run(recorded, account.id, sector)
        if found is None or found[0] != self.identifiers.opaque(account.uid, sector):
            return ""
        return self.identifiers.url(found[0])

    def _answer(self, request: Request, dest: Destination, params: dict[str, str]) -> bytes:
        """Send C{params} to the client's redirect URI, as its response mode says."""
        if dest.response_mode == "form_post":
            body = self.app.render(
                request,
                "oidc/form_post.html",
                action=dest.redirect_uri,
                params=sorted(params.items()),
                script=FORM_POST_SCRIPT,
            )
            request.setHeader(
                b"content-security-policy",
                f"default-src 'none'; script-src 'sha256-{FORM_POST_SCRIPT_HASH}'; "
                "form-action http: https:; frame-ancestors 'none'".encode("ascii"),
            )
            return body
        return self.app.redirect(request, authorize.redirect_url(dest.redirect_uri, params), 302)

    # The token endpoint and its siblings.

    def _token_error(self, request: Request, e: TokenError) -> bytes:
        if e.status == 401:
            request.setHeader(b"www-authenticate", b'Basic realm="Clickpass"')
        log.info("oidc token endpoint: {error}", error=e.error)
        return _json(request, e.status, {"error": e.error, "error_description": e.description})

    async def token(self, request: Request) -> bytes:
        try:
            params = _form_body(request)
            client = await self._client_auth(request, params)
            grant_type = params.get("grant_type")
            now = self.now()
            result: tokens.Issued | tokens.Refusal
            if grant_type == "authorization_code":
                result = await self.app.storage.run(
                    tokens.redeem_code,
                    _required(params, "code"),
                    client.client_id,
                    params.get("redirect_uri", ""),
                    params.get("code_verifier", ""),
                    now,
                    client.lifetimes.access_token,
                    client.lifetimes.refresh_token,
                )
            elif grant_type == "refresh_token":
                result = await self.app.storage.run(
                    tokens.refresh,
                    _required(params, "refresh_token"),
                    client.client_id,
                    now,
                    client.lifetimes.access_token,
                    client.lifetimes.refresh_token,
                )
            elif grant_type is None:
                raise TokenError("invalid_request", "grant_type is missing")
            else:
                raise TokenError("unsupported_grant_type", "grant_type is not supported")
            if isinstance(result, tokens.Refusal):
                raise TokenError(result.error, result.description)
            await self._check_account(result.grant, now)
            body = await self._token_response(client, result, grant_type == "refresh_token")
            return _json(request, 200, body)
        except TokenError as e:
            return self._token_error(request, e)

    async def _check_account(self, grant: tokens.Grant, now: int) -> None:
        """A disabled (or deleted) account's grant is revoked, whatever it holds."""
        account = await self.app.accounts.get(grant.account_id)
        if account is None or account.disabled:
            await self.app.storage.run(tokens.revoke_grant, grant.grant_id, now)
            raise TokenError("invalid_grant", "the account is disabled")

    async def _token_response(
        self, client: Client, issued: tokens.Issued, refreshed: bool
    ) -> dict[str, Any]:
        grant, now = issued.grant, self.now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": grant.subject,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + client.lifetimes.id_token,
            "auth_time": grant.auth_time,
            "at_hash": at_hash(issued.access_token),
        }
        if grant.nonce and not refreshed:
            claims["nonce"] = grant.nonce
        if grant.openid2_id:
            claims["openid2_id"] = grant.openid2_id
        if grant.sid:
            claims["sid"] = grant.sid
        if grant.acr:
            claims["acr"] = grant.acr
        if grant.amr:
            claims["amr"] = list(grant.amr)
        id_token = await self.keys.sign(claims, client.id_token_alg)
        return {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": client.lifetimes.access_token,
            "refresh_token": issued.refresh_token,
            "id_token": id_token,
            "scope": " ".join(grant.scopes),
        }

    async def _client_auth(self, request: Request, params: Mapping[str, str]) -> Client:
        """The client that authenticated this request, or L{TokenError} (invalid_client)."""
        basic = _basic_credentials(request)
        assertion = params.get("client_assertion")
        given = (basic is not None, "client_secret" in params, assertion is not None)
        if sum(given) > 1:
            raise TokenError("invalid_request", "more than one client authentication method")
        if assertion is not None:
            return await self._assertion_auth(params, assertion)
        secret: str | None
        if basic is not None:
            client_id, secret = basic
            if params.get("client_id", client_id) != client_id:
                raise TokenError("invalid_request", "client_id differs from the authenticated one")
        else:
            client_id, secret = params.get("client_id", ""), params.get("client_secret")
        client = await self.app.storage.run(clients.client_by_id, client_id)
        if client is None:
            raise TokenError("invalid_client", "client authentication failed", 401)
        if secret is None:
            if not client.public:
                raise TokenError("invalid_client", "this client must authenticate", 401)
        elif not client.authenticates(secret, self.now()):
            raise TokenError("invalid_client", "client authentication failed", 401)
        return client

    async def _assertion_auth(self, params: Mapping[str, str], assertion: str) -> Client:
        """private_key_jwt: the client whose registered key signed C{assertion}."""
        if params.get("client_assertion_type") != assertions.JWT_BEARER:
            raise TokenError(
                "invalid_request", f"client_assertion_type must be {assertions.JWT_BEARER}"
            )
        client_id = assertions.claimed_client(assertion)
        if params.get("client_id", client_id) != client_id:
            raise TokenError("invalid_client", "client_id is not the assertion's subject", 401)
        client = await self.app.storage.run(clients.client_by_id, client_id)
        if client is None or client.jwks is None:
            raise TokenError("invalid_client", "client authentication failed", 401)
        now = self.now()
        audiences = [self.issuer, *(self.issuer + path for path in AUDIENCE_PATHS)]
        try:
            jti, expires = assertions.verify(assertion, client_id, client.jwks, audiences, now)
        except assertions.AssertionRefused as e:
            log.info("oidc client {client}: assertion refused: {why}", client=client_id, why=str(e))
            raise TokenError("invalid_client", "client authentication failed", 401) from None
        if not await self.app.storage.run(assertions.record_jti, client_id, jti, expires):
            raise TokenError("invalid_client", "the client assertion was already used", 401)
        return client

    async def introspect(self, request: Request) -> bytes:
        try:
            params = _form_body(request)
            client = await self._client_auth(request, params)
            info = await self.app.storage.run(
                tokens.live_token, _required(params, "token"), self.now()
            )
        except TokenError as e:
            return self._token_error(request, e)
        if info is None or info.grant.client_id != client.client_id:
            return _json(request, 200, {"active": False})
        return _json(
            request,
            200,
            {
                "active": True,
                "client_id": client.client_id,
                "token_type": "Bearer" if info.kind == "access" else "refresh_token",
                "scope": " ".join(info.grant.scopes),
                "sub": info.grant.subject,
                "aud": client.client_id,
                "iss": self.issuer,
                "iat": info.created,
                "exp": info.expires,
            },
        )

    async def revoke(self, request: Request) -> bytes:
        try:
            params = _form_body(request)
            client = await self._client_auth(request, params)
            token = _required(params, "token")
        except TokenError as e:
            return self._token_error(request, e)
        # Unknown, expired or another client's tokens get the same answer
        # (RFC 7009 2.2): nothing to learn from it.
        await self.app.storage.run(tokens.revoke_token, token, client.client_id, self.now())
        return _json(request, 200, {})

    # UserInfo.

    async def userinfo(self, request: Request) -> bytes:
        token = _bearer(request)
        info = None
        if token is not None:
            info = await self.app.storage.run(tokens.live_token, token, self.now())
        account = None
        if info is not None and info.kind == "access":
            account = await self.app.accounts.get(info.grant.account_id)
        if info is None or account is None or account.disabled:
            request.setHeader(
                b"www-authenticate",
                b'Bearer realm="Clickpass", error="invalid_token"'
                if token is not None
                else b'Bearer realm="Clickpass"',
            )
            return _json(request, 401, {"error": "invalid_token"})
        return _json(request, 200, await self._userinfo_claims(info.grant, account))

    async def _userinfo_claims(self, grant: tokens.Grant, account: Account) -> dict[str, Any]:
        return userinfo_claims(grant.subject, await self._released(grant.fields, account))


def releasable(
    fields: frozenset[str],
    held: Mapping[str, str],
    account: Account,
    email_verified: EmailVerified,
) -> dict[str, str]:
    """
    The held values of C{fields}; the account's own address only when
    C{email_verified} says it is proven (an address from an upstream
    provider is in C{held} only when that provider verified it).
    """
    released = {f: held[f] for f in sorted(fields) if f in held}
    email = released.get("email")
    if email is not None and email == account.email and not email_verified(account):
        del released["email"]
    return released


def userinfo_claims(subject: str, released: Mapping[str, str]) -> dict[str, Any]:
    """The UserInfo claims of the released fields (C{email} is released only verified)."""
    claims: dict[str, Any] = {"sub": subject}
    if "email" in released:
        claims["email"] = released["email"]
        claims["email_verified"] = True
    if "fullname" in released:
        claims["name"] = released["fullname"]
    if "nickname" in released:
        claims["nickname"] = released["nickname"]
        claims["preferred_username"] = released["nickname"]
    return claims


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise TokenError("invalid_request", f"{name} is missing")
    return value


def _form_body(request: Request) -> dict[str, str]:
    """
    The parameters of a form-encoded POST body (never the query string),
    each once, bounded, as text; L{TokenError} (invalid_request) otherwise.
    """
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/x-www-form-urlencoded":
        raise TokenError("invalid_request", "the body must be application/x-www-form-urlencoded")
    content = request.content
    if content is None:
        raise TokenError("invalid_request", "the request has no body")
    content.seek(0)
    raw = content.read(MAX_TOKEN_BODY + 1)
    if len(raw) > MAX_TOKEN_BODY:
        raise TokenError("invalid_request", "the request body is too large")
    try:
        parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        raise TokenError("invalid_request", "the request body is not a valid form") from None
    params = {}
    for name, values in parsed.items():
        if len(values) > 1:
            raise TokenError("invalid_request", f"the parameter {name} is given more than once")
        if len(values[0]) > authorize.MAX_PARAMETER:
            raise TokenError("invalid_request", f"the parameter {name} is too long")
        params[name] = values[0]
    return params


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """C{client_secret_basic}'s client id and secret (RFC 6749 2.3.1), or L{None}."""
    header = request.getHeader(b"authorization")
    if header is None or header[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise TokenError("invalid_client", "the Basic credentials are malformed", 401) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise TokenError("invalid_client", "the Basic credentials are malformed", 401)
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def _bearer(request: Request) -> str | None:
    """The bearer token of a UserInfo request: the header, or (POST) the form field."""
    header = request.getHeader(b"authorization")
    if header is not None:
        if header[:7].lower() != b"bearer ":
            return None
        return header[7:].strip().decode("ascii", "replace")
    if request.method == b"POST":
        try:
            return _form_body(request).get("access_token")
        except TokenError:
            return None
    return None

"""
Connectors: one per configured upstream provider. A connector builds the
authorization URL a browser is sent to, and turns the code the browser
brings back into a checked L{UpstreamIdentity}.

- L{OIDCConnector}: OpenID Connect (discovery, code flow with PKCE S256,
  state and nonce, ID token validation, userinfo). The google and microsoft
  presets are OIDC with fixed issuers; microsoft's multi-tenant issuers are
  checked against the token's tenant.
- L{OAuth2Connector}: OAuth 2 with a profile endpoint (the facebook preset,
  or any provider configured by its three endpoints and field names).

A connector keeps no per-sign-in state (that lives in the database, so any
worker can finish what another started) and must never trust an email that
the provider does not mark verified.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlencode, urlsplit

from twisted.logger import Logger

from clickpass.i18n import N_, Text
from clickpass.upstream.http import UpstreamError, UpstreamHTTP
from clickpass.upstream.settings import UpstreamProviderSettings, UpstreamSettings
from clickpass.upstream.tokens import (
    ALLOWED_ALGORITHMS,
    MICROSOFT_CONSUMERS_TENANT,
    TENANT_PLACEHOLDER,
    Expectations,
    KeyCache,
    validate_id_token,
)

log = Logger()

MICROSOFT_LOGIN = "https://login.microsoftonline.com"
# Token endpoint client authentication methods (names from RFC 7591).
BASIC_AUTH = "client_secret_basic"
POST_AUTH = "client_secret_post"
FACEBOOK_GRAPH = "https://graph.facebook.com/v19.0"
# Claims copied into the identity row: enough for SReg/AX, nothing more.
KEPT_CLAIMS = (
    "sub",
    "email",
    "email_verified",
    "name",
    "given_name",
    "family_name",
    "nickname",
    "preferred_username",
    "locale",
    "zoneinfo",
    "picture",
    "tid",
    "id",
)


@dataclass(frozen=True)
class UpstreamIdentity:
    """Who the provider says the person is, after every check."""

    provider: str
    subject: str
    email: str
    email_verified: bool
    display_name: str
    claims: dict[str, Any] = field(default_factory=dict)
    # When the provider last made the person sign in (an ID token's
    # auth_time), where it says; never stored.
    auth_time: int | None = None


@dataclass(frozen=True)
class ProviderInfo:
    """A provider's settings with the preset's defaults filled in."""

    name: str
    kind: str
    display_name: str
    client_id: str
    client_secret: str
    issuer: str
    tenant: str
    scopes: tuple[str, ...]
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    token_auth: str
    subject_field: str
    email_field: str
    email_verified_field: str
    name_field: str
    alternate_issuers: tuple[str, ...] = ()
    discovery_url: str = ""
    # What the authorization URL adds to make the provider ask the person
    # to sign in again (re-authentication), beyond OpenID Connect's max_age=0.
    reauth_params: tuple[tuple[str, str], ...] = ()


def resolve(settings: UpstreamProviderSettings, client_secret: str) -> ProviderInfo:
    """Fill in what the preset (google, microsoft, facebook) implies."""
    s = settings
    kind = s.kind
    issuer = s.issuer.rstrip("/")
    discovery = ""
    alternate: tuple[str, ...] = ()
    scopes = tuple(s.scopes)
    display = s.display_name
    token_auth = s.token_auth
    auth, token, profile = s.authorization_endpoint, s.token_endpoint, s.userinfo_endpoint
    subject_field = s.subject_field or "sub"
    email_field = s.email_field or "email"
    verified_field = s.email_verified_field
    name_field = s.name_field or "name"
    # OpenID Connect's way to make the provider ask again; Google does not
    # take prompt=login (it honours max_age=0), Facebook has its own.
    reauth: tuple[tuple[str, str], ...] = (("prompt", "login"),)
    if kind == "google":
        issuer = "https://accounts.google.com"
        # Google's documentation: ID tokens may name the issuer without the scheme.
        alternate = ("accounts.google.com",)
        display = display or "Google"
        token_auth = token_auth or "client_secret_post"
        reauth = ()
    elif kind == "microsoft":
        discovery = f"{MICROSOFT_LOGIN}/{s.tenant}/v2.0/.well-known/openid-configuration"
        # The multi-tenant endpoints publish an issuer template; consumers
        # publish the fixed tenant of personal accounts.
        tenant = {
            "common": TENANT_PLACEHOLDER,
            "organizations": TENANT_PLACEHOLDER,
            "consumers": MICROSOFT_CONSUMERS_TENANT,
        }.get(s.tenant, s.tenant)
        issuer = f"{MICROSOFT_LOGIN}/{tenant}/v2.0"
        display = display or "Microsoft"
        token_auth = token_auth or "client_secret_post"
    elif kind == "facebook":
        auth = auth or "https://www.facebook.com/v19.0/dialog/oauth"
        token = token or f"{FACEBOOK_GRAPH}/oauth/access_token"
        profile = profile or f"{FACEBOOK_GRAPH}/me?fields=id,name,email"
        subject_field = s.subject_field or "id"
        # Facebook marks no email verified: it is kept, never trusted.
        scopes = scopes or ("email", "public_profile")
        display = display or "Facebook"
        token_auth = token_auth or "client_secret_post"
        reauth = (("auth_type", "reauthenticate"),)
    if not client_secret and not s.token_auth:
        token_auth = "none"  # noqa: S105 - the method name, not a secret
    if kind in ("oidc", "google", "microsoft"):
        scopes = scopes or ("openid", "email", "profile")
        if "openid" not in scopes:
            scopes = ("openid", *scopes)
        verified_field = "email_verified"
    return ProviderInfo(
        name=s.name,
        kind="oauth2" if kind in ("oauth2", "facebook") else "oidc",
        display_name=display or s.name,
        client_id=s.client_id,
        client_secret=client_secret,
        issuer=issuer,
        tenant=s.tenant if kind == "microsoft" else "",
        scopes=scopes,
        authorization_endpoint=auth,
        token_endpoint=token,
        userinfo_endpoint=profile,
        token_auth=token_auth or ("client_secret_basic" if client_secret else "none"),
        subject_field=subject_field,
        email_field=email_field,
        email_verified_field=verified_field,
        name_field=name_field,
        alternate_issuers=alternate,
        discovery_url=(discovery or issuer + "/.well-known/openid-configuration")
        if kind in ("oidc", "google", "microsoft")
        else "",
        reauth_params=reauth if kind != "oauth2" else (),
    )


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge for a PKCE verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _text(value: object, limit: int = 254) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _truthy(value: object) -> bool:
    # Some providers send "true" as a string.
    return value is True or value == "true"


def _keep(claims: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name in KEPT_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str | bool | int) and len(str(value)) <= 1024:
            kept[name] = value
    return kept


class Connector:
    """What every kind of provider offers the web layer."""

    def __init__(self, info: ProviderInfo, http: UpstreamHTTP, settings: UpstreamSettings) -> None:
        self.info = info
        self.http = http
        self.settings = settings

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def display_name(self) -> str:
        return self.info.display_name

    async def authorization_url(
        self, redirect_uri: str, state: str, nonce: str, verifier: str, reauth: bool = False
    ) -> str:
        """
        Where to send the browser to sign in at the provider; with
        C{reauth}, asking the provider to make the person sign in again
        even when it has a session for them (OpenID Connect's max_age=0 and
        prompt=login where the provider takes them).
        """
        endpoint = await self._authorization_endpoint()
        params = {
            "response_type": "code",
            "client_id": self.info.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.info.scopes),
            "state": state,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if self.info.kind == "oidc":
            params["nonce"] = nonce
        if reauth:
            params.update(await self._reauth_params())
        separator = "&" if urlsplit(endpoint).query else "?"
        return endpoint + separator + urlencode(params)

    async def finish(
        self,
        code: str,
        redirect_uri: str,
        nonce: str,
        verifier: str,
        issuer_param: str | None,
        now: float,
    ) -> UpstreamIdentity:
        """Exchange C{code} for the person's checked identity."""
        raise NotImplementedError

    async def _authorization_endpoint(self) -> str:
        raise NotImplementedError

    async def _reauth_params(self) -> dict[str, str]:
        return dict(self.info.reauth_params)

    async def _exchange(self, endpoint: str, code: str, redirect_uri: str, verifier: str) -> Any:
        who = self.display_name
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        headers: dict[str, str] = {}
        if self.info.token_auth == BASIC_AUTH:
            pair = f"{_form_escape(self.info.client_id)}:{_form_escape(self.info.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode(
                "ascii"
            )
        else:
            form["client_id"] = self.info.client_id
            if self.info.token_auth == POST_AUTH:
                form["client_secret"] = self.info.client_secret
        answer = await self.http.post_form(who, endpoint, form, headers)
        if "error" in answer:
            error = _text(answer.get("error"), 64)
            log.info(
                "upstream {provider} refused a code: {error}",
                provider=self.name,
                error=error,
            )
            raise UpstreamError(
                Text(
                    N_(
                        "%(who)s refused to complete the sign-in (%(error)s); the sign-in "
                        "link may have been used already. Start again."
                    ),
                    who=who,
                    error=error or Text(N_("no reason given")),
                ),
                "code_refused",
            )
        if not isinstance(answer.get("access_token"), str) or not answer["access_token"]:
            raise UpstreamError(
                Text(
                    N_("%(who)s sent an answer we could not understand; the sign-in was stopped."),
                    who=who,
                ),
                "malformed",
            )
        token_type = answer.get("token_type")
        if isinstance(token_type, str) and token_type.lower() != "bearer":
            raise UpstreamError(
                Text(
                    N_("%(who)s sent an answer we could not understand; the sign-in was stopped."),
                    who=who,
                ),
                "malformed",
            )
        return answer


def _form_escape(value: str) -> str:
    # RFC 6749 2.3.1: the client id and secret are form-encoded before Basic.
    from urllib.parse import quote_plus

    return quote_plus(value)


class OIDCConnector(Connector):
    """An OpenID Connect provider found by discovery."""

    def __init__(
        self,
        info: ProviderInfo,
        http: UpstreamHTTP,
        settings: UpstreamSettings,
        now: Callable[[], float],
    ) -> None:
        super().__init__(info, http, settings)
        self._now = now
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self.keys = KeyCache(
            info.display_name, self._fetch_jwks, now, settings.jwks_refetch_interval
        )

    async def metadata(self) -> dict[str, Any]:
        """The discovery document, checked and cached for C{metadata_lifetime}."""
        now = self._now()
        if self._metadata is not None and now - self._metadata_at < self.settings.metadata_lifetime:
            return self._metadata
        try:
            document = await self.http.get_json(self.display_name, self.info.discovery_url)
            self._check_metadata(document)
        except UpstreamError:
            if self._metadata is not None:
                # A provider briefly down keeps working with what we knew.
                log.warn("upstream {provider} discovery failed; using cache", provider=self.name)
                return self._metadata
            raise
        self._metadata, self._metadata_at = document, now
        return document

    def _check_metadata(self, document: dict[str, Any]) -> None:
        who = self.display_name
        issuer = document.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != (self.info.issuer.rstrip("/")):
            raise UpstreamError(
                Text(
                    N_(
                        "%(who)s describes itself as a different issuer (%(issuer)s); the "
                        "sign-in was stopped."
                    ),
                    who=who,
                    issuer=_text(issuer, 100),
                ),
                "bad_issuer",
            )
        needed = ["jwks_uri"]
        if not self.info.authorization_endpoint:
            needed.append("authorization_endpoint")
        if not self.info.token_endpoint:
            needed.append("token_endpoint")
        for key in needed:
            value = document.get(key)
            if not isinstance(value, str) or urlsplit(value).scheme != "https":
                raise UpstreamError(
                    Text(
                        N_(
                            "%(who)s's discovery document lacks a usable %(key)s; the sign-in "
                            "was stopped."
                        ),
                        who=who,
                        key=key,
                    ),
                    "malformed",
                )

    def _endpoint(self, metadata: Mapping[str, Any], key: str) -> str:
        configured: str = getattr(self.info, key)
        if configured:
            return configured
        value = metadata.get(key)
        return value if isinstance(value, str) else ""

    async def _authorization_endpoint(self) -> str:
        return self._endpoint(await self.metadata(), "authorization_endpoint")

    async def _reauth_params(self) -> dict[str, str]:
        params = {"max_age": "0"}
        prompts = (await self.metadata()).get("prompt_values_supported")
        for key, value in self.info.reauth_params:
            # A provider that lists its prompts and not this one would refuse it.
            if key != "prompt" or not isinstance(prompts, list) or value in prompts:
                params[key] = value
        return params

    async def _fetch_jwks(self) -> Mapping[str, Any]:
        metadata = await self.metadata()
        return await self.http.get_json(self.display_name, str(metadata["jwks_uri"]))

    def expectations(self, metadata: Mapping[str, Any], nonce: str, now: float) -> Expectations:
        algorithms = ALLOWED_ALGORITHMS
        advertised = metadata.get("id_token_signing_alg_values_supported")
        if isinstance(advertised, list):
            algorithms = ALLOWED_ALGORITHMS & frozenset(a for a in advertised if isinstance(a, str))
        return Expectations(
            issuer=self.info.issuer,
            client_id=self.info.client_id,
            nonce=nonce,
            now=now,
            skew=self.settings.clock_skew,
            tenant_mode=self.info.tenant,
            alternate_issuers=self.info.alternate_issuers,
            algorithms=algorithms,
        )

    async def finish(
        self,
        code: str,
        redirect_uri: str,
        nonce: str,
        verifier: str,
        issuer_param: str | None,
        now: float,
    ) -> UpstreamIdentity:
        who = self.display_name
        metadata = await self.metadata()
        # RFC 9207: a provider that names itself in the redirect must name the
        # one we sent the person to (a mix-up attack otherwise).
        if (
            issuer_param is not None
            and TENANT_PLACEHOLDER not in self.info.issuer
            and issuer_param.rstrip("/") != self.info.issuer.rstrip("/")
        ):
            raise UpstreamError(
                Text(N_("The answer did not come from %(who)s; the sign-in was stopped."), who=who),
                "bad_issuer",
            )
        answer = await self._exchange(
            self._endpoint(metadata, "token_endpoint"), code, redirect_uri, verifier
        )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise UpstreamError(
                Text(N_("%(who)s sent no sign-in token; the sign-in was stopped."), who=who),
                "malformed_token",
            )
        claims = await validate_id_token(
            who, id_token, self.keys, self.expectations(metadata, nonce, now)
        )
        userinfo_endpoint = self._endpoint(metadata, "userinfo_endpoint")
        merged = dict(claims)
        if userinfo_endpoint:
            info = await self.http.get_json(
                who, userinfo_endpoint, {"Authorization": "Bearer " + answer["access_token"]}
            )
            # OIDC Core 5.3.2: userinfo about someone else is discarded; here it stops us.
            if info.get("sub") != claims["sub"]:
                raise UpstreamError(
                    Text(
                        N_(
                            "%(who)s described a different account than the one that signed in; "
                            "the sign-in was stopped."
                        ),
                        who=who,
                    ),
                    "bad_subject",
                )
            for key, value in info.items():
                merged.setdefault(key, value)
            if "email" in info and "email" not in claims:
                merged["email_verified"] = info.get("email_verified", False)
        return self._identity(merged, claims.get("auth_time"))

    def _identity(self, claims: Mapping[str, Any], auth_time: object = None) -> UpstreamIdentity:
        """The identity in C{claims}; C{auth_time} from the signed ID token only."""
        email = _text(claims.get("email")).strip().lower()
        verified = bool(email) and _truthy(claims.get("email_verified"))
        if self.info.tenant and not verified:
            # Microsoft sends no email_verified; xms_edov says the domain owner verified it.
            verified = bool(email) and _truthy(claims.get("xms_edov"))
        name = _text(claims.get("name"), 255) or _text(claims.get("preferred_username"), 255)
        subject = str(claims["sub"])
        if self.info.tenant:
            # Microsoft's sub is per application; with tid it is unique across tenants.
            tid = claims.get("tid")
            if isinstance(tid, str) and tid:
                subject = f"{tid}:{subject}"[:255]
        return UpstreamIdentity(
            self.name,
            subject,
            email,
            verified,
            name,
            _keep(claims),
            int(auth_time) if _is_number(auth_time) else None,
        )


class OAuth2Connector(Connector):
    """An OAuth 2 provider with a profile endpoint (no ID token)."""

    async def _authorization_endpoint(self) -> str:
        return self.info.authorization_endpoint

    async def finish(
        self,
        code: str,
        redirect_uri: str,
        nonce: str,
        verifier: str,
        issuer_param: str | None,
        now: float,
    ) -> UpstreamIdentity:
        who = self.display_name
        answer = await self._exchange(self.info.token_endpoint, code, redirect_uri, verifier)
        access_token: str = answer["access_token"]
        headers = {"Authorization": "Bearer " + access_token}
        url = self.info.userinfo_endpoint
        if self.info.client_secret and "graph.facebook.com" in url:
            # Facebook asks for appsecret_proof with calls made by servers.
            proof = hmac.new(
                self.info.client_secret.encode("utf-8"),
                access_token.encode("utf-8"),
                hashlib.sha256,
            ).hexdigest()
            url += ("&" if "?" in url else "?") + "appsecret_proof=" + proof
        profile = await self.http.get_json(who, url, headers)
        subject = profile.get(self.info.subject_field)
        if isinstance(subject, int) and not isinstance(subject, bool):
            subject = str(subject)
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise UpstreamError(
                Text(
                    N_("%(who)s did not say which account signed in; the sign-in was stopped."),
                    who=who,
                ),
                "bad_subject",
            )
        email = _text(profile.get(self.info.email_field)).strip().lower()
        verified = (
            bool(email)
            and bool(self.info.email_verified_field)
            and _truthy(profile.get(self.info.email_verified_field))
        )
        name = _text(profile.get(self.info.name_field), 255)
        claims = _keep(profile)
        claims["sub"] = subject
        return UpstreamIdentity(self.name, subject, email, verified, name, claims)


def make_connector(
    info: ProviderInfo,
    http: UpstreamHTTP,
    settings: UpstreamSettings,
    now: Callable[[], float],
) -> Connector:
    if info.kind == "oidc":
        return OIDCConnector(info, http, settings, now)
    return OAuth2Connector(info, http, settings)

"""
The authorization request of OpenID Connect Core 1.0's code flow, read
and checked: pure functions on the request's parameters and its client.

Two kinds of refusal, and the difference matters: L{NotForClient} when
the request names no known client or a redirect URI the client did not
register (the person gets an error page: sending them there would make
Clickpass an open redirector), and L{AuthorizeError} for everything else,
which goes back to the client's redirect URI as the spec says.

What a scope releases is the same field of the OpenID 2.0 consent store
(L{clickpass.openid.approvals}): C{email} is the field C{email},
C{profile} the fields C{fullname} and C{nickname}.

This module must never do I/O, and never let a redirect URI through that
is not one of the client's, character for character.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from openid.server.trustroot import TrustRoot

from clickpass.i18n import N_, Text
from clickpass.oidc.clients import Client
from clickpass.openid.hardening import wildcard_too_broad

# Every parameter is bounded; a request beyond these is refused, not cut.
MAX_PARAMETER = 2048
MAX_STATE = 1024
MAX_NONCE = 512
MAX_REALM = 512
MAX_PARAMETERS_TOTAL = 16 * 1024
PKCE_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
PROMPTS = frozenset({"none", "login", "consent", "select_account"})
SCOPE_FIELDS: Mapping[str, frozenset[str]] = {
    "openid": frozenset(),
    "email": frozenset({"email"}),
    "profile": frozenset({"fullname", "nickname"}),
}
# Carried on the way back from the sign-in page that prompt=login or
# max_age sent the person to: the time from which a sign-in counts.
REAUTH_PARAMETER = "cp_signed_in_after"
# Carried on the way back from the step-up page that acr_values sent the
# person to: it was offered once, and is not offered again.
STEP_UP_PARAMETER = "cp_stepped_up"
MAX_ACR_VALUES = 1024
MAX_UI_LOCALES = 256
KNOWN = frozenset(
    {
        "client_id", "redirect_uri", "response_type", "response_mode", "scope", "state",
        "nonce", "prompt", "max_age", "login_hint", "code_challenge",
        "code_challenge_method", "request", "request_uri", "registration", "display",
        "ui_locales", "claims_locales", "id_token_hint", "acr_values", "claims",
        "openid2_realm", REAUTH_PARAMETER, STEP_UP_PARAMETER,
    }
)  # fmt: skip


class NotForClient(Exception):
    """
    The request cannot go back to a client: shown to the person, never
    redirected. The message is marked for translation (a L{Text} with
    parameters, which C{str()} of the error keeps).
    """

    def __str__(self) -> str:
        message = self.args[0] if self.args else ""
        return message if isinstance(message, str) else super().__str__()


class AuthorizeError(Exception):
    """An error for the client, at its redirect URI (RFC 6749 4.1.2.1)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Destination:
    """Where the answer goes: the client's checked redirect URI, how, and the state."""

    client: Client
    redirect_uri: str
    response_mode: str
    state: str | None


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked authorization request."""

    destination: Destination
    scopes: tuple[str, ...]
    nonce: str | None
    prompt: frozenset[str]
    max_age: int | None
    login_hint: str
    code_challenge: str
    signed_in_after: int | None
    # OpenID Connect Migration 1.0: the OpenID 2.0 realm whose identifier
    # the client wants (checked to cover the redirect URI), or empty.
    openid2_realm: str = ""
    # The authentication context classes the client asks for, most wanted
    # first (voluntary: OpenID Connect Core 1.0 3.1.2.1).
    acr_values: tuple[str, ...] = ()
    # Back from the step-up page that acr_values sent the person to.
    stepped_up: bool = False
    # The End-User's preferred languages (3.1.2.1), carried through the
    # sign-in page so that the flow's pages keep following them.
    ui_locales: str = ""

    @property
    def client(self) -> Client:
        return self.destination.client

    @property
    def fields(self) -> frozenset[str]:
        """The consent store's fields the scopes ask for."""
        found: frozenset[str] = frozenset()
        for scope in self.scopes:
            found |= SCOPE_FIELDS.get(scope, frozenset())
        return found

    def query(
        self,
        drop_prompt_login: bool = False,
        signed_in_after: int | None = None,
        stepped_up: bool = False,
    ) -> str:
        """The request again as a query string (to carry through the sign-in page)."""
        d = self.destination
        params: dict[str, str] = {
            "client_id": d.client.client_id,
            "redirect_uri": d.redirect_uri,
            "response_type": "code",
            "response_mode": d.response_mode,
            "scope": " ".join(self.scopes),
        }
        optional = {
            "state": d.state,
            "nonce": self.nonce,
            "max_age": None if self.max_age is None else str(self.max_age),
            "login_hint": self.login_hint or None,
            "code_challenge": self.code_challenge or None,
            "code_challenge_method": "S256" if self.code_challenge else None,
            "openid2_realm": self.openid2_realm or None,
            "acr_values": " ".join(self.acr_values) or None,
            "ui_locales": self.ui_locales or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        prompt = self.prompt - {"login"} if drop_prompt_login else self.prompt
        if prompt:
            params["prompt"] = " ".join(sorted(prompt))
        after = signed_in_after if signed_in_after is not None else self.signed_in_after
        if after is not None:
            params[REAUTH_PARAMETER] = str(after)
        if stepped_up or self.stepped_up:
            params[STEP_UP_PARAMETER] = "1"
        return urlencode(params)


def single_values(args: Mapping[bytes, list[bytes]]) -> dict[str, list[str]]:
    """
    The request's parameters as text. Oversized or undecodable input is
    refused before anything else is read (L{NotForClient}: nothing about
    the request can be trusted yet).
    """
    params: dict[str, list[str]] = {}
    total = 0
    for key, values in args.items():
        for value in values:
            total += len(key) + len(value)
            if total > MAX_PARAMETERS_TOTAL:
                raise NotForClient(N_("The sign-in request is too large."))
        try:
            params[key.decode("utf-8")] = [v.decode("utf-8") for v in values]
        except UnicodeDecodeError:
            raise NotForClient(N_("The sign-in request is not valid UTF-8.")) from None
    return params


def _one(params: Mapping[str, list[str]], name: str, limit: int = MAX_PARAMETER) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise AuthorizeError("invalid_request", f"the parameter {name} is given more than once")
    if len(values[0]) > limit:
        raise AuthorizeError("invalid_request", f"the parameter {name} is too long")
    return values[0] or None


def destination(params: Mapping[str, list[str]], client: Client | None) -> Destination:
    """
    Where errors and the answer go, once the client is known: its redirect
    URI (exact match), the response mode and the state. L{NotForClient}
    when there is no such place.
    """
    try:
        client_id = _one(params, "client_id", 64)
        redirect_uri = _one(params, "redirect_uri")
    except AuthorizeError as e:
        # The description is the protocol's (for programs): quoted as it is.
        raise NotForClient(
            Text(N_("The sign-in request is malformed: %(reason)s."), reason=e.description)
        ) from None
    if not client_id:
        raise NotForClient(N_("The sign-in request names no client (client_id)."))
    if client is None or client.client_id != client_id:
        raise NotForClient(N_("The sign-in request names a client that Clickpass does not know."))
    if not redirect_uri:
        raise NotForClient(N_("The sign-in request has no redirect_uri."))
    if redirect_uri not in client.redirect_uris:
        raise NotForClient(
            N_("The sign-in request asks to send you to an address its site did not register.")
        )
    mode_values = params.get("response_mode") or ["query"]
    mode = mode_values[0] if len(mode_values) == 1 else ""
    state_values = params.get("state") or []
    state = state_values[0] if len(state_values) == 1 else None
    if state is not None and len(state) > MAX_STATE:
        state = None
    dest = Destination(
        client, redirect_uri, mode if mode in ("query", "form_post") else "query", state
    )
    if mode not in ("query", "form_post"):
        raise AuthorizeErrorAt(dest, "invalid_request", "response_mode must be query or form_post")
    if len(state_values) > 1 or (state_values and state is None):
        raise AuthorizeErrorAt(dest, "invalid_request", "state is repeated or too long")
    return dest


class AuthorizeErrorAt(AuthorizeError):
    """An L{AuthorizeError} that knows its L{Destination}."""

    def __init__(self, dest: Destination, error: str, description: str) -> None:
        super().__init__(error, description)
        self.destination = dest


def check(params: Mapping[str, list[str]], dest: Destination) -> AuthorizationRequest:
    """The checked request, or L{AuthorizeErrorAt} for the client."""
    try:
        return _check(params, dest)
    except AuthorizeErrorAt:
        raise
    except AuthorizeError as e:
        raise AuthorizeErrorAt(dest, e.error, e.description) from None


def _check(params: Mapping[str, list[str]], dest: Destination) -> AuthorizationRequest:
    client = dest.client
    for name in ("request", "request_uri", "registration"):
        if params.get(name):
            raise AuthorizeError(f"{name}_not_supported", f"the {name} parameter is not supported")
    response_type = _one(params, "response_type")
    if response_type != "code":
        raise AuthorizeError(
            "unsupported_response_type", "Clickpass answers only response_type=code"
        )
    scopes = _scopes(_one(params, "scope") or "", client)
    prompt = _prompt(_one(params, "prompt") or "")
    return AuthorizationRequest(
        destination=dest,
        scopes=scopes,
        nonce=_one(params, "nonce", MAX_NONCE),
        prompt=prompt,
        max_age=_non_negative(_one(params, "max_age", 12), "max_age"),
        login_hint=_one(params, "login_hint", 254) or "",
        code_challenge=_pkce(params, client),
        signed_in_after=_non_negative(_one(params, REAUTH_PARAMETER, 12), REAUTH_PARAMETER),
        openid2_realm=_openid2_realm(_one(params, "openid2_realm", MAX_REALM), dest.redirect_uri),
        acr_values=tuple(dict.fromkeys((_one(params, "acr_values", MAX_ACR_VALUES) or "").split())),
        stepped_up=_one(params, STEP_UP_PARAMETER, 1) == "1",
        ui_locales=_ui_locales(params.get("ui_locales") or []),
    )


def _ui_locales(values: list[str]) -> str:
    """
    The languages asked for, as far as they are read (a few short tags):
    only a hint, so too many, too long or repeated is never an error.
    """
    tags = (values[0] if values else "")[:MAX_UI_LOCALES].split()[:8]
    return " ".join(t for t in tags if len(t) <= 35)


def _openid2_realm(realm: str | None, redirect_uri: str) -> str:
    """
    The C{openid2_realm} if the redirect URI lies in it by OpenID 2.0's
    rules (so the client may learn the identifiers it was given there),
    and it is not a wildcard over a public suffix.
    """
    if realm is None:
        return ""
    parsed = TrustRoot.parse(realm)
    if parsed is None or not parsed.validateURL(redirect_uri):
        raise AuthorizeError("invalid_request", "openid2_realm does not cover the redirect_uri")
    if parsed.wildcard and wildcard_too_broad(str(parsed.host).lstrip(".").lower()):
        raise AuthorizeError("invalid_request", "openid2_realm is too broad")
    return realm


def _scopes(text: str, client: Client) -> tuple[str, ...]:
    asked = text.split(" ") if text else []
    if "openid" not in asked:
        raise AuthorizeError("invalid_scope", "the scope must include openid")
    # Scopes Clickpass does not know, or the client may not ask for, are
    # ignored (OpenID Connect Core 3.1.2.1), not refused.
    return tuple(dict.fromkeys(s for s in asked if s in client.scopes))


def _prompt(text: str) -> frozenset[str]:
    values = frozenset(p for p in text.split(" ") if p)
    unknown = values - PROMPTS
    if unknown:
        raise AuthorizeError("invalid_request", f"unknown prompt value {sorted(unknown)[0]!r}")
    if "none" in values and len(values) > 1:
        raise AuthorizeError("invalid_request", "prompt=none cannot be combined with another")
    return values


def _non_negative(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not text.isascii():
        raise AuthorizeError("invalid_request", f"{name} must be a number of seconds")
    return int(text)


def _pkce(params: Mapping[str, list[str]], client: Client) -> str:
    challenge = _one(params, "code_challenge", 128) or ""
    method = _one(params, "code_challenge_method", 16)
    if challenge:
        if method != "S256":
            raise AuthorizeError("invalid_request", "code_challenge_method must be S256")
        if not PKCE_PATTERN.match(challenge):
            raise AuthorizeError("invalid_request", "code_challenge is malformed")
        return challenge
    if method is not None:
        raise AuthorizeError("invalid_request", "code_challenge_method without code_challenge")
    if client.public:
        raise AuthorizeError("invalid_request", "a public client must use PKCE (S256)")
    return ""


def error_parameters(error: AuthorizeErrorAt, issuer: str) -> dict[str, str]:
    """The parameters of an error response (with RFC 9207's C{iss})."""
    params = {"error": error.error, "error_description": error.description}
    if error.destination.state is not None:
        params["state"] = error.destination.state
    params["iss"] = issuer
    return params


def success_parameters(code: str, dest: Destination, issuer: str) -> dict[str, str]:
    """The parameters of a successful answer (with RFC 9207's C{iss})."""
    params = {"code": code}
    if dest.state is not None:
        params["state"] = dest.state
    params["iss"] = issuer
    return params


def redirect_url(redirect_uri: str, params: Mapping[str, str]) -> str:
    """C{redirect_uri} with C{params} added to its query."""
    joiner = "&" if "?" in redirect_uri else "?"
    return redirect_uri + joiner + urlencode(params)

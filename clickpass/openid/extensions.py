"""
SReg 1.1 and AX 1.0 fetch: what a relying party asked for, what we can
release, and the extension responses that carry it.

We release only three things, and only with the person's consent: email,
nickname and full name. For a person who signs in through an upstream
provider (OpenID Connect / OAuth 2), these come from that provider's
claims where it gave them (name; nickname or preferred_username), else from
the account. The email is always the account's own, and only once verified
(by a link mailed to it, an upstream provider's verified claim for that
account, or an operator): an unverified or placeholder address is never
released.
Anything else a site asks for is simply not sent.

Runs in the same thread as the rest of the library work; nothing here
touches the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openid.extensions import ax, sreg
from openid.message import BARE_NS

from clickpass.accounts.service import Account
from clickpass.i18n import N_

FIELD_LABELS = {
    "email": N_("Email address"),
    "nickname": N_("Nickname"),
    "fullname": N_("Full name"),
}

AX_TYPES = {
    "http://axschema.org/contact/email": "email",
    "http://schema.openid.net/contact/email": "email",
    "http://axschema.org/namePerson/friendly": "nickname",
    "http://schema.openid.net/namePerson/friendly": "nickname",
    "http://axschema.org/namePerson": "fullname",
    "http://schema.openid.net/namePerson": "fullname",
}


@dataclass(frozen=True)
class Requested:
    """The attribute requests of one checkid request."""

    sreg: Any | None
    ax: Any | None
    fields: frozenset[str]
    problem: str = ""


NOTHING_REQUESTED = Requested(None, None, frozenset())


def requested(openid_request: Any) -> Requested:
    """
    Parse SReg and AX fetch requests; a malformed one is ignored, with a note.

    A request whose message holds nothing outside the OpenID namespace (most
    sign-ins) asks for nothing, and is answered without the library's
    parsing: that parsing was 5% of a worker's Python time per sign-in.
    """
    if not _has_extension_arguments(openid_request.message):
        return NOTHING_REQUESTED
    return parse(openid_request)


def parse(openid_request: Any) -> Requested:
    """L{requested}, always through the library's parsing."""
    fields: set[str] = set()
    problems = []
    try:
        sreg_request = sreg.SRegRequest.fromOpenIDRequest(openid_request)
    except ValueError as e:
        # For one, the request mapped the "sreg" alias to another namespace.
        sreg_request = None
        problems.append(f"the site's simple registration request was malformed ({e})")
    if sreg_request is not None and not sreg_request.wereFieldsRequested():
        sreg_request = None
    if sreg_request is not None:
        fields.update(f for f in sreg_request.allRequestedFields() if f in FIELD_LABELS)
    try:
        ax_request = ax.FetchRequest.fromOpenIDRequest(openid_request)
    except (ax.AXError, KeyError, ValueError) as e:
        ax_request = None
        problems.append(f"the site's attribute exchange request was malformed ({e})")
    if ax_request is not None:
        for type_uri in ax_request.requested_attributes:
            if type_uri in AX_TYPES:
                fields.add(AX_TYPES[type_uri])
    return Requested(sreg_request, ax_request, frozenset(fields), "; ".join(problems))


def required(req: Requested) -> frozenset[str]:
    """
    Which of C{req}'s fields the site marked required (SReg C{required}, AX
    C{required="true"}); the rest it asked for as optional.
    """
    fields: set[str] = set()
    if req.sreg is not None:
        fields.update(f for f in req.sreg.required if f in FIELD_LABELS)
    if req.ax is not None:
        for type_uri, info in req.ax.requested_attributes.items():
            if type_uri in AX_TYPES and info.required:
                fields.add(AX_TYPES[type_uri])
    return frozenset(fields)


def _has_extension_arguments(message: Any) -> bool:
    """
    Whether C{message} holds an argument, or declares a namespace, other than
    its OpenID namespace's. python-openid files every extension argument
    under its extension's namespace, declared or (OpenID 1) implied; an
    undeclared alias in an OpenID 2 message stays in the OpenID namespace,
    where no extension reads it.
    """
    openid_ns = message.getOpenIDNamespace()
    if any(uri != openid_ns for uri in message.namespaces.iterNamespaceURIs()):
        return True
    return any(ns != openid_ns and ns is not BARE_NS for ns, _key in message.args)


PLACEHOLDER_EMAIL_DOMAIN = "@upstream.invalid"
MAX_VALUE = 256


def _claim(claims: Mapping[str, Any], *names: str) -> str:
    """The first non-empty string claim among C{names}, one line, bounded."""
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            value = " ".join(value.split())[:MAX_VALUE]
            if value:
                return value
    return ""


def values_for(account: Account, claims: Mapping[str, Any] | None = None) -> dict[str, str]:
    """
    What we hold for each field (fields we do not hold are absent).
    C{claims} are the upstream claims of the account's sign-in provider
    (L{clickpass.upstream.service.UpstreamService.claims_for}); they win
    over the account's names. The email is the account's, when verified.
    """
    claims = claims or {}
    values: dict[str, str] = {}
    # An address is released only as the account's own, once verified: the
    # account that proved it owns it. A provider's claim never stands in for
    # it (another account may own that address).
    email = account.email if account.email_verified else ""
    if email.endswith(PLACEHOLDER_EMAIL_DOMAIN) or email.endswith(".invalid"):
        email = ""
    if email:
        values["email"] = email
    display = account.display_name
    given_family = " ".join(
        p for p in (_claim(claims, "given_name"), _claim(claims, "family_name")) if p
    )
    fullname = _claim(claims, "name") or given_family or display
    nickname = _claim(claims, "nickname", "preferred_username", "given_name") or display
    if fullname:
        values["fullname"] = fullname
    if nickname:
        values["nickname"] = nickname
    return values


def release(
    wanted: frozenset[str], account: Account, claims: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The values that would be released for C{wanted}, by field name."""
    held = values_for(account, claims)
    return {f: held[f] for f in sorted(wanted) if f in held}


def add_to_response(response: Any, req: Requested, released: dict[str, str]) -> None:
    """Add the SReg and AX fetch responses for C{released} to an id_res response."""
    if req.sreg is not None:
        data = {f: v for f, v in released.items() if f in req.sreg.allRequestedFields()}
        response.addExtension(sreg.SRegResponse.extractResponse(req.sreg, data))
    if req.ax is not None:
        fetch = ax.FetchResponse(request=req.ax)
        for type_uri in req.ax.requested_attributes:
            field = AX_TYPES.get(type_uri)
            if field is not None and field in released:
                fetch.addValue(type_uri, released[field])
        response.addExtension(fetch)

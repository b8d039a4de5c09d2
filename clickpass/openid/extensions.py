"""
SReg 1.1 and AX 1.0 fetch: what a relying party asked for, what we can
release, and the extension responses that carry it.

We release only three things, and only with the person's consent: email,
nickname and full name (both from the account's display name). Anything
else a site asks for is simply not sent.

Runs in the same thread as the rest of the library work; nothing here
touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openid.extensions import ax, sreg

from clickpass.accounts.service import Account

FIELD_LABELS = {"email": "Email address", "nickname": "Nickname", "fullname": "Full name"}

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


def requested(openid_request: Any) -> Requested:
    """Parse SReg and AX fetch requests; a malformed one is ignored, with a note."""
    fields: set[str] = set()
    problem = ""
    sreg_request = sreg.SRegRequest.fromOpenIDRequest(openid_request)
    if sreg_request is not None and not sreg_request.wereFieldsRequested():
        sreg_request = None
    if sreg_request is not None:
        fields.update(f for f in sreg_request.allRequestedFields() if f in FIELD_LABELS)
    try:
        ax_request = ax.FetchRequest.fromOpenIDRequest(openid_request)
    except (ax.AXError, KeyError, ValueError) as e:
        ax_request = None
        problem = f"the site's attribute exchange request was malformed ({e})"
    if ax_request is not None:
        for type_uri in ax_request.requested_attributes:
            if type_uri in AX_TYPES:
                fields.add(AX_TYPES[type_uri])
    return Requested(sreg_request, ax_request, frozenset(fields), problem)


def values_for(account: Account) -> dict[str, str]:
    """What we hold for each field (fields we do not hold are absent)."""
    values = {"email": account.email}
    if account.display_name:
        values["nickname"] = account.display_name
        values["fullname"] = account.display_name
    return values


def release(wanted: frozenset[str], account: Account) -> dict[str, str]:
    """The values that would be released for C{wanted}, by field name."""
    held = values_for(account)
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

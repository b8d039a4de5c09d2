"""
What a partner receives in the signed positive assertion: the profile
(SReg 1.1 and, when the site asked with AX, AX fetch) and the Clickpass
partner extension saying what happened: C{register}, C{connect} or
C{login}, and which registered site it is for.

Runs in the thread that builds and signs the response; it must never
touch the database, and must add nothing the person did not release.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openid.extension import Extension
from openid.extensions import ax, sreg

from clickpass.openid.extensions import Requested
from clickpass.partners import fields

NS_URI = "http://clickpass.com/ns/partner/1.0"
NS_ALIAS = "clickpass"


class PartnerOutcome(Extension):
    """C{openid.clickpass.outcome} and C{openid.clickpass.site}, signed with the rest."""

    ns_uri = NS_URI
    ns_alias = NS_ALIAS

    def __init__(self, outcome: str, site: str) -> None:
        self.outcome = outcome
        self.site = site

    def getExtensionArgs(self) -> dict[str, str]:
        return {"outcome": self.outcome, "site": self.site}


def requested_fields(wanted: Requested) -> tuple[set[str], set[str]]:
    """The profile fields a checkid request asks for, and those it requires."""
    asked: set[str] = set()
    required: set[str] = set()
    if wanted.sreg is not None:
        asked.update(f for f in wanted.sreg.allRequestedFields() if f in fields.FIELDS)
        required.update(f for f in wanted.sreg.required if f in fields.FIELDS)
    if wanted.ax is not None:
        for type_uri, attribute in wanted.ax.requested_attributes.items():
            name = fields.field_for_ax_type(type_uri)
            if name is not None:
                asked.add(name)
                if attribute.required:
                    required.add(name)
    return asked, required


def decorator(
    outcome: str, site: str, values: dict[str, str], wanted: Requested
) -> Callable[[Any], None]:
    """A function adding the profile and the outcome to a positive response."""

    def decorate(response: Any) -> None:
        if values or wanted.sreg is not None:
            ns = wanted.sreg.ns_uri if wanted.sreg is not None else sreg.ns_uri_1_1
            response.addExtension(sreg.SRegResponse(dict(values), ns))
        if wanted.ax is not None:
            fetch = ax.FetchResponse(request=wanted.ax)
            for type_uri in wanted.ax.requested_attributes:
                name = fields.field_for_ax_type(type_uri)
                if name is not None and name in values:
                    fetch.addValue(type_uri, values[name])
            response.addExtension(fetch)
        response.addExtension(PartnerOutcome(outcome, site))

    return decorate

"""
Discovery documents: how relying parties find our endpoint, for the OP
Identifier (the site root, which starts directed identity) and for every
claimed identifier under C{/id/}.

Yadis XRDS is served when the client asks for it (Accept header) and
advertised otherwise (X-XRDS-Location header and meta tag); HTML link
discovery (openid2.provider, openid2.local_id) is there for relying parties
that only read HTML.

Pure functions of URLs: nothing here reads the database or the network.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

from twisted.web.server import Request

XRDS_CONTENT_TYPE = b"application/xrds+xml"
OPENID2_SERVER = "http://specs.openid.net/auth/2.0/server"
OPENID2_SIGNON = "http://specs.openid.net/auth/2.0/signon"
SREG_11 = "http://openid.net/extensions/sreg/1.1"
AX_10 = "http://openid.net/srv/ax/1.0"
# PAPE 1.0, and the policies a sign-in here can meet (section 4 of the
# extension: an OP advertises the policies it supports as service types).
PAPE_10 = "http://specs.openid.net/extensions/pape/1.0"
PAPE_POLICIES = (
    "http://schemas.openid.net/pape/policies/2007/06/multi-factor",
    "http://schemas.openid.net/pape/policies/2007/06/multi-factor-physical",
    "http://schemas.openid.net/pape/policies/2007/06/phishing-resistant",
)


def endpoint_url(base_url: str) -> str:
    return base_url + "openid"


def op_xrds_url(base_url: str) -> str:
    return base_url + "openid/xrds"


def identifier_xrds_url(base_url: str, opaque: str) -> str:
    return base_url + "id/" + opaque + "/xrds"


def _xrds(service_type: str, endpoint: str, local_id: str | None) -> bytes:
    local = f"\n      <LocalID>{escape(local_id)}</LocalID>" if local_id else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<xrds:XRDS xmlns:xrds="xri://$xrds" xmlns="xri://$xrd*($v*2.0)">\n'
        "  <XRD>\n"
        '    <Service priority="0">\n'
        f"      <Type>{service_type}</Type>\n"
        f"      <Type>{SREG_11}</Type>\n"
        f"      <Type>{AX_10}</Type>\n"
        f"      <Type>{PAPE_10}</Type>\n"
        + "".join(f"      <Type>{policy}</Type>\n" for policy in PAPE_POLICIES)
        + f"      <URI>{escape(endpoint)}</URI>{local}\n"
        "    </Service>\n"
        "  </XRD>\n"
        "</xrds:XRDS>\n"
    ).encode()


def op_xrds(base_url: str) -> bytes:
    """The XRDS of the OP Identifier: an OpenID 2.0 server (directed identity)."""
    return _xrds(OPENID2_SERVER, endpoint_url(base_url), None)


def identifier_xrds(base_url: str, identifier: str) -> bytes:
    """The XRDS of one claimed identifier."""
    return _xrds(OPENID2_SIGNON, endpoint_url(base_url), identifier)


def wants_xrds(request: Request) -> bool:
    """Does the client prefer an XRDS document (Yadis content negotiation)?"""
    accept = (request.getHeader(b"accept") or b"").decode("latin-1").lower()
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        if fields[0] != "application/xrds+xml":
            continue
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def serve_xrds(request: Request, document: bytes) -> bytes:
    request.setHeader(b"content-type", XRDS_CONTENT_TYPE + b"; charset=utf-8")
    request.setHeader(b"cache-control", b"public, max-age=300")
    request.setHeader(b"vary", b"Accept")
    return document


def op_discovery(request: Request, base_url: str) -> bytes | None:
    """
    For the home page handler: advertise the OP Identifier's XRDS (header)
    and, when the client asked for XRDS, return the document to send
    instead of the page. Returns L{None} when the page should be rendered
    (with L{op_head_html} in its head).
    """
    request.setHeader(b"x-xrds-location", op_xrds_url(base_url).encode("utf-8"))
    request.setHeader(b"vary", b"Accept")
    if wants_xrds(request):
        return serve_xrds(request, op_xrds(base_url))
    return None


def op_head_html(base_url: str) -> Markup:
    """Tags for the home page's head: Yadis meta tag and HTML discovery."""
    return Markup(
        '<meta http-equiv="X-XRDS-Location" content="{xrds}">\n'
        '<link rel="openid2.provider" href="{endpoint}">\n'
    ).format(xrds=op_xrds_url(base_url), endpoint=endpoint_url(base_url))


def identifier_head_html(base_url: str, identifier: str, opaque: str) -> Markup:
    """Tags for a claimed identifier's page."""
    return Markup(
        '<meta http-equiv="X-XRDS-Location" content="{xrds}">\n'
        '<link rel="openid2.provider" href="{endpoint}">\n'
        '<link rel="openid2.local_id" href="{identifier}">\n'
    ).format(
        xrds=identifier_xrds_url(base_url, opaque),
        endpoint=endpoint_url(base_url),
        identifier=identifier,
    )

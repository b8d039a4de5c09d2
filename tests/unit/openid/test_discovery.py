"""Discovery documents and content negotiation."""

from __future__ import annotations

from typing import cast

import pytest
from openid.yadis.etxrd import getTypeURIs, iterServices, parseXRDS

from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from clickpass.openid import discovery

BASE = "https://login.example.net/"


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("application/xrds+xml", True),
        ("text/html; q=0.3, application/xhtml+xml; q=0.5, application/xrds+xml", True),
        ("text/html, application/xrds+xml;q=0", False),
        ("text/html", False),
        ("", False),
        ("application/xrds+xml;q=bogus", False),
    ],
)
def test_wants_xrds(accept: str, wanted: bool) -> None:
    """XRDS is served when the client lists it with a non-zero quality."""
    request = DummyRequest([b""])
    if accept:
        request.requestHeaders.setRawHeaders(b"accept", [accept.encode()])
    assert discovery.wants_xrds(cast(Request, request)) is wanted


def test_op_xrds_parses_as_a_server_service() -> None:
    """The OP Identifier's XRDS names our endpoint as an OpenID 2.0 server."""
    services = list(iterServices(parseXRDS(discovery.op_xrds(BASE))))
    assert len(services) == 1
    assert "http://specs.openid.net/auth/2.0/server" in getTypeURIs(services[0])
    assert discovery.op_xrds(BASE).count(b"<URI>https://login.example.net/openid</URI>") == 1


def test_identifier_xrds_names_the_local_id() -> None:
    """A claimed identifier's XRDS is a signon service with the identifier as LocalID."""
    identifier = BASE + "id/abc"
    document = discovery.identifier_xrds(BASE, identifier)
    services = list(iterServices(parseXRDS(document)))
    assert "http://specs.openid.net/auth/2.0/signon" in getTypeURIs(services[0])
    assert b"<LocalID>https://login.example.net/id/abc</LocalID>" in document


def test_op_discovery_on_the_home_page() -> None:
    """The home page advertises the XRDS, and serves it to a client asking for it."""
    browser = DummyRequest([b""])
    assert discovery.op_discovery(cast(Request, browser), BASE) is None
    assert browser.responseHeaders.getRawHeaders(b"x-xrds-location") == [
        b"https://login.example.net/openid/xrds"
    ]
    yadis = DummyRequest([b""])
    yadis.requestHeaders.setRawHeaders(b"accept", [b"application/xrds+xml"])
    assert discovery.op_discovery(cast(Request, yadis), BASE) == discovery.op_xrds(BASE)
    content_type = yadis.responseHeaders.getRawHeaders(b"content-type")
    assert content_type and content_type[0].startswith(b"application/xrds+xml")


def test_head_tags_are_escaped() -> None:
    """The link tags carry the URLs, HTML-escaped."""
    tags = str(discovery.identifier_head_html('https://x/"<', 'https://x/"</id/a', "a"))
    assert "&#34;&lt;" in tags
    assert '"<' not in tags

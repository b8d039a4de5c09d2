"""Relying-party discovery: address filtering, limits, and the verdicts."""

from __future__ import annotations

from typing import Any

import pytest
from openid.server.trustroot import TrustRoot

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from clickpass.openid.rp_discovery import (
    CheckedEndpoint,
    RefusedAddress,
    RPVerifier,
    Verdict,
    allowed_addresses,
    is_public_address,
    parse_realm,
)
from clickpass.openid.settings import OpenIDSettings


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("not an address", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    """Only globally routable unicast addresses count as public."""
    assert is_public_address(address) is public


def test_mixed_answers_are_refused() -> None:
    """A name resolving to any non-public address is refused entirely (rebinding)."""
    assert allowed_addresses(["93.184.216.34", "10.0.0.1"], allow_private=False) == []
    assert allowed_addresses([], allow_private=False) == []
    assert allowed_addresses(["93.184.216.34"], allow_private=False) == ["93.184.216.34"]
    assert allowed_addresses(["127.0.0.1"], allow_private=True) == ["127.0.0.1"]


def _endpoint(
    reactor: MemoryReactorClock, host: str, answer: list[str], allow_private: bool
) -> tuple[CheckedEndpoint, list[str]]:
    asked: list[str] = []

    def resolve(name: str, port: int) -> Deferred[list[str]]:
        asked.append(name)
        return succeed(answer)

    return CheckedEndpoint(reactor, resolve, host, 80, False, allow_private, 5.0), asked


def test_endpoint_refuses_a_name_resolving_to_a_private_address() -> None:
    """A host whose name resolves to a private address is never connected to."""
    reactor = MemoryReactorClock()
    endpoint, asked = _endpoint(reactor, "rp.example", ["10.0.0.7"], allow_private=False)
    d = endpoint.connect(Factory.forProtocol(Protocol))
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert asked == ["rp.example"]
    assert failures and failures[0].check(RefusedAddress)
    assert reactor.tcpClients == []


def test_endpoint_refuses_a_loopback_literal_without_resolving() -> None:
    """An address literal is checked as it is, with no lookup."""
    reactor = MemoryReactorClock()
    endpoint, asked = _endpoint(reactor, "127.0.0.1", [], allow_private=False)
    failures: list[Failure] = []
    endpoint.connect(Factory.forProtocol(Protocol)).addErrback(failures.append)
    assert asked == []
    assert failures and failures[0].check(RefusedAddress)
    assert reactor.tcpClients == []


def test_endpoint_connects_to_the_checked_address() -> None:
    """A public name is connected to at the address that was checked."""
    reactor = MemoryReactorClock()
    endpoint, _ = _endpoint(reactor, "rp.example", ["93.184.216.34"], allow_private=False)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert [(c[0], c[1]) for c in reactor.tcpClients] == [("93.184.216.34", 80)]


def test_endpoint_allows_private_when_configured() -> None:
    """With allow_private_rp_discovery, loopback is fetched (labs and tests)."""
    reactor = MemoryReactorClock()
    endpoint, _ = _endpoint(reactor, "127.0.0.1", [], allow_private=True)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert [(c[0], c[1]) for c in reactor.tcpClients] == [("127.0.0.1", 80)]


# The verdicts, against a fake relying party served in memory.

REALM = "https://rp.example/"
RETURN_TO = "https://rp.example/openid/return"


def xrds(*return_tos: str) -> bytes:
    services = "".join(
        "<Service><Type>http://specs.openid.net/auth/2.0/return_to</Type>"
        f"<URI>{url}</URI></Service>"
        for url in return_tos
    )
    return (
        '<?xml version="1.0"?><xrds:XRDS xmlns:xrds="xri://$xrds" '
        f'xmlns="xri://$xrd*($v*2.0)"><XRD>{services}</XRD></xrds:XRDS>'
    ).encode()


class Page(Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes, headers: dict[bytes, bytes]) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", self.content_type)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        return self.body


class Site(Resource):
    """A relying party: its realm page, and an XRDS elsewhere."""

    def __init__(self, root: Resource, others: dict[bytes, Resource] | None = None) -> None:
        super().__init__()
        self.root = root
        for name, child in (others or {}).items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self.root


class Hang(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> Any:
        return NOT_DONE_YET


def verify(resource: Resource, return_to: str = RETURN_TO, **settings: Any) -> Verdict:
    clock = Clock()
    stub = StubTreq(resource)
    verifier = RPVerifier(
        clock,
        OpenIDSettings(**settings),
        http_client=stub,
        in_thread=lambda fn, *args: succeed(fn(*args)),
    )
    d = Deferred.fromCoroutine(verifier.verify(REALM, return_to))
    stub.flush()
    results: list[Verdict] = []
    d.addCallback(results.append)
    if not results:
        clock.advance(OpenIDSettings(**settings).rp_discovery_timeout + 1)
        stub.flush()
    assert results, "the verdict never came"
    return results[0]


def test_verified_when_the_realm_lists_the_return_to() -> None:
    """A return_to listed in the realm's XRDS is verified."""
    page = Page(xrds("https://rp.example/openid/"), b"application/xrds+xml", {})
    assert verify(Site(page)).outcome == "verified"


def test_mismatch_when_the_realm_lists_other_addresses() -> None:
    """A return_to that the realm's XRDS does not list is refused."""
    page = Page(xrds("https://rp.example/elsewhere"), b"application/xrds+xml", {})
    verdict = verify(Site(page))
    assert verdict.outcome == "mismatch"
    assert verdict.refused


def test_xrds_location_header_is_followed() -> None:
    """An HTML realm page pointing at its XRDS (header) is followed once."""
    document = Page(xrds(RETURN_TO), b"application/xrds+xml", {})
    html = Page(b"<html></html>", b"text/html", {b"x-xrds-location": b"https://rp.example/yadis"})
    site = Resource()
    site.putChild(b"", html)
    site.putChild(b"yadis", document)
    assert verify(site).outcome == "verified"
    assert document.requests == 1


def test_xrds_meta_tag_is_followed() -> None:
    """An HTML realm page pointing at its XRDS (meta tag) is followed."""
    document = Page(xrds(RETURN_TO), b"application/xrds+xml", {})
    html = Page(
        b'<html><head><meta http-equiv="X-XRDS-Location" '
        b'content="https://rp.example/yadis"></head></html>',
        b"text/html",
        {},
    )
    site = Resource()
    site.putChild(b"", html)
    site.putChild(b"yadis", document)
    assert verify(site).outcome == "verified"


def test_unverifiable_without_xrds() -> None:
    """A realm publishing nothing cannot be verified (not refused)."""
    verdict = verify(Site(Page(b"<html>hello</html>", b"text/html", {})))
    assert verdict.outcome == "unverifiable"
    assert not verdict.refused


def test_unverifiable_when_too_large() -> None:
    """A document larger than the limit is not read."""
    page = Page(xrds(RETURN_TO) + b" " * 5000, b"application/xrds+xml", {})
    verdict = verify(Site(page), rp_discovery_max_bytes=1000)
    assert verdict.outcome == "unverifiable"
    assert "too large" in verdict.reason


def test_unverifiable_when_not_answering_in_time() -> None:
    """A realm that does not answer within the time limit is given up on."""
    verdict = verify(Site(Hang()), rp_discovery_timeout=2.0)
    assert verdict.outcome == "unverifiable"
    assert "in time" in verdict.reason


def test_unverifiable_on_garbage() -> None:
    """A document that is not XRDS is no verdict of mismatch."""
    verdict = verify(Site(Page(b"<not-xrds/>", b"application/xrds+xml", {})))
    assert verdict.outcome == "unverifiable"


def test_a_bad_realm_is_refused() -> None:
    """A realm that is not a URL pattern is refused outright."""
    verifier = RPVerifier(Clock(), OpenIDSettings(), http_client=object())
    results: list[Verdict] = []
    Deferred.fromCoroutine(verifier.verify("not a realm", RETURN_TO)).addCallback(results.append)
    assert results[0].outcome == "mismatch"


@pytest.mark.parametrize(
    "realm",
    [
        "http://rp.example/",
        "https://*.rp.example:8443/path/",
        "http://*.com/",
        "not a url",
        "http://rp.example/" + "x" * 600,
    ],
)
def test_parse_realm_is_the_library_parse(realm: str) -> None:
    """The same pattern as TrustRoot.parse, kept for short realms only."""
    ours, theirs = parse_realm(realm), TrustRoot.parse(realm)
    if theirs is None:
        assert ours is None
        return
    assert ours is not None
    fields = ("proto", "host", "port", "path", "wildcard", "unparsed")
    assert [getattr(ours, f) for f in fields] == [getattr(theirs, f) for f in fields]
    assert ours.isSane() == theirs.isSane()
    assert (parse_realm(realm) is ours) == (len(realm) <= 512)

"""
Relying-party discovery: before we send a person back to a return_to URL,
fetch the realm's XRDS (Yadis) and check that the relying party lists that
return_to. It protects people from open redirectors inside a realm.

Fetching goes through treq on the reactor, never blocking: one overall
time limit, a size limit on every document, no redirects followed, and no
connection to loopback, private, link-local or otherwise non-public
addresses unless C{[openid] allow_private_rp_discovery} says so. The
address check is made on the resolved addresses themselves, at connect
time, so a name that resolves to a private address is refused too.

This module must never fetch anything but the realm's discovery documents,
and must never let a failure of the relying party's site become an error
of ours: failures are a verdict ("could not verify"), not an exception.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from openid.server.trustroot import TrustRoot, _extractReturnURL, returnToMatches
from openid.yadis.etxrd import XRDSError
from openid.yadis.parsehtml import MetaNotFound, findHTMLMeta
from openid.yadis.services import applyFilter

import treq
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocolFactory, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from clickpass.i18n import N_
from clickpass.openid.hardening import for_log
from clickpass.openid.settings import OpenIDSettings

log = Logger()

XRDS_TYPE = "application/xrds+xml"
CACHE_SECONDS = 300.0
CACHE_ENTRIES = 1000

# Realms parsed, kept: a sign-in parses its realm twice, and the same few
# realms come back all day. Bounded in count and in the length of a realm.
REALM_CACHE_ENTRIES = 1024
REALM_CACHE_MAX_LENGTH = 512

Resolver = Callable[[str, int], Awaitable[list[str]]]


class RefusedAddress(ConnectError):
    """The host resolves to an address we do not fetch from."""


class TooLarge(Exception):
    """A discovery document is larger than allowed."""


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address, false otherwise."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_global
        and not ip.is_multicast
        and not ip.is_reserved
        and not ip.is_loopback
        and not ip.is_link_local
        and not ip.is_private
        and not ip.is_unspecified
    )


def allowed_addresses(addresses: list[str], allow_private: bool) -> list[str]:
    """
    The addresses we may connect to. If any address of a name is not
    public, none is used: a name that mixes public and private addresses is
    exactly what a rebinding attack looks like.
    """
    if allow_private:
        return list(addresses)
    if not addresses or not all(is_public_address(a) for a in addresses):
        return []
    return list(addresses)


def system_resolver(reactor: Any) -> Resolver:
    """Resolve with getaddrinfo in the reactor's thread pool."""

    def resolve(host: str, port: int) -> Awaitable[list[str]]:
        def lookup() -> list[str]:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            seen: list[str] = []
            for info in infos:
                addr = str(info[4][0])
                if addr not in seen:
                    seen.append(addr)
            return seen

        d: defer.Deferred[list[str]] = deferToThreadPool(reactor, reactor.getThreadPool(), lookup)
        return d

    return resolve


@implementer(IStreamClientEndpoint)
class CheckedEndpoint:
    """Resolves, refuses non-public addresses, then connects to an allowed one."""

    def __init__(
        self,
        reactor: Any,
        resolve: Resolver,
        host: str,
        port: int,
        tls: bool,
        allow_private: bool,
        timeout: float,
    ) -> None:
        self._reactor = reactor
        self._resolve = resolve
        self._host = host
        self._port = port
        self._tls = tls
        self._allow_private = allow_private
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> Any:
        host = self._host.strip("[]")
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            addresses = await self._resolve(host, self._port)
        usable = allowed_addresses(addresses, self._allow_private)
        if not usable:
            raise RefusedAddress(
                string=f"{self._host} resolves to a non-public address; not fetched"
            )
        error: Exception | None = None
        for address in usable:
            try:
                return await self._endpoint_for(address).connect(factory)
            except ConnectError as e:
                error = e
        assert error is not None
        raise error

    def _endpoint_for(self, address: str) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint
        if ":" in address:
            endpoint = TCP6ClientEndpoint(self._reactor, address, self._port, self._timeout)
        else:
            endpoint = TCP4ClientEndpoint(self._reactor, address, self._port, self._timeout)
        if self._tls:
            creator = BrowserLikePolicyForHTTPS().creatorForNetloc(
                self._host.encode("idna"), self._port
            )
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


@implementer(IAgentEndpointFactory)
class CheckedEndpointFactory:
    """An Agent endpoint factory that only reaches allowed addresses."""

    def __init__(
        self, reactor: Any, resolve: Resolver, allow_private: bool, timeout: float
    ) -> None:
        self._reactor = reactor
        self._resolve = resolve
        self._allow_private = allow_private
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> CheckedEndpoint:
        scheme = uri.scheme.decode("ascii")
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {scheme}")
        return CheckedEndpoint(
            self._reactor,
            self._resolve,
            uri.host.decode("ascii"),
            int(uri.port),
            scheme == "https",
            self._allow_private,
            self._timeout,
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a return_to against the realm's published list."""

    outcome: Literal["verified", "mismatch", "unverifiable"]
    # Why not verified: part of a sentence for the person (marked with N_).
    reason: str = ""

    @property
    def refused(self) -> bool:
        return self.outcome == "mismatch"


@dataclass(frozen=True)
class _Discovered:
    return_tos: list[str] | None
    reason: str


@functools.lru_cache(maxsize=REALM_CACHE_ENTRIES)
def _parse_realm_cached(realm: str) -> TrustRoot | None:
    return TrustRoot.parse(realm)


def parse_realm(realm: str) -> TrustRoot | None:
    """
    C{TrustRoot.parse(realm)}: the realm as a URL pattern, or L{None} when it
    is not one. What it returns is shared between calls: do not change it.
    """
    if len(realm) > REALM_CACHE_MAX_LENGTH:
        return TrustRoot.parse(realm)
    return _parse_realm_cached(realm)


class RPVerifier:
    """Verifies return_to URLs by relying-party discovery, with a short cache."""

    def __init__(
        self,
        reactor: Any,
        settings: OpenIDSettings,
        http_client: Any | None = None,
        resolve: Resolver | None = None,
        in_thread: Callable[..., defer.Deferred[Any]] | None = None,
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self._in_thread = in_thread or (
            lambda fn, *args: deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)
        )
        if http_client is None:
            factory = CheckedEndpointFactory(
                reactor,
                resolve or system_resolver(reactor),
                settings.allow_private_rp_discovery,
                settings.rp_discovery_timeout,
            )
            http_client = treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, factory))
        self._http: Any = http_client
        self._cache: dict[str, tuple[float, _Discovered]] = {}

    async def verify(self, realm: str, return_to: str) -> Verdict:
        """Check C{return_to} against what C{realm} publishes; never raises."""
        tr = parse_realm(realm)
        if tr is None:
            return Verdict("mismatch", N_("the realm is not a valid URL pattern"))
        found = await self._discover(tr.buildDiscoveryURL())
        if found.return_tos is None:
            return Verdict("unverifiable", found.reason)
        if returnToMatches(found.return_tos, return_to):
            return Verdict("verified")
        return Verdict("mismatch", N_("the site does not list this return address in its realm"))

    async def _discover(self, url: str) -> _Discovered:
        now = self._reactor.seconds()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            found = await within(
                self._reactor, self._settings.rp_discovery_timeout, self._fetch_and_parse(url)
            )
        except TimedOut:
            found = _Discovered(None, _reason(TimedOut(), True))
        except Exception as e:
            found = _Discovered(None, _reason(e, False))
            if not isinstance(e, RefusedAddress | TooLarge):
                log.info(
                    "relying-party discovery of {url} failed: {error}",
                    url=for_log(url),
                    error=for_log(e),
                )
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[url] = (now + CACHE_SECONDS, found)
        return found

    async def _fetch_and_parse(self, url: str) -> _Discovered:
        status, headers, body = await self._get(url)
        if status != 200:
            return _Discovered(None, f"the site answered discovery with status {status}")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        xrds: bytes | None = None
        if content_type == XRDS_TYPE:
            xrds = body
        else:
            location = headers.get("x-xrds-location")
            if not location and content_type in ("text/html", "application/xhtml+xml"):
                location = _meta_location(body)
            if location:
                status, headers, body = await self._get(location)
                if status == 200:
                    xrds = body
        if xrds is None:
            return _Discovered(None, "the site publishes no relying-party discovery document")
        # XML parsing of a document from the network: off the reactor thread.
        return_tos: list[str] | None = await self._in_thread(_return_tos, url, xrds)
        if not return_tos:
            return _Discovered(None, "the site's discovery document lists no return address")
        return _Discovered(return_tos, "")

    async def _get(self, url: str) -> tuple[int, dict[str, str], bytes]:
        return await bounded_get(
            self._http,
            url,
            self._settings.rp_discovery_max_bytes,
            {"Accept": [f"{XRDS_TYPE}, text/html;q=0.3"]},
        )


T = TypeVar("T")


class TimedOut(Exception):
    """The work given to L{within} did not finish in time (and was cancelled)."""


async def within(reactor: Any, seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """
    Await C{work}, cancelling it after C{seconds}. A cancelled fetch fails
    with whatever its transport says (not always CancelledError), so any
    failure after the deadline is reported as L{TimedOut}.
    """
    d = defer.Deferred.fromCoroutine(work)
    timed_out = False

    def give_up() -> None:
        nonlocal timed_out
        timed_out = True
        d.cancel()

    timer = reactor.callLater(seconds, give_up)
    try:
        return await d
    except Exception:
        if timed_out:
            raise TimedOut() from None
        raise
    finally:
        if timer.active():
            timer.cancel()


async def bounded_get(
    http: Any, url: str, limit: int, headers: dict[str, list[str]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """
    GET C{url} with treq client C{http}, following no redirect, and read at
    most C{limit} bytes of its body; raise L{TooLarge} past that. Returns the
    status, the headers (lowercase names, last value) and the body.
    """
    response = await http.get(url, headers=headers or {}, allow_redirects=False, unbuffered=True)
    found = {
        k.decode("latin-1").lower(): v[-1].decode("latin-1")
        for k, v in response.headers.getAllRawHeaders()
    }
    length = found.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        response.deliverBody(_Discard())
        raise TooLarge()
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise TooLarge()
        chunks.append(data)

    await treq.collect(response, collect)
    return int(response.code), found, b"".join(chunks)


def _reason(error: Exception, timed_out: bool) -> str:
    if timed_out:
        return N_("the site did not answer in time")
    if isinstance(error, RefusedAddress):
        return N_("the site is on a private address and was not fetched")
    if isinstance(error, TooLarge):
        return N_("the site's discovery document is too large")
    return N_("the site could not be reached")


def _return_tos(url: str, xrds: bytes) -> list[str] | None:
    try:
        found = applyFilter(url, xrds, _extractReturnURL)
    except XRDSError:
        return None
    return [str(u) for u in found if u]


def _meta_location(body: bytes) -> str | None:
    try:
        location = findHTMLMeta(io.StringIO(body.decode("utf-8", "replace")))
    except MetaNotFound:
        return None
    except Exception:
        return None
    return str(location) if location else None


class _Discard(Protocol):
    """Drops a body we will not read, closing the connection."""

    def connectionMade(self) -> None:
        # IResponse.deliverBody connects the body's protocol to a transport
        # that provides IPushProducer; adapting says so, and fails loudly if not.
        IPushProducer(self.transport).stopProducing()

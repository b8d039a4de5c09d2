"""
The client side of the front's HTTP/1.1 reverse proxy: one
L{FrontConnection} per client connection, which reads requests, answers
what the front answers itself (L{clickpass.balancer.answers}: /healthz,
/metrics, /readyz when no worker can serve, static files, redirects to
HTTPS, refusals) and hands the rest to the pool as
L{clickpass.balancer.exchange.Exchange}s, one at a time per connection.

HTTP is framed on plain Protocols rather than with twisted.web, whose
request machinery costs about 200 us per request. Request heads are parsed,
checked and rewritten in C (clickpass.balancer._http1), one call per head;
the front's per-request work is kept to that, the choice of a worker and two
writes. A request body is read whole (at most C{max_body} bytes, within
C{body_timeout}) before the request goes to a worker, so a client that
sends its body slowly holds a connection to the front, never a worker's
slot.

Malformed or smuggling-shaped requests (bad request line, bad or duplicate
Content-Length, Content-Length with Transfer-Encoding, oversized headers)
get a 400 and the connection is closed; the front goes on.

Each request tells its worker who the client is in the front's own header
(clickpass.balancer.forwarding): the peer, or behind a configured trusted
proxy the rightmost untrusted X-Forwarded-For hop.

This module must never run application code, never block, and never
trust client-sent X-Forwarded-* headers except from a configured trusted
proxy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IProtocolNegotiationFactory, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from clickpass.balancer._http1 import ChunkedBody, RequestError, parse_request
from clickpass.balancer.answers import (
    CONTINUE,
    HEALTHZ,
    alive,
    bearer_is,
    is_path,
    local_response,
    metrics_answer,
    static_answer,
)
from clickpass.balancer.exchange import Exchange
from clickpass.balancer.forwarding import CLIENT_HEADER, TrustedProxies
from clickpass.balancer.pool import Pool
from clickpass.balancer.settings import BalancerSettings
from clickpass.balancer.static import STATIC_PREFIX, StaticFiles
from clickpass.balancer.stats import responded
from clickpass.balancer.twisted_internals import read_directly

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from clickpass.balancer._http1 import RequestHead

# Builds the /metrics page (Prometheus text) for the front to answer itself.
MetricsPage = Callable[[], "Deferred[bytes]"]

_LINE_ENDS = (13, 10)
# The paths the front may answer itself on any listener (_answer_locally).
_MAYBE_LOCAL = (HEALTHZ, b"/readyz", b"/metrics", STATIC_PREFIX)


class FrontConnection(Protocol):
    """One client connection to the front."""

    log = Logger()
    transport: Any

    def __init__(self, factory: FrontFactory) -> None:
        self.factory = factory
        self.pool = factory.pool
        self.counters = factory.pool.counters
        self.clock = factory.clock
        self.settings = factory.settings
        self.peer = b"unknown"
        self.active: Exchange | None = None
        self.current: Exchange | None = None
        self.waiting: deque[Exchange] = deque()
        self.closing = False
        self.resume_later = False
        # A request head is being read (its first bytes are in _buf).
        self.in_head = False
        self._buf: bytes | bytearray = b""
        # The request body being read: bytes still to come (Content-Length),
        # or its chunked framing and the bytes it held so far.
        self._body_left = 0
        self._chunks: ChunkedBody | None = None
        self.body_bytes = 0
        self.began = 0.0
        # When the head of the request whose body is being read was complete.
        self.body_began = 0.0
        self.idle_since = 0.0
        self.answered_at = 0.0
        self.fatal: bytes | None = None
        # The peer is a trusted proxy: its X-Forwarded-* headers are believed.
        self.trusted = False
        # The X-Forwarded-For, -Proto and client lines for this client (untrusted).
        self._forwarding: bytes | None = None

    def connectionMade(self) -> None:
        read_directly(self.transport, self)
        peer = self.transport.getPeer()
        if isinstance(peer, IPv4Address | IPv6Address):
            self.peer = peer.host.encode("ascii")
            if self.factory.trusted_proxies:
                self.trusted = self.factory.trusted_proxies.trusts(peer.host)
        if ITCPTransport.providedBy(self.transport):
            # A response that reaches the front in several reads goes out in
            # several writes; Nagle would hold a short last one back until
            # the client's (delayed) ACK of the one before.
            self.transport.setTcpNoDelay(True)
        self.idle_since = self.clock.seconds()
        self.factory.connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        self.closing = True
        for exchange in (self.active, self.current, *self.waiting):
            if exchange is not None:
                exchange.abandon()
        self.active = self.current = None
        self.waiting.clear()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            while data and not self.closing:
                # The exchange whose request is being read is current until
                # its body has been read.
                read = self._read_body if self.current is not None else self._read_head
                data = read(data)
        except RequestError as e:
            # The parser's refusals, and the body's (raised below).
            status, kind, text = e.args
            self.reject(status, kind, text)

    def _read_head(self, data: bytes) -> bytes:
        """Read a request head; returns the bytes after it (b"" until it is whole)."""
        buf: bytes | bytearray
        if self.in_head:
            # A head that came in several reads is gathered in a bytearray,
            # and only its new bytes are searched: a head trickled in byte
            # by byte costs linear time, not quadratic.
            buf = self._buf
            scanned = len(buf)
            buf += data
        else:
            if data[0] in _LINE_ENDS:
                # Empty lines between requests are ignored (RFC 9112 2.2),
                # also when a CRLF is split over two reads.
                data = data.lstrip(b"\r\n")
                if not data:
                    return data
            buf = data
            scanned = 0
            self.in_head = True
            self.began = self.clock.seconds()
            if self.active is not None:
                # A pipelined request: read no further until the one before it
                # is answered, so a client cannot queue unbounded work.
                self.transport.pauseProducing()
                self.resume_later = True
        settings = self.settings
        parsed = parse_request(
            buf,
            settings.max_header_bytes,
            settings.max_body,
            self.trusted,
            scanned,
        )
        if parsed is None:
            self._buf = buf if scanned else bytearray(buf)
            return b""
        self._buf = b""
        self.in_head = False
        head_len = parsed.head_len
        self._request(parsed)
        return bytes(buf[head_len:]) if head_len < len(buf) else b""

    def _read_body(self, data: bytes) -> bytes:
        """Read request body bytes; returns the bytes after the body's end."""
        chunks = self._chunks
        if chunks is None:
            left = self._body_left
            if len(data) > left:
                data, rest = data[:left], data[left:]
            else:
                rest = b""
            self._body_left = left - len(data)
            self._body(data)
            if not self._body_left:
                self._message_complete()
            return rest
        try:
            piece, used, done = chunks.feed(data)
        except ValueError:
            raise RequestError(400, "bad_request", "The request is not valid HTTP/1.1.") from None
        self.body_bytes += len(piece)
        if self.body_bytes > self.settings.max_body:
            raise RequestError(413, "too_large", "The request body is too large.")
        if piece:
            self._body(piece)
        if not done:
            return b""
        self._chunks = None
        self._message_complete()
        return data[used:]

    def _request(self, parsed: RequestHead) -> None:
        """A whole request head was read: decide where it goes."""
        method = parsed.method
        exchange = Exchange(
            self, method, parsed.target, parsed.keep_alive, parsed.http10, self.began
        )
        chunked = exchange.chunked = parsed.chunked
        length = parsed.content_length
        has_body = exchange.has_body = chunked or length > 0
        head = self._worker_head(parsed)
        if chunked:
            # Ended with its Content-Length once the body is read whole.
            exchange.head = head
            self._chunks = ChunkedBody()
            self.body_bytes = 0
        else:
            exchange.head = head + b"\r\n"
            self._body_left = length if length > 0 else 0
        factory = self.factory
        if (
            factory.redirect_base is not None
            or factory.metrics_only
            or parsed.target.startswith(_MAYBE_LOCAL)
        ):
            # Most requests go to a worker: these tests say so at once.
            self._answer_locally(exchange, parsed)
        if (exchange.local is not None or exchange.deferred_local is not None) and has_body:
            exchange.close_after = True
        elif parsed.expect_continue and exchange.local is None:
            self.transport.write(CONTINUE)
        self.current = exchange
        if has_body and exchange.local is None and exchange.deferred_local is None:
            # A request with a body goes to a worker only once the front has
            # read all of it (_message_complete): a client that trickles or
            # withholds its body would otherwise hold a worker's slot and run
            # out that worker's request timeout. The body is bounded by
            # max_body (413) and its time by body_timeout (408).
            self.body_began = self.clock.seconds()
            return
        if self.active is None:
            self._activate(exchange)
        else:
            self.waiting.append(exchange)
        if not has_body:
            self._message_complete()

    def _worker_head(self, parsed: RequestHead) -> bytes:
        """
        The head for the worker: the client's, as the parser built it, and
        the front's forwarding headers; without its final empty line.
        """
        factory = self.factory
        worker_head = parsed.worker_head
        if self.trusted:
            # From a trusted proxy: its X-Forwarded-Proto/-Host pass as they
            # are, and the client is the rightmost hop it does not vouch for.
            forwarded_for = parsed.forwarded_for
            client = factory.trusted_proxies.client(forwarded_for, self.peer)
            if forwarded_for:
                forwarded_for += b", " + self.peer
            else:
                forwarded_for = self.peer
            return b"".join(
                (
                    worker_head,
                    b"X-Forwarded-For: ",
                    forwarded_for,
                    b"\r\n",
                    CLIENT_HEADER,
                    b": ",
                    client,
                    b"\r\n",
                )
            )
        # X-Forwarded-For, -Proto and the client are the same for every
        # request on this connection.
        forwarding = self._forwarding
        if forwarding is None:
            forwarding = self._forwarding = b"".join(
                (
                    b"X-Forwarded-For: ",
                    self.peer,
                    b"\r\nX-Forwarded-Proto: ",
                    factory.scheme,
                    b"\r\n",
                    CLIENT_HEADER,
                    b": ",
                    self.peer,
                    b"\r\n",
                )
            )
        host = parsed.host
        if host:
            return b"".join((worker_head, forwarding, b"X-Forwarded-Host: ", host, b"\r\n"))
        return worker_head + forwarding

    def _answer_locally(self, exchange: Exchange, parsed: RequestHead) -> None:
        """
        Set C{exchange}'s answer when the front makes it itself (a redirect
        to HTTPS, /metrics, /healthz, /readyz with no worker to ask, a
        static file); leave it unset for a worker to answer.
        """
        factory = self.factory
        url = exchange.url
        method = exchange.method
        head_only = method == b"HEAD"
        keep_alive = exchange.keep_alive
        if factory.redirect_base is not None:
            status = 301 if method in (b"GET", b"HEAD") else 308
            location = b"Location: " + factory.redirect_base + url + b"\r\n"
            exchange.local = local_response(
                status, "Moved to HTTPS.", exchange.has_body, location, head_only
            )
        elif (
            factory.metrics_page is not None
            and url.startswith(b"/metrics")
            and is_path(url, b"/metrics")
        ):
            self._metrics(exchange, parsed.worker_head)
        elif factory.metrics_only:
            exchange.local = local_response(404, "Not found.", not keep_alive, b"", head_only)
        elif url.startswith(HEALTHZ) and is_path(url, HEALTHZ):
            # Liveness: answered by this reactor, whatever the workers do.
            if method in (b"GET", b"HEAD"):
                close = exchange.has_body or not keep_alive
                exchange.local = alive(close, head_only, factory.healthz_headers)
            else:
                exchange.local = local_response(
                    405, "Use GET.", True, b"Allow: GET, HEAD\r\n", head_only
                )
        elif url.startswith(b"/readyz") and is_path(url, b"/readyz") and not self.pool.routable():
            # No worker would take the request: say so at once, without
            # queueing a probe behind the requests already waiting.
            exchange.local = local_response(
                503, "not ready: no worker is taking requests", not keep_alive, b"", head_only
            )
        elif (
            factory.static is not None
            and url.startswith(STATIC_PREFIX)
            and not exchange.has_body
            and method in (b"GET", b"HEAD")
        ):
            exchange.local = static_answer(
                factory.static, url, method, keep_alive, parsed.if_none_match
            )

    def _metrics(self, exchange: Exchange, worker_head: bytes) -> None:
        """/metrics on a listener that serves it: the page, or why not."""
        factory = self.factory
        method = exchange.method
        if factory.metrics_token is not None and not bearer_is(worker_head, factory.metrics_token):
            exchange.local = local_response(
                401,
                "The metrics need the bearer token.",
                exchange.has_body or not exchange.keep_alive,
                b'WWW-Authenticate: Bearer realm="metrics"\r\n',
                method == b"HEAD",
            )
        elif method in (b"GET", b"HEAD"):
            assert factory.metrics_page is not None
            exchange.deferred_local = factory.metrics_page()
        else:
            exchange.local = local_response(
                405, "Use GET.", True, b"Allow: GET, HEAD\r\n", method == b"HEAD"
            )

    def _body(self, data: bytes) -> None:
        exchange = self.current
        if exchange is not None and exchange.local is None and exchange.deferred_local is None:
            exchange.request_body(data)

    def _message_complete(self) -> None:
        exchange, self.current = self.current, None
        if exchange is None:
            return
        exchange.request_done = True
        if exchange.response_done:
            # Answered by the front before its body was read.
            self.exchange_done(exchange)
        elif exchange.has_body and not exchange.sent and exchange.backend is None:
            if exchange.local is not None or exchange.deferred_local is not None:
                return
            # The whole body is in: now the request may take a worker.
            if exchange.chunked:
                exchange.head += b"Content-Length: %d\r\n\r\n" % exchange.buffered
            if self.active is None:
                self._activate(exchange)
            else:
                self.waiting.append(exchange)

    # Moving through the exchanges of the connection.

    def _activate(self, exchange: Exchange) -> None:
        self.active = exchange
        if exchange.local is None and exchange.deferred_local is not None:
            d = exchange.deferred_local
            d.addCallback(self._local_ready, exchange)
            d.addErrback(self._local_failed, exchange)
            return
        if exchange.local is not None:
            exchange.response_started = exchange.response_done = True
            exchange.status = int(exchange.local[9:12])
            exchange.write(exchange.local)
            self.counters.requests += 1
            self.account(exchange)
            if exchange.close_after:
                self.close_now()
            elif exchange.request_done:
                self.exchange_done(exchange)
            return
        self.pool.submit(exchange)

    def _local_ready(self, body: bytes, exchange: Exchange) -> None:
        if exchange.abandoned or self.transport is None or exchange is not self.active:
            return
        close = not exchange.keep_alive or exchange.close_after
        exchange.local = metrics_answer(body, close, exchange.method == b"HEAD")
        self._activate(exchange)

    def _local_failed(self, failure: Failure, exchange: Exchange) -> None:
        self.log.failure("the front could not build a local response", failure)
        if exchange.abandoned or self.transport is None or exchange is not self.active:
            return
        exchange.local = local_response(
            500, "The front could not answer this.", True, b"", exchange.method == b"HEAD"
        )
        exchange.close_after = True
        self._activate(exchange)

    def account(self, exchange: Exchange) -> None:
        # The time a response ended is also when the connection went idle
        # (exchange_done, which always follows, uses it).
        now = self.answered_at = self.clock.seconds()
        backend = exchange.backend
        responded(
            self.counters,
            backend.counters if backend is not None else None,
            exchange.status,
            now - exchange.started,
        )

    def exchange_done(self, exchange: Exchange) -> None:
        """The exchange's request was read and its response written."""
        if exchange is not self.active or self.transport is None:
            return
        self.active = None
        if exchange.close_after or not exchange.keep_alive or self.closing:
            self.close_now()
            return
        if self.fatal is not None:
            self.close_now()
            return
        self.idle_since = self.answered_at
        if self.waiting:
            self._activate(self.waiting.popleft())
            if self.active is not None:
                return
        if self.resume_later:
            self.resume_later = False
            self.transport.resumeProducing()

    def reject(self, status: int, kind: str, text: str) -> None:
        """Refuse the request being read: answer (in turn) and close."""
        self.counters.error(kind)
        if self.closing:
            return
        if status in (414, 431):
            # Legitimate clients meet these (a huge redirect URL, a cookie
            # jar grown too large): say so once, for the operator.
            self.log.info(
                "front: refused a request from {peer} with {status} ({kind}): {text}",
                peer=self.peer.decode("ascii", "replace"),
                status=status,
                kind=kind,
                text=text,
            )
        self.closing = True
        self.transport.pauseProducing()
        response = local_response(status, text, True)
        exchange = self.current
        self.current = None
        if exchange is not None and exchange is self.active and exchange.backend is not None:
            # Part of this request already went to a worker; take it back.
            if exchange.response_started:
                self.abort()
                return
            exchange.abandoned = True
            worker, exchange.worker = exchange.worker, None
            if worker is not None:
                worker.exchange = None
                worker.abort()
            self.pool.finished(exchange, None, False)
            self.active = None
        elif exchange is not None and exchange is not self.active:
            exchange.abandon()
        if self.active is None or (exchange is not None and exchange is self.active):
            self.active = None
            self.transport.write(response)
            self.transport.loseConnection()
        else:
            self.fatal = response
            for queued in self.waiting:
                queued.abandon()
            self.waiting.clear()

    def close_now(self) -> None:
        self.closing = True
        if self.fatal is not None and self.transport is not None:
            self.transport.write(self.fatal)
            self.fatal = None
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abortConnection()

    def timed_out(self, now: float) -> None:
        """Called by the factory's sweep: close slow or idle connections."""
        if self.closing:
            return
        if self.in_head:
            if now - self.began > self.settings.header_timeout and self.active is None:
                self.counters.error("header_timeout")
                self.closing = True
                self.transport.write(
                    local_response(408, "The request took too long to arrive.", True)
                )
                self.transport.loseConnection()
        elif self.current is not None:
            # A body being read; while an earlier request on this connection
            # is answered, the front reads nothing more and the client is
            # not waited for, so its time starts again once that answer is out.
            if (
                self.active is None
                and now - max(self.body_began, self.answered_at) > self.settings.body_timeout
            ):
                self.reject(408, "body_timeout", "The request body took too long to arrive.")
        elif self.active is None and now - self.idle_since > self.settings.idle_timeout:
            self.closing = True
            self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class FrontFactory(Factory):
    """Builds a L{FrontConnection} for each client of one listener."""

    noisy = False

    def acceptableProtocols(self) -> list[bytes]:
        """
        ALPN on ssl: listeners: we speak HTTP/1.1. Twisted's TLS server
        always installs an ALPN callback, and with no protocols of ours it
        ends every handshake whose client offers ALPN (every browser, curl,
        requests) with an "internal error" alert.
        """
        return [b"http/1.1"]

    def __init__(
        self,
        clock: IReactorTime,
        pool: Pool,
        settings: BalancerSettings,
        *,
        tls: bool = False,
        trusted_proxies: TrustedProxies | None = None,
        static: StaticFiles | None = None,
        redirect_base: bytes | None = None,
        metrics_page: MetricsPage | None = None,
        metrics_token: bytes | None = None,
        metrics_only: bool = False,
        healthz_headers: bytes = b"",
    ) -> None:
        self.clock = clock
        self.pool = pool
        self.settings = settings
        self.scheme = b"https" if tls else b"http"
        # Peers whose X-Forwarded-* headers are believed.
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.static = static
        self.redirect_base = redirect_base
        # /metrics is answered by the front (None: passed on like any path);
        # a metrics-only listener answers 404 to everything else.
        self.metrics_page = metrics_page
        # When set, /metrics needs "Authorization: Bearer <token>" (else 401).
        self.metrics_token = metrics_token
        self.metrics_only = metrics_only
        # Lines added to the /healthz answer (the node's HSTS header).
        self.healthz_headers = healthz_headers
        self.connections: set[FrontConnection] = set()

    def buildProtocol(self, addr: object) -> FrontConnection:
        return FrontConnection(self)

    def sweep(self, now: float) -> None:
        for connection in list(self.connections):
            connection.timed_out(now)

    def close_idle(self) -> None:
        """On shutdown: close connections that have no request in progress."""
        for connection in list(self.connections):
            if connection.active is None and connection.current is None:
                connection.close_now()


__all__ = ["FrontConnection", "FrontFactory", "MetricsPage"]

"""
The front's HTTP/1.1 reverse proxy: client connections in, persistent
keep-alive connections to the workers out.

HTTP is framed on plain Protocols rather than with twisted.web, whose
request machinery costs about 200 us per request. Request and response
heads are parsed, checked and rewritten in C (clickpass.balancer._http1),
one call per head; the front's per-request work is kept to that, the
choice of a worker and two writes. A request body is read whole (at most
C{max_body} bytes, within C{body_timeout}) before the request goes to a
worker, so a client that sends its body slowly holds a connection to the
front, never a worker's slot; response bodies are streamed with Twisted's
producer/consumer backpressure.

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

import hmac
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import main, tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IProtocolNegotiationFactory,
    IReactorTime,
    IReactorUNIX,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from clickpass.balancer._http1 import (
    ChunkedBody,
    RequestError,
    parse_request,
    parse_response,
    strip_response_head,
)
from clickpass.balancer.forwarding import CLIENT_HEADER, TrustedProxies
from clickpass.balancer.pool import IDEMPOTENT, Backend, Pool
from clickpass.balancer.settings import BalancerSettings
from clickpass.balancer.static import STATIC_PREFIX, StaticFiles
from clickpass.balancer.stats import responded

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IDelayedCall

    from clickpass.balancer._http1 import RequestHead, ResponseHead

# Builds the /metrics page (Prometheus text) for the front to answer itself.
MetricsPage = Callable[[], "Deferred[bytes]"]
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

MAX_RESPONSE_HEAD = 64 * 1024

# How a worker's response ends (UpstreamConnection._framing) ...
_LENGTH = "length"
_CHUNKED = "chunked"
_CLOSE = "close"
_BODILESS = "bodiless"
# ... and how its body reaches the client (UpstreamConnection._body_mode).
_AS_IS = "pass"
_DECODE = "decode"
_RECHUNK = "rechunk"

REASONS = {
    200: b"OK",
    301: b"Moved Permanently",
    304: b"Not Modified",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    500: b"Internal Server Error",
    504: b"Gateway Timeout",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The Authorization values of a /metrics request, in the head built for the worker.
_AUTHORIZATION = re.compile(rb"\r\nauthorization:[ \t]*([^\r]*)(?=\r\n)", re.IGNORECASE)
_LINE_ENDS = (13, 10)


def send_now(transport: Any, data: bytes) -> None:
    """
    C{transport.write(data)}, but sent on the socket at once when nothing is
    queued on it. Twisted's write() queues the bytes and waits for the next
    reactor turn to say the socket is writable (two epoll_ctl calls and one
    more wakeup per write); on the front's hot path that was a third of its
    CPU. What the socket does not take at once, and every transport that is
    not a plain TCP or UNIX socket (TLS), goes through write() as usual, so
    ordering, backpressure and error handling stay Twisted's.
    """
    if (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted find the error on its own path and close properly.
            transport.write(data)
            return
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def local_response(
    status: int,
    text: str,
    close: bool,
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A complete small response generated by the front itself."""
    body = (text + "\n").encode("utf-8")
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n" % (
        status,
        REASONS.get(status, b"Error"),
    )
    head += b"Content-Length: %d\r\nCache-Control: no-store\r\n%s" % (len(body), extra)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + (b"" if head_only else body)


class Exchange:
    """One request and its response, from the client to a worker and back."""

    __slots__ = (
        "abandoned",
        "attempts",
        "backend",
        "body",
        "buffered",
        "chunked",
        "client",
        "close_after",
        "deferred_local",
        "dispatched",
        "has_body",
        "head",
        "http10",
        "keep_alive",
        "local",
        "method",
        "out",
        "queued_at",
        "request_done",
        "response_done",
        "response_started",
        "sent",
        "started",
        "status",
        "upstream",
        "url",
    )

    def __init__(
        self,
        client: FrontConnection,
        method: bytes,
        url: bytes,
        keep_alive: bool,
        http10: bool,
        started: float,
    ) -> None:
        self.client = client
        self.out: Any = client.transport
        self.method = method
        self.url = url
        self.keep_alive = keep_alive
        self.http10 = http10
        self.started = started
        self.head = b""
        self.body: list[bytes] | None = None
        self.buffered = 0
        self.has_body = False
        self.chunked = False
        self.local: bytes | None = None
        # A response the front makes itself but not at once (/metrics).
        self.deferred_local: Deferred[bytes] | None = None
        self.backend: Backend | None = None
        self.upstream: UpstreamConnection | None = None
        self.dispatched = 0.0
        self.queued_at = 0.0
        self.attempts = 0
        self.status = 0
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.close_after = False
        self.abandoned = False
        self.sent = False

    def path_for_log(self) -> str:
        return self.url.split(b"?", 1)[0][:200].decode("latin-1")

    # The request side.

    def request_body(self, data: bytes) -> None:
        """Body bytes (decoded from chunks): kept until the whole body is in."""
        if self.body is None:
            self.body = [data]
        else:
            self.body.append(data)
        self.buffered += len(data)

    def attached(self, upstream: UpstreamConnection) -> None:
        """A connection to the chosen worker is ready: send the whole request."""
        self.upstream = upstream
        self.sent = True
        transport = upstream.transport
        assert transport is not None
        if self.body:
            send_now(transport, b"".join([self.head, *self.body]))
            self.body = None
        else:
            send_now(transport, self.head)

    # The response side.

    def write(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            send_now(out, data)

    def response_complete(self, upstream: UpstreamConnection | None, reusable: bool) -> None:
        self.response_done = True
        if not self.request_done:
            # The worker answered before reading the whole request: neither
            # connection can be trusted to be at a message boundary.
            reusable = False
            self.close_after = True
        self.upstream = None
        client = self.client
        client.account(self)
        client.pool.finished(self, upstream, reusable)
        if self.request_done:
            client.exchange_done(self)
        elif not self.abandoned:
            client.close_now()

    def fail(self, status: int, kind: str, retry_after: int | None = None) -> None:
        """Answer with an error from the front (no worker answered)."""
        self.upstream = None
        if self.abandoned:
            return
        if self.response_started:
            self.client.abort()
            return
        extra = b"Retry-After: %d\r\n" % retry_after if retry_after is not None else b""
        text = {
            502: "The service had a problem answering; please try again.",
            503: "The service is busy; please try again shortly.",
            504: "The service took too long to answer; please try again.",
        }.get(status, "The service could not answer.")
        close = not self.request_done or not self.keep_alive
        self.close_after = self.close_after or close
        self.response_started = True
        self.response_done = True
        self.status = status
        self.write(local_response(status, text, close, extra, self.method == b"HEAD"))
        self.client.account(self)
        if self.request_done:
            self.client.exchange_done(self)
        else:
            self.client.close_now()

    def upstream_lost(self, upstream: UpstreamConnection, why: str, got_bytes: bool) -> None:
        """The worker connection died before the response was complete."""
        client = self.client
        pool = client.pool
        pool.connection_failed(upstream, why)
        self.upstream = None
        if (
            not self.response_started
            and not got_bytes
            and self.method in IDEMPOTENT
            and self.request_done
            and not self.has_body
        ):
            # The worker sent nothing back; repeating a bodiless idempotent
            # request is safe even if it did arrive (a POST never is).
            pool.unreached(self)
            return
        pool.finished(self, None, False)
        if self.backend is None and self.abandoned:
            return
        self.client.counters.error("upstream_failed")
        if self.response_started:
            client.abort()
        else:
            self.fail(502, "upstream_failed")

    def time_out(self) -> None:
        """The worker did not answer in time: 504, and forget the worker side."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.abort()
        self.client.pool.finished(self, None, False)
        self.fail(504, "timeout")

    def abandon(self) -> None:
        """The client went away: stop everything this exchange started."""
        if self.abandoned:
            return
        self.abandoned = True
        self.out = None
        upstream, self.upstream = self.upstream, None
        pool = self.client.pool
        if self.backend is not None:
            if not self.response_done:
                self.client.counters.error("client_gone")
            if upstream is not None:
                upstream.exchange = None
                upstream.abort()
            pool.finished(self, None, False)
        else:
            pool.abandoned(self)


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
        if self.transport.__class__ is _TCP_SERVER:
            self.transport.doRead = _read_with_recv(self.transport, self)
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
        head_len = parsed[0]
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
        (
            _,
            method,
            url,
            upstream_head,
            http10,
            keep_alive,
            length,
            chunked,
            expect_continue,
            host,
            forwarded_for,
            if_none_match,
        ) = parsed
        factory = self.factory
        if self.trusted:
            # From a trusted proxy: its X-Forwarded-Proto/-Host pass as they
            # are, and the client is the rightmost hop it does not vouch for.
            client = factory.trusted_proxies.client(forwarded_for, self.peer)
            if forwarded_for:
                forwarded_for += b", " + self.peer
            else:
                forwarded_for = self.peer
            head = b"".join(
                (
                    upstream_head,
                    b"X-Forwarded-For: ",
                    forwarded_for,
                    b"\r\n",
                    CLIENT_HEADER,
                    b": ",
                    client,
                    b"\r\n",
                )
            )
        else:
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
            if host:
                head = b"".join((upstream_head, forwarding, b"X-Forwarded-Host: ", host, b"\r\n"))
            else:
                head = upstream_head + forwarding
        exchange = Exchange(self, method, url, keep_alive, http10, self.began)
        exchange.chunked = chunked
        has_body = exchange.has_body = chunked or length > 0
        if chunked:
            # Ended with its Content-Length once the body is read whole.
            exchange.head = head
            self._chunks = ChunkedBody()
            self.body_bytes = 0
        else:
            exchange.head = head + b"\r\n"
            self._body_left = length if length > 0 else 0
        if factory.redirect_base is not None:
            status = 301 if method in (b"GET", b"HEAD") else 308
            location = b"Location: " + factory.redirect_base + url + b"\r\n"
            exchange.local = local_response(
                status, "Moved to HTTPS.", has_body, location, method == b"HEAD"
            )
        elif (
            factory.metrics_page is not None
            and url.startswith(b"/metrics")
            and _is_path(url, b"/metrics")
        ):
            if factory.metrics_token is not None and not _bearer_is(
                upstream_head, factory.metrics_token
            ):
                exchange.local = local_response(
                    401,
                    "The metrics need the bearer token.",
                    has_body or not exchange.keep_alive,
                    b'WWW-Authenticate: Bearer realm="metrics"\r\n',
                    method == b"HEAD",
                )
            elif method in (b"GET", b"HEAD"):
                exchange.deferred_local = factory.metrics_page()
            else:
                exchange.local = local_response(
                    405, "Use GET.", True, b"Allow: GET, HEAD\r\n", method == b"HEAD"
                )
        elif factory.metrics_only:
            exchange.local = local_response(
                404, "Not found.", not exchange.keep_alive, b"", method == b"HEAD"
            )
        elif url.startswith(b"/readyz") and _is_path(url, b"/readyz") and not self.pool.routable():
            # No worker would take the request: say so at once, without
            # queueing a probe behind the requests already waiting.
            exchange.local = local_response(
                503,
                "not ready: no worker is taking requests",
                not exchange.keep_alive,
                b"",
                method == b"HEAD",
            )
        elif (
            factory.static is not None
            and url.startswith(STATIC_PREFIX)
            and not has_body
            and method in (b"GET", b"HEAD")
        ):
            exchange.local = self._static(url, method, exchange.keep_alive, if_none_match)
        if (exchange.local is not None or exchange.deferred_local is not None) and has_body:
            exchange.close_after = True
        elif expect_continue and exchange.local is None:
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

    def _static(
        self, url: bytes, method: bytes, keep_alive: bool, if_none_match: bytes | None
    ) -> bytes:
        static = self.factory.static
        assert static is not None
        found = static.lookup(url)
        connection = b"" if keep_alive else b"Connection: close\r\n"
        if found is None:
            return local_response(404, "Not found.", not keep_alive, b"", method == b"HEAD")
        etag: bytes = found[0]
        head: bytes = found[1]
        body: bytes = found[2]
        if if_none_match is not None and etag in if_none_match:
            return b"".join((b"HTTP/1.1 304 Not Modified\r\n", head, connection, b"\r\n"))
        length = b"Content-Length: %d\r\n" % len(body)
        payload = b"" if method == b"HEAD" else body
        return b"".join((b"HTTP/1.1 200 OK\r\n", head, length, connection, b"\r\n", payload))

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
        head_only = exchange.method == b"HEAD"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            METRICS_CONTENT_TYPE,
            len(body),
        )
        head += b"Cache-Control: no-store\r\n"
        if not exchange.keep_alive or exchange.close_after:
            head += b"Connection: close\r\n"
        exchange.local = head + b"\r\n" + (b"" if head_only else body)
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
            upstream, exchange.upstream = exchange.upstream, None
            if upstream is not None:
                upstream.exchange = None
                upstream.abort()
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


def _bearer_is(head: bytes, token: bytes) -> bool:
    """Whether the request head C{head} holds one Authorization: Bearer C{token}."""
    found = _AUTHORIZATION.findall(head)
    if len(found) != 1:
        return False
    scheme, _, given = found[0].partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


def _is_path(url: bytes, path: bytes) -> bool:
    """Whether the request target C{url} is C{path}, with or without a query."""
    return url.startswith(path) and (len(url) == len(path) or url[len(path)] == 0x3F)


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


# Twisted's connected UNIX client and TCP server transports (typed loosely:
# we replace their doRead).
_UNIX_CLIENT: Any = unix.Client
_TCP_SERVER: Any = tcp.Server


def _read_with_recv(transport: Any, protocol: Protocol) -> Callable[[], object]:
    """
    A doRead for a connected plain socket transport (TCP from clients, UNIX
    to workers) that reads with recv() and hands the bytes straight to the
    protocol. Twisted's UNIX transports read with recvmsg() and an
    ancillary buffer in case file descriptors are passed; workers never pass
    any, and that path cost the front a few microseconds on every response.
    Twisted's own abortConnection() and connection loss still replace it as
    usual; an empty read is the peer closing, as in Twisted's.
    """
    recv = transport.socket.recv
    size = transport.bufferSize
    received = protocol.dataReceived

    def doRead() -> object:
        try:
            data = recv(size)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        received(data)
        return None

    return doRead


class UpstreamConnection(Protocol):
    """A persistent connection from the front to one worker."""

    log = Logger()
    transport: Any

    def __init__(self, pool: Pool, backend: Backend) -> None:
        self.pool = pool
        self.backend = backend
        self.exchange: Exchange | None = None
        self._buf = b""
        self._in_head = True
        self._reusable = True
        # How the response's end is found (_LENGTH, _CHUNKED, _CLOSE or
        # _BODILESS), and how its body bytes reach the client (_AS_IS as they
        # are, _DECODE from chunks for an HTTP/1.0 client, _RECHUNK a body the
        # worker delimits by closing, for an HTTP/1.1 client).
        self._framing = _LENGTH
        self._body_mode = _AS_IS
        self._left = 0
        self._chunks: ChunkedBody | None = None
        self._streaming = False
        self._producer_target: Any = None
        self._got_bytes = False
        # Response bytes for the client, gathered over one read from the
        # worker and sent in one write (head and body of a small response
        # usually arrive together).
        self._out: list[bytes] = []

    def connectionMade(self) -> None:
        transport = self.transport
        if transport.__class__ is _UNIX_CLIENT:
            transport.doRead = _read_with_recv(transport, self)
        self.pool.connected(self)

    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._got_bytes = False
        exchange.attached(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self._reusable = False
            self.abort()
            return
        self._got_bytes = True
        if self._in_head:
            buf = self._buf + data if self._buf else data
            try:
                parsed = parse_response(buf, MAX_RESPONSE_HEAD)
            except ValueError as e:
                self._bad_response(exchange, str(e))
                return
            if parsed is None:
                self._buf = buf
                return
            self._buf = b""
            head_len = parsed[0]
            if parsed[1] < 200:
                # An interim response (the front answered Expect itself).
                if head_len < len(buf):
                    self.dataReceived(buf[head_len:])
                return
            self._in_head = False
            data = buf
            offset = self._start(exchange, buf, parsed)
        else:
            offset = 0
            if self._body_mode is _AS_IS and exchange.out is not None:
                self._out.append(data)
        try:
            end = self._find_end(data, offset)
        except ValueError:
            self._bad_response(exchange, "malformed response body")
            return
        if end >= 0:
            if end < len(data):
                # Bytes of a further message came after this response.
                self._reusable = False
                if self._body_mode is _AS_IS:
                    # They were gathered for the client with the rest.
                    self._bad_response(exchange, "bytes after the end of the response")
                    return
            self._finish(exchange)
            return
        if self._out:
            self._flush(exchange)
        if not self._streaming and exchange.out is not None:
            # The response did not fit in one read: let the client's
            # buffer pace the worker.
            exchange.out.registerProducer(self.transport, True)
            self._producer_target = exchange.out
            self._streaming = True

    def _start(self, exchange: Exchange, buf: bytes, parsed: ResponseHead) -> int:
        """
        A response head was read: gather it for the client (with what the
        read holds of the body, when that goes as it is), and set up how its
        end is found. Returns where its body starts in C{buf}.
        """
        head_len, status, length, chunked, close, hop = parsed
        exchange.status = status
        exchange.response_started = True
        if close:
            self._reusable = False
        keep = exchange.keep_alive and not exchange.close_after
        bodiless = exchange.method == b"HEAD" or status in (204, 304)
        if bodiless:
            framing = _BODILESS
        elif chunked:
            framing = _CHUNKED
            self._chunks = ChunkedBody()
        elif length >= 0:
            framing = _LENGTH
            self._left = length
        else:
            framing = _CLOSE
            self._reusable = False
        self._framing = framing
        http10 = exchange.http10
        out = self._out
        if not hop and not http10 and framing is not _CLOSE:
            # The common case: the worker's bytes go to the client as they
            # are, head, framing and all of the body this read holds.
            self._body_mode = _AS_IS
            if keep:
                out.append(buf)
            else:
                exchange.close_after = True
                out.append(buf[: head_len - 2] + b"Connection: close\r\n" + buf[head_len - 2 :])
            return head_len
        head = strip_response_head(buf, head_len, framing is _LENGTH or bodiless)
        mode = _AS_IS
        if http10:
            if framing is _CHUNKED:
                # An HTTP/1.0 client cannot read chunks: the body is decoded
                # and ends with the connection.
                mode = _DECODE
                keep = False
            elif framing is _CLOSE:
                keep = False
        elif chunked:
            head += b"Transfer-Encoding: chunked\r\n"
        elif framing is _CLOSE:
            head += b"Transfer-Encoding: chunked\r\n"
            mode = _RECHUNK
        self._body_mode = mode
        if not keep:
            exchange.close_after = True
            head += b"Connection: close\r\n\r\n"
        elif http10:
            head += b"Connection: keep-alive\r\n\r\n"
        else:
            head += b"\r\n"
        out.append(head)
        if mode is _AS_IS and head_len < len(buf) and framing is not _BODILESS:
            out.append(buf[head_len:])
        return head_len

    def _find_end(self, data: bytes, offset: int) -> int:
        """Where in C{data} the response ends (-1: not in it), from C{offset} on."""
        framing = self._framing
        if framing is _LENGTH:
            left = self._left
            if len(data) - offset >= left:
                self._left = 0
                return offset + left
            self._left = left - (len(data) - offset)
            return -1
        if framing is _CHUNKED:
            chunks = self._chunks
            assert chunks is not None
            if self._body_mode is _DECODE:
                piece, used, done = chunks.feed(data[offset:] if offset else data)
                if piece:
                    self._out.append(piece)
            else:
                used, done = chunks.scan(data, offset)
            return offset + used if done else -1
        if framing is _BODILESS:
            return offset
        # Delimited by the worker closing the connection (connectionLost).
        if self._body_mode is _RECHUNK and len(data) > offset:
            piece = data[offset:] if offset else data
            self._out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        return -1

    def _flush(self, exchange: Exchange) -> None:
        out, self._out = self._out, []
        if exchange.out is not None:
            send_now(exchange.out, out[0] if len(out) == 1 else b"".join(out))

    def _bad_response(self, exchange: Exchange, why: str) -> None:
        self.exchange = None
        self._out = []
        self.log.warn("worker {worker} sent a bad response: {why}", worker=self.backend.id, why=why)
        exchange.upstream = None
        self.abort()
        self.pool.finished(exchange, None, False)
        exchange.client.counters.error("upstream_failed")
        if exchange.response_started:
            exchange.client.abort()
        else:
            exchange.fail(502, "upstream_failed")

    def _finish(self, exchange: Exchange) -> None:
        self.exchange = None
        out = self._out
        if self._body_mode is _RECHUNK:
            out.append(b"0\r\n\r\n")
        if out:
            self._out = []
            if exchange.out is not None:
                send_now(exchange.out, out[0] if len(out) == 1 else b"".join(out))
        if self._streaming:
            self._stop_streaming()
        # Ready for the next response on this connection.
        self._in_head = True
        self._body_mode = _AS_IS
        self._chunks = None
        self._buf = b""
        reusable = self._reusable
        exchange.response_complete(self, reusable)
        if not reusable:
            self.close()

    def _stop_streaming(self) -> None:
        """The response streamed over several reads is over: stop pacing the worker."""
        self._streaming = False
        target, self._producer_target = self._producer_target, None
        if target is not None:
            target.unregisterProducer()
        if self.transport is not None:
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.pool.connection_closed(self)
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        if self._framing is _CLOSE and not self._in_head:
            self._reusable = False
            self._finish(exchange)
            return
        if self._streaming:
            self._streaming = False
            target, self._producer_target = self._producer_target, None
            if target is not None and target is exchange.out:
                target.unregisterProducer()
        why = " ".join((str(reason.value) or type(reason.value).__name__).split())
        exchange.upstream_lost(self, why, self._got_bytes)


class _ConnectFactory(ClientFactory):
    """Hands one pre-built connection to connectUNIX and reports failure."""

    noisy = False

    def __init__(self, pool: Pool, connection: UpstreamConnection) -> None:
        self.pool = pool
        self.connection = connection

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        return self.connection

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.pool.connect_failed(self.connection, reason)


def dial(pool: Pool, backend: Backend) -> UpstreamConnection:
    """Start connecting to C{backend}'s socket (the pool's L{Dial})."""
    connection = UpstreamConnection(pool, backend)
    reactor: IReactorUNIX = pool.reactor
    reactor.connectUNIX(
        backend.path, _ConnectFactory(pool, connection), timeout=pool.settings.connect_timeout
    )
    return connection


def probe(pool: Pool, backend: Backend) -> None:
    """Start one active health check of C{backend} (the pool's L{Probe})."""
    HealthCheck.run(pool, backend)


class HealthCheck(Protocol):
    """One active health check: GET the health path on a fresh connection."""

    transport: Any

    def __init__(self, pool: Pool, backend: Backend) -> None:
        self.pool = pool
        self.backend = backend
        self.buf = b""
        self.decided = False
        self.timer: IDelayedCall | None = None
        # Requests the worker had finished when the check started: one that
        # goes on finishing requests while its check waits is busy, not dead.
        self.served_at_start = backend.served

    @classmethod
    def run(cls, pool: Pool, backend: Backend) -> HealthCheck:
        check = cls(pool, backend)
        clock: IReactorTime = pool.reactor
        check.timer = clock.callLater(pool.settings.health_timeout, check.timed_out)
        reactor: IReactorUNIX = pool.reactor
        reactor.connectUNIX(
            backend.path, _HealthFactory(check), timeout=pool.settings.health_timeout
        )
        return check

    def connectionMade(self) -> None:
        path = self.pool.settings.health_path.encode("ascii")
        self.transport.write(
            b"GET " + path + b" HTTP/1.1\r\nHost: clickpass-front\r\nConnection: close\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= 12:
            status = self.buf[9:12]
            self.decide(status == b"200", "status " + status.decode("latin-1"))
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.decide(False, "connection closed without an answer")

    def timed_out(self) -> None:
        self.timer = None
        if self.backend.served > self.served_at_start:
            self.decided = True
            self.pool.health_busy(self.backend)
        else:
            self.decide(False, "no answer in time")
        if self.transport is not None:
            self.transport.abortConnection()

    def decide(self, ok: bool, why: str) -> None:
        if self.decided:
            return
        self.decided = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.pool.health_result(self.backend, ok, why)


class _HealthFactory(ClientFactory):
    noisy = False

    def __init__(self, check: HealthCheck) -> None:
        self.check = check

    def buildProtocol(self, addr: object) -> HealthCheck:
        return self.check

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.check.decide(False, "connect failed")


__all__ = ["Exchange", "FrontConnection", "FrontFactory", "UpstreamConnection", "local_response"]

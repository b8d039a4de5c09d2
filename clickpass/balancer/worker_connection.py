"""
The front's persistent keep-alive connections to its workers (unix
sockets), one request at a time on each: the request goes out in one write
(L{clickpass.balancer.exchange.Exchange.attached}); the worker's response
head is parsed in C (C{clickpass.balancer._http1}) and its bytes are
relayed to the client as they are whenever they can be (an HTTP/1.1 client,
no hop-by-hop header), re-framed otherwise, and streamed with Twisted's
producer/consumer backpressure when they do not come in one read.

L{dial} is the pool's way to reach a worker (its L{clickpass.balancer.pool.Dial}).
A response that is malformed or followed by stray bytes costs the client
its connection (502 when nothing was sent yet) and the worker this
connection, never the front. This module must never block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.balancer._http1 import ChunkedBody, parse_response, strip_response_head
from clickpass.balancer.exchange import Exchange
from clickpass.balancer.pool import Backend, Pool
from clickpass.balancer.twisted_internals import read_directly, send_now

if TYPE_CHECKING:
    from clickpass.balancer._http1 import ResponseHead

MAX_RESPONSE_HEAD = 64 * 1024

# How a worker's response ends (WorkerConnection._framing) ...
_LENGTH = "length"
_CHUNKED = "chunked"
_CLOSE = "close"
_BODILESS = "bodiless"
# ... and how its body reaches the client (WorkerConnection._body_mode).
_AS_IS = "pass"
_DECODE = "decode"
_RECHUNK = "rechunk"


class WorkerConnection(Protocol):
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
        read_directly(self.transport, self)
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
            head_len = parsed.head_len
            if parsed.status < 200:
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
        head_len = parsed.head_len
        status = exchange.status = parsed.status
        length = parsed.content_length
        chunked = parsed.chunked
        close = parsed.close
        hop = parsed.hop
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
        exchange.worker = None
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
        exchange.worker_lost(self, why, self._got_bytes)


class _ConnectFactory(ClientFactory):
    """Hands one pre-built connection to connectUNIX and reports failure."""

    noisy = False

    def __init__(self, pool: Pool, connection: WorkerConnection) -> None:
        self.pool = pool
        self.connection = connection

    def buildProtocol(self, addr: object) -> WorkerConnection:
        return self.connection

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.pool.connect_failed(self.connection, reason)


def dial(pool: Pool, backend: Backend) -> WorkerConnection:
    """Start connecting to C{backend}'s socket (the pool's L{Dial})."""
    connection = WorkerConnection(pool, backend)
    reactor: IReactorUNIX = pool.reactor
    reactor.connectUNIX(
        backend.path, _ConnectFactory(pool, connection), timeout=pool.settings.connect_timeout
    )
    return connection


__all__ = ["MAX_RESPONSE_HEAD", "WorkerConnection", "dial"]

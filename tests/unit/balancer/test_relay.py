"""
How the front relays a worker's response: as the worker's own bytes (head,
chunked framing and body untouched) to an HTTP/1.1 client, re-serialised
only when a hop-by-hop header or an HTTP/1.0 client asks for it.
"""

from __future__ import annotations

import random
import socket

import pytest

from twisted.internet import main, tcp, unix
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from clickpass.balancer.client import FrontFactory
from clickpass.balancer.health import probe
from clickpass.balancer.pool import Backend, Pool
from clickpass.balancer.settings import BalancerSettings
from clickpass.balancer.twisted_internals import read_with_recv
from clickpass.balancer.worker_connection import WorkerConnection, dial
from tests.unit.balancer.test_proxy import Rig

CHUNKED = (
    b"HTTP/1.1 302 Found\r\nServer: TwistedWeb/26.10.0\r\nCache-Control: no-store\r\n"
    b"Location: http://rp.example/return?openid.mode=id_res&openid.sig=abc%2F%3D\r\n"
    b"Set-Cookie: a=b; Path=/; HttpOnly\r\nContent-Type: text/html\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
BODY = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


def test_chunked_response_reaches_the_client_byte_for_byte():
    """Head, Set-Cookie, long Location and chunk framing arrive exactly as the worker sent them."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET /openid HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    upstream.dataReceived(CHUNKED + BODY)
    assert client.value() == CHUNKED + BODY
    assert not client.disconnecting
    # The worker connection is idle again and serves the next request.
    assert rig.backends[0].in_flight == 0
    assert rig.backends[0].idle == [upstream]
    client.clear()
    proto.dataReceived(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream.dataReceived(CHUNKED + BODY)
    assert client.value() == CHUNKED + BODY


def test_response_split_over_many_reads_is_relayed_exactly():
    """A head cut in the middle and a body in pieces still reach the client unchanged, in order."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    whole = CHUNKED + BODY
    pieces = [whole[:17], whole[17 : len(CHUNKED) + 3], whole[len(CHUNKED) + 3 : -4], whole[-4:]]
    for piece in pieces[:-1]:
        upstream.dataReceived(piece)
    # Mid-body, the client's buffer paces the worker.
    assert client.producer is worker
    upstream.dataReceived(pieces[-1])
    assert client.value() == whole
    assert client.producer is None
    assert rig.backends[0].idle == [upstream]


def test_content_length_response_is_relayed_exactly():
    """A response framed by Content-Length is relayed as is too."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
    )
    upstream.dataReceived(response[:50])
    upstream.dataReceived(response[50:])
    assert client.value() == response


def test_client_that_asked_to_close_gets_connection_close_added():
    """Connection: close from the client: the relayed head says so and the connection closes."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    upstream.dataReceived(CHUNKED + BODY)
    assert client.value() == CHUNKED[:-2] + b"Connection: close\r\n\r\n" + BODY
    assert client.disconnecting
    # The worker connection is still good for someone else.
    assert rig.backends[0].idle == [upstream]


def test_hop_by_hop_headers_of_the_worker_are_still_stripped():
    """A worker's Connection/Keep-Alive headers never reach the client."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"
    )
    assert client.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"


@pytest.mark.parametrize(
    "hop",
    [
        b"Connection: keep-alive",
        b"Keep-Alive: timeout=5",
        b"Proxy-Authenticate: Basic",
        b"Trailer: X-Checksum",
        b"Upgrade: h2c",
    ],
)
@pytest.mark.parametrize("framing", [b"Transfer-Encoding: chunked", b"Content-Length: 7"])
@pytest.mark.parametrize("hop_first", [True, False])
def test_each_hop_by_hop_header_is_stripped_wherever_it_stands(hop, framing, hop_first):
    """
    A hop-by-hop header of the worker's is found and stripped right after
    the framing header as well as before it (the header scan must not lose
    a line that follows a matched one).
    """
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    lines = [hop, framing] if hop_first else [framing, hop]
    body = b"7\r\nhello!!\r\n0\r\n\r\n" if b"chunked" in framing else b"hello!!"
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body
    )
    out = client.value()
    assert hop.split(b":")[0] not in out
    assert out.startswith(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n")
    assert out.endswith(body)


def test_bytes_after_the_end_of_a_response_are_never_relayed():
    """
    A worker that sends more than one response's worth of bytes: the client
    never sees the extra bytes, its connection is cut (the response cannot
    be trusted), and the worker connection is not reused.
    """
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    upstream.dataReceived(CHUNKED + BODY + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
    assert b"evil" not in client.value()
    assert client.disconnected
    assert worker.disconnected
    assert rig.backends[0].idle == []
    assert rig.backends[0].in_flight == 0
    assert rig.pool.counters.errors["upstream_failed"] == 1


def one_request(
    http10: bool = False,
) -> tuple[Rig, StringTransport, WorkerConnection, StringTransport]:
    rig = Rig(workers=1)
    proto, client = rig.client()
    if http10:
        proto.dataReceived(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    else:
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    return rig, client, upstream, worker


HOP_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
)


@pytest.mark.parametrize("cut", range(1, len(HOP_CHUNKED + BODY)))
def test_a_rewritten_response_split_anywhere_reaches_the_client_the_same(cut):
    """A head that needs rewriting, cut at every byte: same bytes out, connection reused."""
    rig, client, upstream, _ = one_request()
    whole = HOP_CHUNKED + BODY
    upstream.dataReceived(whole[:cut])
    upstream.dataReceived(whole[cut:])
    assert client.value() == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY
    )
    assert rig.backends[0].idle == [upstream]


@pytest.mark.parametrize("cut", range(1, len(CHUNKED + BODY)))
def test_a_chunked_response_to_an_http10_client_is_decoded_wherever_it_is_cut(cut):
    rig, client, upstream, _ = one_request(http10=True)
    whole = CHUNKED + BODY
    upstream.dataReceived(whole[:cut])
    upstream.dataReceived(whole[cut:])
    out = client.value()
    assert out.endswith(b"\r\nConnection: close\r\n\r\nhello world")
    assert b"Transfer-Encoding" not in out
    assert client.disconnecting
    # The worker's side of it was a whole response: its connection is kept.
    assert rig.backends[0].idle == [upstream]


def test_a_response_the_worker_ends_by_closing_is_rechunked_for_http11():
    rig, client, upstream, _ = one_request()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello")
    upstream.dataReceived(b" world")
    assert not client.disconnecting
    upstream.connectionLost(Failure(ConnectionDone()))
    assert client.value() == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert not client.disconnecting
    assert rig.backends[0].idle == []
    assert rig.backends[0].in_flight == 0


def test_a_response_the_worker_ends_by_closing_goes_as_it_is_to_http10():
    _, client, upstream, _ = one_request(http10=True)
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello")
    upstream.dataReceived(b" world")
    upstream.connectionLost(Failure(ConnectionDone()))
    assert client.value() == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\nhello world"
    assert client.disconnecting


def test_an_interim_response_from_the_worker_is_not_relayed():
    rig, client, upstream, _ = one_request()
    upstream.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-")
    upstream.dataReceived(b"Length: 2\r\n\r\nok")
    assert client.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert rig.backends[0].idle == [upstream]


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (65 * 1024),
    ],
    ids=["status", "two-lengths", "length-and-chunked", "bad-chunk", "head-too-large"],
)
def test_a_malformed_worker_response_is_a_502(response):
    """
    The client gets a 502, or, when the head was good and the body is not,
    a cut connection; the worker connection is closed, not reused.
    """
    rig, client, upstream, worker = one_request()
    upstream.dataReceived(response)
    out = client.value()
    assert out.startswith(b"HTTP/1.1 502 ") or (out == b"" and client.disconnected)
    assert worker.disconnected
    assert rig.backends[0].idle == []
    assert rig.pool.counters.errors["upstream_failed"] == 1


def test_no_request_makes_the_client_a_producer():
    """
    The client is never paced by a worker connection: a GET goes out whole
    with its head, and a request with a body only once the front has read
    all of it (so there is no producer to undo when it is answered).
    """
    rig = Rig(workers=1)
    proto, _ = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    _, factory, _, _ = rig.reactor.unixClients[0]
    upstream = factory.buildProtocol(None)
    worker = CountingTransport()
    upstream.makeConnection(worker)
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    # The next GET goes out on the idle connection while its head is parsed.
    worker.clear()
    proto.dataReceived(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert worker.value().startswith(b"GET /2 HTTP/1.1\r\n")
    assert worker.registered == 0
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    worker.clear()
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
    assert worker.value() == b""
    proto.dataReceived(b"cd")
    assert worker.value().endswith(b"\r\n\r\nabcd")
    assert worker.registered == 0


class CountingTransport(StringTransport):
    """A StringTransport that counts producer registrations."""

    registered = 0

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.registered += 1
        super().registerProducer(producer, streaming)


def test_worker_connections_read_with_plain_recv():
    """
    A connected worker socket reads with recv() (no ancillary buffer): data
    goes to the protocol, nothing to read is no event, the worker closing is
    a clean end and a broken socket a lost connection.
    """
    ours, worker_side = socket.socketpair(socket.AF_UNIX)
    ours.setblocking(False)
    transport = unix.Client.__new__(unix.Client)
    transport.socket = ours
    transport.bufferSize = 65536
    pool = Pool(MemoryReactorClock(), BalancerSettings(), dial=dial, probe=probe)
    upstream = WorkerConnection(pool, Backend("1", "/s"))
    upstream.transport = transport
    upstream.connectionMade()
    assert "doRead" in vars(transport)
    assert transport.doRead.__qualname__ == "read_with_recv.<locals>.doRead"
    received = Recorder()
    do_read = read_with_recv(transport, received)
    assert do_read() is None
    worker_side.sendall(b"HTTP/1.1 200 OK\r\n")
    assert do_read() is None
    assert received.data == [b"HTTP/1.1 200 OK\r\n"]
    worker_side.close()
    assert do_read() is main.CONNECTION_DONE
    ours.close()
    assert do_read() is main.CONNECTION_LOST


def test_client_tcp_connections_read_with_plain_recv():
    """
    A plain TCP client connection reads the same way, straight into the
    front's protocol: a request that arrives is parsed and sent to a worker.
    """
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client_side = socket.create_connection(listener.getsockname())
        ours, address = listener.accept()
    ours.setblocking(False)
    transport = tcp.Server.__new__(tcp.Server)
    transport.socket = ours
    transport.bufferSize = 65536
    transport.client = address
    transport._addressType = IPv4Address
    reactor = MemoryReactorClock()
    settings = BalancerSettings(health_interval=0)
    pool = Pool(reactor, settings, dial=dial, probe=probe)
    pool.add(Backend("1", "/w1.sock"))
    front = FrontFactory(reactor, pool, settings).buildProtocol(None)
    front.makeConnection(transport)
    assert transport.doRead.__qualname__ == "read_with_recv.<locals>.doRead"
    assert transport.doRead() is None
    client_side.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert transport.doRead() is None
    assert front.active is not None and front.active.url == b"/x"
    assert len(reactor.unixClients) == 1
    client_side.close()
    assert transport.doRead() is main.CONNECTION_DONE
    ours.close()
    assert transport.doRead() is main.CONNECTION_LOST


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)


@implementer(ITCPTransport)
class TCPTransport(StringTransport):
    """A StringTransport that says it is TCP and records TCP_NODELAY."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.no_delay

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def loseWriteConnection(self) -> None:
        self.loseConnection()


def test_client_tcp_connections_send_without_nagle_delay():
    """
    The front turns Nagle off on client TCP connections: the last short
    write of a response relayed in pieces is not held for an ACK.
    """
    rig = Rig(workers=1)
    proto = rig.factory.buildProtocol(None)
    transport = TCPTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    proto.makeConnection(transport)
    assert transport.no_delay
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    upstream.dataReceived(CHUNKED + BODY)
    assert transport.value() == CHUNKED + BODY


REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /static/x HTTP/1.1\r\nHost: h\r\nIf-None-Match: x\r\n\r\n",
]
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    CHUNKED + BODY,
    b"HTTP/1.1 200 OK\r\nKeep-Alive: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the worker closes",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    b"garbage\r\n\r\n",
    b"",
]


def _mutated(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([0, 0, 1, 2, 4])):
        at = rng.randrange(len(out) + 1)
        action = rng.randrange(3)
        if action == 0 and at < len(out):
            del out[at]
        elif action == 1:
            out.insert(at, rng.choice(b"\r\n :;0aZ\x00\x7f\xff"))
        elif at < len(out):
            out[at] = rng.randrange(256)
    return bytes(out)


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    pieces, at = [], 0
    while at < len(data):
        n = rng.randint(1, 48)
        pieces.append(data[at : at + n])
        at += n
    return pieces


def test_random_streams_never_break_the_front():
    """
    Seeded random client streams (one to three requests, mutated, cut
    anywhere) against workers answering well or badly, cut anywhere: nothing
    raises out of the front, whatever reaches the client is HTTP, and once
    the client is gone every worker slot is free again.
    """
    rng = random.Random(20261206)
    for _ in range(1500):
        rig = Rig(workers=2, max_body=64, max_header_bytes=512)
        proto, client = rig.client()
        stream = b"".join(rng.choice(REQUESTS) for _ in range(rng.randint(1, 3)))
        for piece in _pieces(rng, _mutated(rng, stream)):
            if client.disconnecting or proto.closing:
                break
            proto.dataReceived(piece)
            while rig.connected < len(rig.reactor.unixClients):
                upstream, worker, _ = rig.accept_upstream()
                answer = _mutated(rng, rng.choice(RESPONSES))
                for part in _pieces(rng, answer):
                    if upstream.exchange is None or worker.disconnecting:
                        break
                    upstream.dataReceived(part)
                if upstream.exchange is not None and rng.random() < 0.5:
                    upstream.connectionLost(Failure(ConnectionDone()))
        out = client.value()
        assert out == b"" or out.startswith(b"HTTP/1.1 "), out[:80]
        proto.connectionLost(Failure(ConnectionDone()))
        assert [b.in_flight for b in rig.backends] == [0, 0]
        assert not rig.pool.queue

"""
The front proxy and the pool, driven in memory: client connections on
StringTransports, worker connections handed out by a MemoryReactorClock.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from clickpass.balancer.client import FrontConnection, FrontFactory
from clickpass.balancer.forwarding import TrustedProxies, parse_ranges
from clickpass.balancer.health import probe
from clickpass.balancer.pool import Backend, Pool, PoolEvents
from clickpass.balancer.settings import BalancerSettings
from clickpass.balancer.static import StaticFiles
from clickpass.balancer.worker_connection import WorkerConnection, dial

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Events(PoolEvents):
    def __init__(self) -> None:
        self.stuck_backends: list[Backend] = []
        self.idle_backends: list[Backend] = []

    def stuck(self, backend: Backend) -> None:
        self.stuck_backends.append(backend)

    def idle(self, backend: Backend) -> None:
        self.idle_backends.append(backend)


class Rig:
    """A front with N fake workers."""

    def __init__(self, workers: int = 2, static_dir: Path | None = None, **limits: object) -> None:
        self.settings = dataclasses.replace(
            BalancerSettings(health_interval=0),
            **limits,  # type: ignore[arg-type]
        )
        self.reactor = MemoryReactorClock()
        self.events = Events()
        self.pool = Pool(self.reactor, self.settings, self.events, dial=dial, probe=probe)
        self.backends = [Backend(str(i + 1), f"/w{i + 1}.sock") for i in range(workers)]
        for backend in self.backends:
            self.pool.add(backend)
        static = StaticFiles(static_dir, 60) if static_dir else None
        self.factory = FrontFactory(self.reactor, self.pool, self.settings, static=static)
        self.connected = 0

    def client(self) -> tuple[FrontConnection, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        proto.makeConnection(transport)
        return proto, transport

    def accept_upstream(self) -> tuple[WorkerConnection, StringTransport, str]:
        """Complete the oldest pending connect to a worker."""
        path, factory, _, _ = self.reactor.unixClients[self.connected]
        self.connected += 1
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, path

    def refuse_upstream(self) -> str:
        path, factory, _, _ = self.reactor.unixClients[self.connected]
        self.connected += 1
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        return str(path)


def test_request_goes_to_a_worker_with_forwarding_headers():
    """
    A GET is forwarded as HTTP/1.1 with X-Forwarded-For/-Proto/-Host set from
    the connection, client-sent X-Forwarded-For dropped, hop-by-hop headers
    stripped; the response comes back to the client unchanged.
    """
    rig = Rig()
    proto, client = rig.client()
    proto.dataReceived(
        b"GET /a?b=1 HTTP/1.1\r\nHost: login.example\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Clickpass-Client: 6.6.6.6\r\n"
        b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nAccept: */*\r\n\r\n"
    )
    upstream, worker, _ = rig.accept_upstream()
    sent = worker.value()
    assert sent.startswith(b"GET /a?b=1 HTTP/1.1\r\n")
    assert b"X-Forwarded-For: 192.0.2.7\r\n" in sent
    assert sent.count(b"X-Clickpass-Client") == 1
    assert b"X-Clickpass-Client: 192.0.2.7\r\n" in sent
    assert b"X-Forwarded-Proto: http\r\n" in sent
    assert b"X-Forwarded-Host: login.example\r\n" in sent
    assert b"6.6.6.6" not in sent
    assert b"X-Secret" not in sent and b"Keep-Alive" not in sent and b"Connection" not in sent
    assert b"Accept: */*\r\n" in sent
    upstream.dataReceived(OK)
    assert client.value() == OK
    assert rig.backends[0].in_flight + rig.backends[1].in_flight == 0


def test_trusted_forwarded_for_is_appended_to():
    """
    From a trusted proxy, the client's X-Forwarded-For is kept and the peer
    appended, and the client is its rightmost hop outside the trusted ranges.
    """
    rig = Rig()
    rig.factory.trusted_proxies = TrustedProxies(parse_ranges(["192.0.2.0/24", "10.0.0.0/8"]))
    proto, _ = rig.client()
    proto.dataReceived(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.1\r\n"
        b"X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: https\r\n"
        b"X-Clickpass-Client: 6.6.6.6\r\n\r\n"
    )
    _, worker, _ = rig.accept_upstream()
    sent = worker.value()
    assert b"X-Forwarded-For: 6.6.6.6, 203.0.113.1, 10.1.2.3, 192.0.2.7\r\n" in sent
    assert b"X-Forwarded-Proto: https\r\n" in sent
    assert sent.count(b"X-Clickpass-Client") == 1
    assert b"X-Clickpass-Client: 203.0.113.1\r\n" in sent


def test_forwarding_headers_from_an_untrusted_peer_are_dropped():
    """With trusted proxies configured, a peer outside them is its own client."""
    rig = Rig()
    rig.factory.trusted_proxies = TrustedProxies(parse_ranges(["10.0.0.0/8"]))
    proto, _ = rig.client()
    proto.dataReceived(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.1\r\n"
        b"X-Forwarded-Proto: https\r\n\r\n"
    )
    _, worker, _ = rig.accept_upstream()
    sent = worker.value()
    assert b"203.0.113.1" not in sent
    assert b"X-Forwarded-Proto: http\r\n" in sent
    assert b"X-Clickpass-Client: 192.0.2.7\r\n" in sent


def test_keep_alive_connection_to_the_worker_is_reused():
    """A second request on the same client reuses the idle worker connection."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    upstream.dataReceived(OK)
    worker.clear()
    proto.dataReceived(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(rig.reactor.unixClients) == 1
    assert worker.value().startswith(b"GET /2 ")
    upstream.dataReceived(OK)
    assert client.value() == OK + OK


def test_least_outstanding_worker_is_chosen():
    """Requests go to the worker with the fewest in flight."""
    rig = Rig(workers=2)
    for _ in range(3):
        proto, _ = rig.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    paths = [c[0] for c in rig.reactor.unixClients]
    assert paths == ["/w1.sock", "/w2.sock", "/w1.sock"]


def test_queue_then_503_with_retry_after_on_timeout():
    """
    Above the per-worker cap a request waits in the queue; when the queue
    timeout passes it gets a 503 with Retry-After.
    """
    rig = Rig(workers=1, max_in_flight=1, queue_timeout=2.0, sweep_interval=0.5)
    rig.pool.start()
    first, _ = rig.client()
    first.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    second, client2 = rig.client()
    second.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(rig.pool.queue) == 1
    rig.reactor.advance(1.0)
    assert client2.value() == b""
    rig.reactor.advance(1.5)
    assert client2.value().startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 2\r\n" in client2.value()
    assert rig.pool.counters.errors["queue_timeout"] == 1


def test_queued_request_is_sent_when_a_worker_frees_up():
    """A queued request rides the connection the finished request frees."""
    rig = Rig(workers=1, max_in_flight=1)
    first, client1 = rig.client()
    first.dataReceived(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    second, client2 = rig.client()
    second.dataReceived(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    worker.clear()
    upstream.dataReceived(OK)
    assert worker.value().startswith(b"GET /2 ")
    upstream.dataReceived(OK)
    assert client1.value() == OK and client2.value() == OK


def test_queue_full_gets_503_at_once():
    """When the queue is full a request is refused at once."""
    rig = Rig(workers=1, max_in_flight=1, queue_size=1)
    for _ in range(2):
        proto, _ = rig.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 503 ")


def test_refused_connect_retries_on_another_worker_and_ejects():
    """A worker that refuses the connection is ejected; the request goes elsewhere."""
    rig = Rig(workers=2)
    proto, client = rig.client()
    proto.dataReceived(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    assert rig.refuse_upstream() == "/w1.sock"
    upstream, worker, path = rig.accept_upstream()
    assert path == "/w2.sock"
    assert worker.value().endswith(b"\r\n\r\nabc")
    upstream.dataReceived(OK)
    assert client.value() == OK
    assert rig.backends[0].ejected_until > rig.reactor.seconds()
    assert rig.pool.counters.errors["retried"] == 1


def test_post_that_reached_a_worker_is_never_sent_twice():
    """A POST whose worker connection dies gets a 502, not a second send."""
    rig = Rig(workers=2)
    proto, client = rig.client()
    proto.dataReceived(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
    upstream, _, _ = rig.accept_upstream()
    upstream.connectionLost(Failure(ConnectionError("reset")))
    assert len(rig.reactor.unixClients) == 1
    assert client.value().startswith(b"HTTP/1.1 502 ")


def test_get_on_a_dead_connection_without_reply_is_retried():
    """A bodiless GET whose worker died without a byte of answer is retried elsewhere."""
    rig = Rig(workers=2)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    upstream.connectionLost(Failure(ConnectionError("reset")))
    upstream2, _, path = rig.accept_upstream()
    assert path == "/w2.sock"
    upstream2.dataReceived(OK)
    assert client.value() == OK


def test_request_timeout_is_504_and_the_worker_is_reported_stuck():
    """A worker that does not answer in time: 504 to the client, stuck event."""
    rig = Rig(workers=1, request_timeout=5.0, sweep_interval=1.0)
    rig.pool.start()
    proto, client = rig.client()
    proto.dataReceived(b"GET /hang HTTP/1.1\r\nHost: h\r\n\r\n")
    _, worker, _ = rig.accept_upstream()
    rig.reactor.advance(4.0)
    assert client.value() == b""
    rig.reactor.advance(2.0)
    assert client.value().startswith(b"HTTP/1.1 504 ")
    assert rig.events.stuck_backends == [rig.backends[0]]
    assert worker.disconnecting or worker.disconnected
    assert rig.backends[0].in_flight == 0


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"GET http://evil/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=[
        "request-line",
        "bad-length",
        "two-lengths",
        "cl-and-te",
        "te-not-chunked",
        "absolute",
        "no-host",
    ],
)
def test_malformed_requests_get_400_and_close(request_bytes):
    """Malformed and smuggling-shaped requests: 400, closed, nothing sent to a worker."""
    rig = Rig()
    proto, client = rig.client()
    proto.dataReceived(request_bytes)
    assert client.value().startswith(b"HTTP/1.1 400 "), client.value()
    assert b"Connection: close\r\n" in client.value()
    assert client.disconnecting
    assert rig.reactor.unixClients == []


def test_oversized_headers_get_431():
    """A request head larger than max_header_bytes is refused with a 431."""
    rig = Rig(max_header_bytes=1024)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000)
    assert client.value().startswith(b"HTTP/1.1 431 ")
    assert client.disconnecting


def test_body_over_the_limit_is_413():
    """A Content-Length above max_body is refused with 413 before anything is forwarded."""
    rig = Rig(max_body=10)
    proto, client = rig.client()
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 413 ")
    assert rig.reactor.unixClients == []


def test_chunked_request_is_read_whole_then_sent_with_its_length():
    """
    A chunked request body is read whole before the request takes a worker,
    and goes to the worker decoded, with a Content-Length.
    """
    rig = Rig()
    proto, client = rig.client()
    proto.dataReceived(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    assert rig.reactor.unixClients == []
    assert rig.backends[0].in_flight == rig.backends[1].in_flight == 0
    proto.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    assert b"Transfer-Encoding" not in worker.value()
    assert worker.value().endswith(b"Content-Length: 5\r\n\r\nabcde")
    assert worker.producer is None
    upstream.dataReceived(OK)
    assert client.value() == OK


def test_a_body_is_read_whole_before_it_takes_a_worker():
    """
    A request whose body comes slowly takes no worker slot until its last
    byte is in; the worker then gets head and body in one write.
    """
    rig = Rig(workers=1, max_in_flight=1)
    slow, slow_client = rig.client()
    slow.dataReceived(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n1234567")
    assert rig.backends[0].in_flight == 0
    other, other_client = rig.client()
    other.dataReceived(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    assert worker.value().startswith(b"GET /b ")
    upstream.dataReceived(OK)
    assert other_client.value() == OK
    slow.dataReceived(b"890")
    assert worker.value().endswith(
        b"Content-Length: 10\r\nX-Forwarded-For: 192.0.2.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Clickpass-Client: 192.0.2.7\r\nX-Forwarded-Host: h\r\n"
        b"\r\n1234567890"
    )
    upstream.dataReceived(OK)
    assert slow_client.value() == OK


def test_a_body_that_does_not_arrive_in_time_is_408_and_no_worker_is_stuck():
    """body_timeout after its head, a body still incomplete gets a 408 and a close."""
    rig = Rig(body_timeout=5.0)
    proto, client = rig.client()
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabcdefg")
    rig.reactor.advance(4.9)
    rig.factory.sweep(rig.reactor.seconds())
    assert client.value() == b""
    rig.reactor.advance(0.2)
    rig.factory.sweep(rig.reactor.seconds())
    assert client.value().startswith(b"HTTP/1.1 408 ")
    assert client.disconnecting
    assert rig.reactor.unixClients == []
    assert rig.events.stuck_backends == []
    assert rig.pool.counters.errors["body_timeout"] == 1


def test_a_client_that_does_not_read_its_answer_gets_no_worker_replaced():
    """
    At request_timeout, an exchange whose worker had started answering is
    cut, but the worker is not reported stuck (the client stalled, not it).
    """
    rig = Rig(request_timeout=10.0)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nxx")
    rig.reactor.advance(11)
    rig.pool.sweep()
    assert rig.events.stuck_backends == []
    assert client.disconnecting or client.disconnected
    assert worker.disconnecting or worker.disconnected
    assert rig.backends[0].in_flight == 0


def test_chunked_response_passes_through_and_streams_with_backpressure():
    """
    A chunked response is re-chunked to an HTTP/1.1 client, and while it
    streams the worker connection is registered as the client's producer.
    """
    rig = Rig()
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        b"5\r\nhello\r\n"
    )
    assert client.producer is worker
    upstream.dataReceived(b"0\r\n\r\n")
    assert client.producer is None
    out = client.value()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.count(b"Transfer-Encoding: chunked") == 1
    assert b"Connection: keep-alive" not in out
    assert out.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_http10_client_gets_a_close_delimited_body_for_a_chunked_response():
    """An HTTP/1.0 client never sees chunked encoding; the connection closes instead."""
    rig = Rig()
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    out = client.value()
    assert b"chunked" not in out
    assert b"Connection: close\r\n" in out
    assert out.endswith(b"\r\n\r\nhello")
    assert client.disconnecting


@pytest.mark.parametrize("connection", [b"Connection", b"Proxy-Connection"])
def test_http10_keep_alive_client_is_answered_as_http10(connection):
    """
    An HTTP/1.0 client asking for keep-alive (the front honours Proxy-Connection, as llhttp did
    too) is still HTTP/1.0: no Host needed, its response says keep-alive,
    and its connection takes a second request.
    """
    rig = Rig(workers=1)
    proto, client = rig.client()
    request = b"GET / HTTP/1.0\r\n" + connection + b": keep-alive\r\n\r\n"
    proto.dataReceived(request)
    upstream, worker, _ = rig.accept_upstream()
    assert worker.value().startswith(b"GET / HTTP/1.1\r\n")
    assert connection + b":" not in worker.value()
    upstream.dataReceived(OK)
    out = client.value()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: keep-alive\r\n" in out and out.endswith(b"\r\n\r\nok")
    assert not client.disconnecting
    client.clear()
    worker.clear()
    proto.dataReceived(request)
    upstream.dataReceived(OK)
    assert b"Connection: keep-alive\r\n" in client.value()


def test_http11_client_asking_to_close_still_needs_a_host():
    """Connection: close does not make an HTTP/1.1 request an HTTP/1.0 one."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 400 ")
    assert not rig.reactor.unixClients


def test_head_response_ends_at_its_headers():
    """A HEAD response with a Content-Length is complete without a body."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
    assert client.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n"
    worker.clear()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream.dataReceived(OK)
    assert client.value().endswith(OK)


def test_client_leaving_mid_request_frees_the_worker():
    """When the client goes, its worker connection is aborted and the slot freed."""
    rig = Rig(workers=1)
    proto, _client = rig.client()
    proto.dataReceived(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    _, worker, _ = rig.accept_upstream()
    proto.connectionLost(Failure(ConnectionError()))
    assert rig.backends[0].in_flight == 0
    assert worker.disconnecting or worker.disconnected
    assert rig.pool.counters.errors["client_gone"] == 1


def test_pipelined_requests_are_answered_in_order():
    """Two pipelined requests: the second is sent only after the first is answered."""
    rig = Rig(workers=2)
    proto, client = rig.client()
    proto.dataReceived(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(rig.reactor.unixClients) == 1
    upstream, _, _ = rig.accept_upstream()
    upstream.dataReceived(OK)
    upstream2, _, _ = (
        rig.accept_upstream()
        if len(rig.reactor.unixClients) > 1
        else (
            upstream,
            None,
            None,
        )
    )
    upstream2.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
    assert client.value() == OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"


def test_a_request_split_anywhere_is_forwarded_the_same():
    """
    A POST with a body, then a pipelined GET, reaching the front in two
    reads split at every byte: the worker gets the same head and body, and
    the second request follows once the first is answered.
    """
    stream = (
        b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        b"\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    for cut in range(1, len(stream)):
        rig = Rig(workers=1)
        proto, client = rig.client()
        proto.dataReceived(stream[:cut])
        proto.dataReceived(stream[cut:])
        upstream, worker, _ = rig.accept_upstream()
        assert worker.value() == (
            b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
            b"X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
            b"X-Clickpass-Client: 192.0.2.7\r\nX-Forwarded-Host: h\r\n\r\nhello"
        ), cut
        worker.clear()
        upstream.dataReceived(OK)
        assert worker.value().startswith(b"GET /2 HTTP/1.1\r\n"), cut
        upstream.dataReceived(OK)
        assert client.value() == OK + OK, cut
        assert not client.disconnecting


def test_empty_lines_between_requests_do_not_start_a_head():
    """A CRLF after a request (split over reads) is ignored: no 400, no 408 later."""
    rig = Rig(workers=1, header_timeout=10.0)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\r")
    upstream, _, _ = rig.accept_upstream()
    upstream.dataReceived(OK)
    proto.dataReceived(b"\n")
    rig.reactor.advance(11)
    rig.factory.sweep(rig.reactor.seconds())
    assert client.value() == OK
    assert not client.disconnecting


def test_chunked_request_body_over_the_limit_is_413():
    """A chunked body that grows past max_body is refused while it arrives."""
    rig = Rig(max_body=10)
    proto, client = rig.client()
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    proto.dataReceived(b"6\r\nabcdef\r\n")
    assert client.value() == b""
    proto.dataReceived(b"6\r\nabcdef\r\n")
    assert client.value().startswith(b"HTTP/1.1 413 ")
    assert client.disconnecting


def test_bad_chunked_framing_is_400():
    rig = Rig()
    proto, client = rig.client()
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert client.value().startswith(b"HTTP/1.1 400 ")
    assert client.disconnecting


def test_expect_continue_is_answered_by_the_front():
    """Expect: 100-continue gets 100 Continue from the front; the worker never sees Expect."""
    rig = Rig()
    proto, client = rig.client()
    proto.dataReceived(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert client.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.dataReceived(b"hi")
    _, worker, _ = rig.accept_upstream()
    assert b"Expect" not in worker.value()


def test_static_files_are_served_by_the_front_with_caching(tmp_path):
    """/static/ files come from the front with ETag and Cache-Control; If-None-Match is 304."""
    (tmp_path / "app.css").write_bytes(b"body{}")
    rig = Rig(static_dir=tmp_path)
    proto, client = rig.client()
    proto.dataReceived(b"GET /static/app.css HTTP/1.1\r\nHost: h\r\n\r\n")
    out = client.value()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Cache-Control: public, max-age=60\r\n" in out
    assert b"Content-Type: text/css; charset=utf-8\r\n" in out
    assert out.endswith(b"\r\n\r\nbody{}")
    etag = out.split(b"ETag: ")[1].split(b"\r\n")[0]
    client.clear()
    proto.dataReceived(
        b"GET /static/app.css HTTP/1.1\r\nHost: h\r\nIf-None-Match: " + etag + b"\r\n\r\n"
    )
    assert client.value().startswith(b"HTTP/1.1 304 ")
    client.clear()
    proto.dataReceived(b"GET /static/../secret HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 404 ")
    assert rig.reactor.unixClients == []


def test_redirect_to_https():
    """With a redirect base, plain-HTTP requests are redirected to the same path over HTTPS."""
    rig = Rig()
    rig.factory.redirect_base = b"https://login.example"
    proto, client = rig.client()
    proto.dataReceived(b"GET /signin?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 301 ")
    assert b"Location: https://login.example/signin?x=1\r\n" in client.value()


def test_slow_headers_time_out_with_408():
    """A client that trickles its headers gets a 408 after header_timeout."""
    rig = Rig(header_timeout=10.0)
    proto, client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHo")
    rig.reactor.advance(5)
    rig.factory.sweep(rig.reactor.seconds())
    assert client.value() == b""
    rig.reactor.advance(6)
    rig.factory.sweep(rig.reactor.seconds())
    assert client.value().startswith(b"HTTP/1.1 408 ")
    assert client.disconnecting


def test_draining_backend_reports_idle_when_its_last_request_ends():
    """A drained worker gets no new requests and is reported idle once its requests finish."""
    rig = Rig(workers=2)
    proto, _client = rig.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    rig.pool.drain(rig.backends[0])
    assert rig.events.idle_backends == []
    proto2, _ = rig.client()
    proto2.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert rig.reactor.unixClients[-1][0] == "/w2.sock"
    upstream.dataReceived(OK)
    assert rig.events.idle_backends == [rig.backends[0]]


def test_a_health_check_timing_out_on_a_busy_worker_does_not_eject_it():
    """
    A worker that goes on answering proxied requests while its health check
    waits is saturated, not dead: it stays routable. A silent one is ejected.
    (Ejecting every busy worker made a loaded node unready: a takeover.)
    """
    rig = Rig(workers=2)
    proto, client = rig.client()
    proto.dataReceived(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, path = rig.accept_upstream()
    assert path == "/w1.sock"
    rig.pool.check_health()  # both checks connect and are never answered
    upstream.dataReceived(OK)
    assert client.value() == OK
    rig.reactor.advance(rig.settings.health_timeout + 0.1)
    now = rig.reactor.seconds()
    assert rig.backends[0].ejected_until <= now
    assert rig.backends[1].ejected_until > now
    assert rig.pool.routable() == 1
    assert rig.pool.counters.errors["health_busy"] == 1


def test_a_head_trickled_byte_by_byte_is_gathered_in_linear_time(monkeypatch):
    """
    A 30 KB head sent a byte per read: the front parses it with what is new
    each time, never all of it again (a quadratic cost a slow client could
    make the front pay), and forwards it whole.
    """
    import clickpass.balancer.client as client_side
    from clickpass.balancer._http1 import parse_request as real

    searched = []

    def counting(buf, max_head, max_body, trust, scanned=0):
        searched.append(len(buf) - scanned)
        return real(buf, max_head, max_body, trust, scanned)

    monkeypatch.setattr(client_side, "parse_request", counting)
    rig = Rig(max_header_bytes=32 * 1024)
    proto, client = rig.client()
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 30_000 + b"\r\n\r\n"
    for i in range(len(head)):
        proto.dataReceived(head[i : i + 1])
    assert sum(searched) == len(head)
    _, worker, _ = rig.accept_upstream()
    assert worker.value().startswith(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 30_000)
    assert client.value() == b""

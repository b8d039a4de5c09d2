"""
The pages the front answers itself for monitoring: /healthz always (the
front's liveness), /readyz when no worker can take a request, and /metrics
(built asynchronously, on the public listeners or only on a separate
metrics listener).
"""

from __future__ import annotations

import pytest

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport

from clickpass.balancer.client import FrontFactory
from tests.unit.balancer.test_proxy import OK, Rig

ALIVE = (
    b"HTTP/1.1 200 OK\r\nServer: Clickpass\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 3\r\nCache-Control: no-store\r\n\r\nok\n"
)


def test_healthz_is_answered_by_the_front_without_asking_a_worker() -> None:
    """
    /healthz is the front's own 200 (its reactor is turning), even with a
    worker free to ask: no connection to a worker is made, and the client's
    connection stays open for the next request.
    """
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value() == ALIVE
    assert rig.reactor.unixClients == []
    assert not client.disconnecting
    # Counted as the front's request and 2xx, and no worker's.
    assert rig.pool.counters.requests == 1 and rig.pool.counters.responses[2] == 1
    assert rig.backends[0].counters.requests == 0


def test_healthz_answers_while_every_worker_is_stuck_or_gone() -> None:
    """
    With the only worker sitting on requests (and then gone, and the queue
    full), /healthz still answers at once: liveness is the front's, not the
    workers'.
    """
    rig = Rig(workers=1, max_in_flight=1, queue_size=1)
    busy, _ = rig.client()
    busy.dataReceived(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.accept_upstream()  # the worker never answers
    waiting, _ = rig.client()
    waiting.dataReceived(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(rig.pool.queue) == 1
    proto, client = rig.client()
    proto.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value() == ALIVE
    rig.pool.remove(rig.backends[0])
    client.clear()
    proto.dataReceived(b"HEAD /healthz?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert client.value() == ALIVE[: -len(b"\r\nok\n")] + b"Connection: close\r\n\r\n"
    assert client.disconnecting


def test_healthz_other_methods_are_refused_and_near_names_proxied() -> None:
    """POST /healthz is a 405 naming GET and HEAD; /healthzz is an ordinary path."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"POST /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab")
    assert client.value().startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"Allow: GET, HEAD\r\n" in client.value()
    assert client.disconnecting
    proto, client = rig.client()
    proto.dataReceived(b"GET /healthzz HTTP/1.1\r\nHost: h\r\n\r\n")
    _, worker, _ = rig.accept_upstream()
    assert worker.value().startswith(b"GET /healthzz HTTP/1.1\r\n")


def test_healthz_carries_the_nodes_hsts_header() -> None:
    """Served over HTTPS, the front's /healthz says so as the application's answers do."""
    rig = Rig(workers=1)
    hsts = b"Strict-Transport-Security: max-age=31536000\r\n"
    factory = FrontFactory(rig.reactor, rig.pool, rig.settings, tls=True, healthz_headers=hsts)
    proto = factory.buildProtocol(None)
    client = StringTransport()
    proto.makeConnection(client)
    proto.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 200 OK\r\nServer: Clickpass\r\n" + hsts)
    assert client.value().endswith(b"\r\n\r\nok\n")


def test_readyz_is_503_at_once_when_no_worker_is_routable() -> None:
    """With every worker gone from the pool, /readyz is answered by the front: 503."""
    rig = Rig(workers=1)
    rig.pool.remove(rig.backends[0])
    proto, client = rig.client()
    proto.dataReceived(b"GET /readyz HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"no worker is taking requests" in client.value()
    assert rig.reactor.unixClients == []
    assert not client.disconnecting  # keep-alive: the connection stays


def test_readyz_is_503_when_every_worker_is_ejected() -> None:
    """Ejected workers do not count as routable either."""
    rig = Rig(workers=1)
    rig.backends[0].ejected_until = rig.reactor.seconds() + 30
    proto, client = rig.client()
    proto.dataReceived(b"GET /readyz?verbose=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 503 ")


def test_readyz_goes_to_a_worker_when_one_is_routable() -> None:
    """With a worker in the pool, /readyz is the worker's answer (it checks the database)."""
    rig = Rig(workers=1)
    proto, client = rig.client()
    proto.dataReceived(b"GET /readyz HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, worker, _ = rig.accept_upstream()
    assert worker.value().startswith(b"GET /readyz HTTP/1.1\r\n")
    upstream.dataReceived(OK)
    assert client.value() == OK


def test_readyz_prefix_paths_are_not_the_probe() -> None:
    """/readyzz is an ordinary path: it goes to a worker even when none is routable (503 queue)."""
    rig = Rig(workers=1, queue_timeout=1.0)
    rig.pool.remove(rig.backends[0])
    proto, client = rig.client()
    proto.dataReceived(b"GET /readyzz HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value() == b""  # queued, not answered by the front


def metrics_factory(
    rig: Rig, page: Deferred[bytes] | None, only: bool = False, token: bytes | None = None
) -> FrontFactory:
    factory = FrontFactory(
        rig.reactor,
        rig.pool,
        rig.settings,
        metrics_page=(lambda: page) if page is not None else None,
        metrics_token=token,
        metrics_only=only,
    )
    rig.factory = factory
    return factory


def test_metrics_page_is_answered_when_it_is_ready_and_in_order() -> None:
    """
    /metrics waits for its page (the workers' snapshots) and is answered by
    the front with the Prometheus content type; a pipelined request behind
    it is answered after it.
    """
    rig = Rig(workers=1)
    page: Deferred[bytes] = Deferred()
    metrics_factory(rig, page)
    proto, client = rig.client()
    proto.dataReceived(
        b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert client.value() == b""
    assert rig.reactor.unixClients == []
    page.callback(b"# TYPE x counter\nx 1\n")
    answer = client.value()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in answer
    assert answer.endswith(b"\r\n\r\n# TYPE x counter\nx 1\n")
    upstream, worker, _ = rig.accept_upstream()
    assert worker.value().startswith(b"GET /next ")
    upstream.dataReceived(OK)
    assert client.value().endswith(OK)


@pytest.mark.logs_errors("a failing metrics page is logged")
def test_metrics_page_failure_is_a_500_and_a_close() -> None:
    """If the page cannot be built the client gets one 500 and the connection closes."""
    rig = Rig(workers=1)
    page: Deferred[bytes] = Deferred()
    metrics_factory(rig, page)
    proto, client = rig.client()
    proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
    page.errback(RuntimeError("boom"))
    assert client.value().startswith(b"HTTP/1.1 500 ")
    assert client.disconnecting


def test_metrics_page_after_the_client_left_is_dropped() -> None:
    """A client that leaves before the page is ready gets nothing written."""
    rig = Rig(workers=1)
    page: Deferred[bytes] = Deferred()
    metrics_factory(rig, page)
    proto, client = rig.client()
    proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
    proto.connectionLost()
    page.callback(b"x 1\n")
    assert client.value() == b""


def test_metrics_post_is_refused() -> None:
    """Only GET and HEAD read the metrics."""
    rig = Rig(workers=1)
    metrics_factory(rig, succeed(b"x 1\n"))
    proto, client = rig.client()
    proto.dataReceived(b"POST /metrics HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 405 ")


def test_metrics_only_listener_answers_nothing_else() -> None:
    """The separate metrics listener serves /metrics and 404 for every other path."""
    rig = Rig(workers=1)
    metrics_factory(rig, succeed(b"x 1\n"), only=True)
    proto, client = rig.client()
    proto.dataReceived(b"GET /account HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 404 ")
    assert rig.reactor.unixClients == []
    client.clear()
    proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 200 ") and client.value().endswith(b"x 1\n")


def test_public_listener_without_metrics_passes_metrics_on() -> None:
    """When /metrics lives on its own listener, the public one forwards the path like any other."""
    rig = Rig(workers=1)
    metrics_factory(rig, None)
    proto, _ = rig.client()
    proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
    _, worker, _ = rig.accept_upstream()
    assert worker.value().startswith(b"GET /metrics ")


def test_metrics_request_with_a_body_is_answered_and_closed() -> None:
    """A body sent with GET /metrics is not buffered for a worker; the connection closes."""
    rig = Rig(workers=1)
    page: Deferred[bytes] = Deferred()
    metrics_factory(rig, page)
    proto, client = rig.client()
    proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody")
    page.callback(b"x 1\n")
    assert client.value().startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close\r\n" in client.value()
    assert client.disconnecting
    assert rig.reactor.unixClients == []


TOKEN = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "authorization",
    [
        b"",
        b"Authorization: Bearer wrong\r\n",
        b"Authorization: Basic " + TOKEN + b"\r\n",
        b"Authorization: Bearer " + TOKEN[:-1] + b"\r\n",
        b"Authorization: Bearer " + TOKEN + b"\r\nAuthorization: Bearer " + TOKEN + b"\r\n",
    ],
    ids=["none", "wrong", "basic", "prefix", "twice"],
)
def test_metrics_with_a_token_need_it(authorization: bytes) -> None:
    """With a metrics token, /metrics without exactly that bearer token is a 401."""
    rig = Rig(workers=1)
    metrics_factory(rig, succeed(b"x 1\n"), token=TOKEN)
    proto, client = rig.client()
    proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: h\r\n" + authorization + b"\r\n")
    assert client.value().startswith(b"HTTP/1.1 401 ")
    assert b'WWW-Authenticate: Bearer realm="metrics"\r\n' in client.value()
    assert b"x 1" not in client.value()
    assert rig.reactor.unixClients == []


def test_metrics_with_the_token_are_served() -> None:
    """The right bearer token (any case of the scheme) gets the page."""
    rig = Rig(workers=1)
    metrics_factory(rig, succeed(b"x 1\n"), token=TOKEN)
    proto, client = rig.client()
    proto.dataReceived(
        b"GET /metrics HTTP/1.1\r\nHost: h\r\nauthorization: bearer " + TOKEN + b"\r\n\r\n"
    )
    assert client.value().startswith(b"HTTP/1.1 200 ") and client.value().endswith(b"x 1\n")

"""
The pages the front answers itself for monitoring: /readyz when no worker
can take a request, and /metrics (built asynchronously, on the public
listeners or only on a separate metrics listener).
"""

from __future__ import annotations

import pytest

from twisted.internet.defer import Deferred, succeed

from clickpass.balancer.client import FrontFactory
from tests.unit.balancer.test_proxy import OK, Rig


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

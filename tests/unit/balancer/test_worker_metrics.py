"""
The workers' side of /metrics: the router counts each answered request by
route pattern, method and status with its latency, and the worker hands its
registry's snapshot to the front over its stdin/stdout pipes.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from clickpass.monitor.metrics import Registry, RequestMetrics
from clickpass.web.routing import HTTPError, Router
from clickpass.worker import FrontChannel


def counted(registry: Registry) -> dict[tuple[str, ...], float]:
    samples = registry.snapshot()["clickpass_http_requests_total"]["samples"]
    return {tuple(labels): value for labels, value in samples}


def test_requests_are_counted_by_route_pattern_and_status() -> None:
    """
    Counts use the route's pattern (/id/{opaque}), never the raw path; errors
    raised by handlers count with their status; unknown paths count as
    (unmatched); latency is measured on the injected clock.
    """
    clock = Clock()
    registry = Registry()
    router = Router()
    router.observer = RequestMetrics(registry, clock.seconds)

    async def identity(request: Any, opaque: str) -> bytes:
        clock.advance(0.2)
        return b"id " + opaque.encode()

    async def refused(request: Any) -> bytes:
        raise HTTPError(403, "no")

    router.add("GET", "/id/{opaque}", identity)
    router.add("POST", "/refused", refused)
    client: Any = StubTreq(router)
    for path in ("/id/abc", "/id/def"):
        response = client.get("http://h" + path)
        client.flush()
        assert response.result.code == 200
    client.post("http://h/refused")
    client.get("http://h/nothing/here")
    client.flush()
    assert counted(registry) == {
        ("/id/{opaque}", "GET", "200"): 2.0,
        ("/refused", "POST", "403"): 1.0,
        ("(unmatched)", "-", "404"): 1.0,
    }
    histogram = registry.snapshot()["clickpass_http_request_seconds"]
    by_route = {tuple(s[0]): s for s in histogram["samples"]}
    assert by_route[("/id/{opaque}",)][3] == 2
    assert abs(by_route[("/id/{opaque}",)][2] - 0.4) < 1e-9


def test_worker_answers_the_fronts_metrics_question() -> None:
    """A "metrics" line on stdin is answered with one "metrics JSON" line on stdout."""
    registry = Registry()
    registry.counter("x_total", "X.").inc(2)
    channel = FrontChannel(lambda: None, registry)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"metr")
    assert transport.value() == b""
    channel.dataReceived(b"ics\n")
    line = transport.value()
    assert line.startswith(b"metrics ") and line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line[8:])["x_total"]["samples"] == [[[], 2.0]]


def test_worker_without_a_registry_answers_empty() -> None:
    """An application without metrics (the test app) still answers, with {}."""
    channel = FrontChannel(lambda: None, None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"metrics\n")
    assert transport.value() == b"metrics {}\n"

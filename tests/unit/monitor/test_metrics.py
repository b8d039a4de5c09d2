"""The metrics registry and its Prometheus text exposition, alone and merged across workers."""

from __future__ import annotations

import json

import pytest

from clickpass.monitor.metrics import MetricError, Registry, merge, render


def test_counter_gauge_exposition() -> None:
    """Counters and gauges render with HELP, TYPE and escaped labels."""
    registry = Registry()
    requests = registry.counter("cp_requests_total", "Requests\nserved.", ("route", "status"))
    requests.inc(route="/openid", status="200")
    requests.inc(2, route="/openid", status="200")
    requests.inc(route='/x"y\\z', status="500")
    registry.gauge("cp_up", "Up.").set(1)
    assert registry.exposition() == (
        "# HELP cp_requests_total Requests\\nserved.\n"
        "# TYPE cp_requests_total counter\n"
        'cp_requests_total{route="/openid",status="200"} 3\n'
        'cp_requests_total{route="/x\\"y\\\\z",status="500"} 1\n'
        "# HELP cp_up Up.\n"
        "# TYPE cp_up gauge\n"
        "cp_up 1\n"
    )


def test_histogram_buckets_are_cumulative() -> None:
    """Buckets count observations at or below their bound, with +Inf, _sum and _count."""
    registry = Registry()
    latency = registry.histogram("cp_seconds", "Latency.", ("route",), buckets=(0.1, 1))
    for value in (0.05, 0.1, 0.5, 3):
        latency.observe(value, route="/")
    assert registry.exposition().splitlines()[2:] == [
        'cp_seconds_bucket{route="/",le="0.1"} 2',
        'cp_seconds_bucket{route="/",le="1"} 3',
        'cp_seconds_bucket{route="/",le="+Inf"} 4',
        'cp_seconds_sum{route="/"} 3.65',
        'cp_seconds_count{route="/"} 4',
    ]


def test_merge_across_workers() -> None:
    """Snapshots (as JSON) from two workers add up; gauges combine as declared."""
    snapshots = []
    for worker, (hits, depth, lag) in enumerate([(3, 2, 0.5), (4, 5, 0.2)]):
        registry = Registry()
        registry.counter("cp_hits_total", "Hits.", ("route",)).inc(hits, route="/")
        registry.gauge("cp_outbox", "Depth.", aggregate="max").set(depth)
        registry.gauge("cp_lag", "Lag.", aggregate="min").set(lag)
        registry.gauge("cp_workers", "Workers.").set(1)
        h = registry.histogram("cp_s", "S.", buckets=(1,))
        h.observe(0.5 + worker)
        registry.counter("cp_only_here_total", "Only one worker has it.", ("w",)).inc(w=worker)
        snapshots.append(json.loads(json.dumps(registry.snapshot())))
    text = render(merge(snapshots))
    assert 'cp_hits_total{route="/"} 7' in text
    assert "cp_outbox 5" in text and "cp_lag 0.2" in text and "cp_workers 2" in text
    assert 'cp_s_bucket{le="1"} 1' in text and 'cp_s_bucket{le="+Inf"} 2' in text
    assert "cp_s_count 2" in text and "cp_s_sum 2" in text
    assert 'cp_only_here_total{w="0"} 1' in text and 'cp_only_here_total{w="1"} 1' in text


def test_merge_drops_conflicting_definitions() -> None:
    """A metric declared differently by another worker does not break the exposition."""
    one, two = Registry(), Registry()
    one.counter("cp_x_total", "X.").inc()
    two.gauge("cp_x_total", "X.").set(50)
    assert "cp_x_total 1" in render(merge([one.snapshot(), two.snapshot()]))


def test_gauge_function_and_misuse() -> None:
    """Computed gauges are read at collection; wrong labels and negative counts are refused."""
    registry = Registry()
    state = {"n": 1.0}
    registry.gauge("cp_f", "F.").set_function(lambda: state["n"])
    state["n"] = 42
    assert "cp_f 42" in registry.exposition()
    counter = registry.counter("cp_c_total", "C.", ("a",))
    with pytest.raises(MetricError, match="takes labels"):
        counter.inc(b="1")
    with pytest.raises(MetricError, match="cannot go down"):
        counter.inc(-1, a="1")
    with pytest.raises(MetricError, match="registered differently"):
        registry.gauge("cp_c_total", "C.")
    with pytest.raises(MetricError, match="invalid"):
        registry.counter("9bad", "B.")
    assert registry.counter("cp_c_total", "C.", ("a",)) is counter

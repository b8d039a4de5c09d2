"""
Counters for the front and for each worker: requests, errors by kind and a
latency histogram, cheap enough to update on every proxied request.

This module only counts; it must never do I/O or read a clock itself (the
callers pass durations in).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Upper bounds of the latency buckets, in seconds; the last bucket is +Inf.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# The kinds of error the front counts. Each is one word an operator can grep.
ERROR_KINDS = (
    "bad_request",  # 400: malformed or smuggling-shaped request
    "too_large",  # 413: request body above the limit
    "target_too_long",  # 414: a request line above 16 KiB
    "head_too_large",  # 431: a request head above max_header_bytes
    "header_timeout",  # 408: headers not complete in time (slowloris)
    "body_timeout",  # 408: a request body not complete in time
    "queue_timeout",  # 503: no worker free before the queue timeout
    "queue_full",  # 503: the wait queue is full
    "no_workers",  # 503: no worker is ready at all
    "upstream_failed",  # 502: the worker failed after it had the request
    "timeout",  # 504: the worker did not answer in time
    "retried",  # a request moved to another worker before reaching one
    "client_gone",  # the client left before its response was complete
    "health_busy",  # a health check timed out while its worker answered requests (kept)
)


class Histogram:
    """Cumulative-friendly latency histogram with fixed buckets."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile C{q} (None when empty)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank and n:
                return LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else float("inf")
        return float("inf")

    def snapshot(self) -> dict[str, Any]:
        labels = [f"le_{b:g}" for b in LATENCY_BOUNDS] + ["le_inf"]
        return {
            "count": self.count,
            "sum_seconds": round(self.total, 6),
            "p50_le": self.quantile(0.5),
            "p99_le": self.quantile(0.99),
            "buckets": dict(zip(labels, self.buckets, strict=True)),
        }


class Counters:
    """Requests, responses by status class, errors by kind, latency."""

    __slots__ = ("errors", "latency", "requests", "responses")

    def __init__(self) -> None:
        self.requests = 0
        self.responses = [0, 0, 0, 0, 0, 0]  # index = status // 100
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.latency = Histogram()

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def response(self, status: int, seconds: float) -> None:
        responded(self, None, status, seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "responses": {f"{i}xx": n for i, n in enumerate(self.responses) if i},
            "errors": {k: v for k, v in self.errors.items() if v},
            "latency": self.latency.snapshot(),
        }


def responded(front: Counters, worker: Counters | None, status: int, seconds: float) -> None:
    """
    Count one response, for the front and for the worker that gave it: the
    same as C{front.response(...)} and C{worker.response(...)}, in one call
    (this runs on every proxied request).
    """
    kind = status // 100 if status < 600 else 5
    bucket = bisect_left(LATENCY_BOUNDS, seconds)
    front.responses[kind] += 1
    latency = front.latency
    latency.buckets[bucket] += 1
    latency.count += 1
    latency.total += seconds
    if worker is not None:
        worker.responses[kind] += 1
        latency = worker.latency
        latency.buckets[bucket] += 1
        latency.count += 1
        latency.total += seconds

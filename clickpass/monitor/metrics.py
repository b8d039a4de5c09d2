"""
A small metrics registry with Prometheus text-format exposition.

Counters, gauges and histograms, each with optional labels::

    registry = Registry()
    requests = registry.counter("clickpass_http_requests_total", "Requests served.",
                                ("route", "status"))
    requests.inc(route="/openid", status="200")
    latency = registry.histogram("clickpass_http_request_seconds", "Request latency.",
                                 ("route",))
    latency.observe(0.012, route="/openid")
    text = registry.exposition()

Across processes: each worker sends C{registry.snapshot()} (plain JSON) to
the front, which adds them up with L{merge} and renders the sum with
L{render}. Counters and histograms add; a gauge says how it combines
(C{"sum"}, C{"max"}, C{"min"} or C{"last"}) when it is declared.

This module must never do I/O or block: it only counts in memory.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

DEFAULT_BUCKETS: tuple[float, ...] = (
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
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Aggregate = Literal["sum", "max", "min", "last"]
LabelValues = tuple[str, ...]
Snapshot = dict[str, Any]


class MetricError(ValueError):
    """A metric was declared or used wrongly (a programming error, named clearly)."""


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "_:" for c in name) or name[0].isdigit():
        raise MetricError(f"invalid metric or label name {name!r}")


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        _check_name(name)
        for label in labels:
            _check_name(label)
            if label == "le":
                raise MetricError(f"{name}: 'le' is reserved for histogram buckets")
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, values: Mapping[str, object]) -> LabelValues:
        # Called on every observation (per request in the workers): no sets.
        try:
            if len(values) == len(self.labels):
                return tuple([str(values[label]) for label in self.labels])
        except KeyError:
            pass
        raise MetricError(f"{self.name} takes labels {list(self.labels)}, got {sorted(values)}")


class Counter(_Metric):
    """A count that only goes up."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}
        self._function: Callable[[], Mapping[LabelValues, float]] | None = None

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise MetricError(f"{self.name}: a counter cannot go down")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set_function(self, function: Callable[[], Mapping[LabelValues, float]]) -> None:
        """
        Read the counts at collection time from a count kept elsewhere
        ({label values: count}), e.g. another service's counters.
        """
        self._function = function

    def value(self, **labels: object) -> float:
        found: dict[LabelValues, float] = {tuple(k): float(v) for k, v in self.samples()}
        return found.get(self._key(labels), 0.0)

    def samples(self) -> list[list[Any]]:
        if self._function is not None:
            return [[list(k), float(v)] for k, v in sorted(self._function().items())]
        with self._lock:
            return [[list(k), v] for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A value that goes up and down, or is computed when collected."""

    kind = "gauge"

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (), aggregate: Aggregate = "sum"
    ) -> None:
        super().__init__(name, help, labels)
        self.aggregate = aggregate
        self._values: dict[LabelValues, float] = {}
        self._function: Callable[[], float | Mapping[LabelValues, float]] | None = None

    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self.inc(-amount, **labels)

    def set_function(self, function: Callable[[], float | Mapping[LabelValues, float]]) -> None:
        """Compute the value(s) at collection time (a float, or {label values: float})."""
        self._function = function

    def value(self, **labels: object) -> float:
        found: dict[LabelValues, float] = {tuple(k): float(v) for k, v in self.samples()}
        return found.get(self._key(labels), 0.0)

    def samples(self) -> list[list[Any]]:
        if self._function is not None:
            computed = self._function()
            if isinstance(computed, Mapping):
                return [[list(k), float(v)] for k, v in sorted(computed.items())]
            return [[[], float(computed)]]
        with self._lock:
            return [[list(k), v] for k, v in sorted(self._values.items())]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help, labels)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise MetricError(f"{name}: buckets must be distinct numbers")
        self.buckets = tuple(bounds)
        # Per label set: [count per bucket (non-cumulative) + overflow, sum, count].
        self._values: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            counts, totals = self._values.setdefault(
                key, ([0] * (len(self.buckets) + 1), [0.0, 0.0])
            )
            # The first bucket whose bound is >= value (len(buckets): overflow).
            counts[bisect_left(self.buckets, value)] += 1
            totals[0] += value
            totals[1] += 1

    def samples(self) -> list[list[Any]]:
        """[label values, [bucket counts (not cumulative) + overflow], sum, count]."""
        with self._lock:
            return [
                [list(k), list(counts), totals[0], int(totals[1])]
                for k, (counts, totals) in sorted(self._values.items())
            ]


class Registry:
    """The metrics of one process."""

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}

    def _add(self, metric: Counter | Gauge | Histogram) -> Any:
        existing = self._metrics.get(metric.name)
        if existing is not None:
            if existing.kind != metric.kind or existing.labels != metric.labels:
                raise MetricError(f"{metric.name} is already registered differently")
            return existing
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """Declare (or get back) a counter."""
        result: Counter = self._add(Counter(name, help, labels))
        return result

    def gauge(
        self, name: str, help: str, labels: Sequence[str] = (), aggregate: Aggregate = "sum"
    ) -> Gauge:
        """Declare (or get back) a gauge; C{aggregate} says how processes' values combine."""
        result: Gauge = self._add(Gauge(name, help, labels, aggregate))
        return result

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Declare (or get back) a histogram."""
        result: Histogram = self._add(Histogram(name, help, labels, buckets))
        return result

    def snapshot(self) -> Snapshot:
        """Every metric's current values, as plain JSON-able data."""
        out: Snapshot = {}
        for name, metric in sorted(self._metrics.items()):
            entry: dict[str, Any] = {
                "type": metric.kind,
                "help": metric.help,
                "labels": list(metric.labels),
                "samples": metric.samples(),
            }
            if isinstance(metric, Gauge):
                entry["aggregate"] = metric.aggregate
            if isinstance(metric, Histogram):
                entry["buckets"] = list(metric.buckets)
            out[name] = entry
        return out

    def exposition(self) -> str:
        """This process's metrics in the Prometheus text format."""
        return render(self.snapshot())


class RequestMetrics:
    """
    Requests a web process answered, by route pattern, method and status,
    and their latency by route (C{clickpass_http_requests_total},
    C{clickpass_http_request_seconds}). The router calls L{observe} once
    per request; C{clock} is the reactor's C{seconds}.
    """

    def __init__(self, registry: Registry, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.requests = registry.counter(
            "clickpass_http_requests_total",
            "Requests the workers answered, by route, method and status.",
            ("route", "method", "status"),
        )
        self.latency = registry.histogram(
            "clickpass_http_request_seconds",
            "Time the workers took to answer, by route.",
            ("route",),
        )

    def observe(self, route: str, method: str, status: int, started: float) -> None:
        self.requests.inc(route=route, method=method, status=status)
        self.latency.observe(max(0.0, self.clock() - started), route=route)


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """
    Combine snapshots of several processes: counters and histograms add up,
    gauges combine as they were declared. A metric whose type, labels or
    buckets differ between processes keeps the first definition and drops
    the conflicting samples (a deployment mid-upgrade must not break /metrics).
    """
    merged: Snapshot = {}
    for snapshot in snapshots:
        for name, entry in snapshot.items():
            target = merged.get(name)
            if target is None:
                merged[name] = {**entry, "samples": [list(s) for s in entry["samples"]]}
                continue
            if (
                target["type"] != entry["type"]
                or target["labels"] != entry["labels"]
                or target.get("buckets") != entry.get("buckets")
            ):
                continue
            index = {tuple(s[0]): s for s in target["samples"]}
            for sample in entry["samples"]:
                key = tuple(sample[0])
                existing = index.get(key)
                if existing is None:
                    copied = list(sample)
                    target["samples"].append(copied)
                    index[key] = copied
                    continue
                _combine(target, existing, sample)
            target["samples"].sort(key=lambda s: s[0])
    return merged


def _combine(entry: Mapping[str, Any], existing: list[Any], sample: Sequence[Any]) -> None:
    kind = entry["type"]
    if kind == "histogram":
        existing[1] = [a + b for a, b in zip(existing[1], sample[1], strict=True)]
        existing[2] += sample[2]
        existing[3] += sample[3]
    elif kind == "counter":
        existing[1] += sample[1]
    else:
        how = entry.get("aggregate", "sum")
        if how == "sum":
            existing[1] += sample[1]
        elif how == "max":
            existing[1] = max(existing[1], sample[1])
        elif how == "min":
            existing[1] = min(existing[1], sample[1])
        else:
            existing[1] = sample[1]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def render(snapshot: Snapshot) -> str:
    """A snapshot (one process's, or L{merge}d) in the Prometheus text format."""
    lines: list[str] = []
    for name, entry in sorted(snapshot.items()):
        kind = entry["type"]
        names = entry["labels"]
        lines.append(f"# HELP {name} {_escape_help(entry['help'])}")
        lines.append(f"# TYPE {name} {kind}")
        for sample in entry["samples"]:
            values = sample[0]
            if kind == "histogram":
                cumulative = 0
                bounds = [*entry["buckets"], math.inf]
                for bound, count in zip(bounds, sample[1], strict=True):
                    cumulative += count
                    le = f'le="{_number(bound)}"'
                    lines.append(f"{name}_bucket{_labels(names, values, le)} {cumulative}")
                lines.append(f"{name}_sum{_labels(names, values)} {_number(sample[2])}")
                lines.append(f"{name}_count{_labels(names, values)} {sample[3]}")
            else:
                lines.append(f"{name}{_labels(names, values)} {_number(sample[1])}")
    return "\n".join(lines) + "\n" if lines else ""


__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricError",
    "Registry",
    "RequestMetrics",
    "merge",
    "render",
]

"""
clickpass-ctl commands for the worker pool and the balancer: C{workers},
C{worker drain|resume|restart ID}, C{reload} and C{balancer stats}.

These only ask the node over the control port; they must never signal
worker processes themselves.
"""

from __future__ import annotations

import argparse
from typing import Any

from clickpass.control.ctl import Connection, command, format_table

WORKER_COLUMNS = ("id", "slot", "pid", "state", "in_flight", "served", "restarts", "age_seconds")


def _format_workers(result: list[dict[str, Any]]) -> str:
    return format_table(result, WORKER_COLUMNS)


@command("workers", help="list the worker processes and their load", format=_format_workers)
def _workers(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("workers")


def _worker_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="the worker's id (see clickpass-ctl workers)")


@command("worker", "drain", help="send no new requests to a worker", arguments=_worker_id)
def _drain(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("worker.drain", {"id": args.id})


@command("worker", "resume", help="send requests to a drained worker again", arguments=_worker_id)
def _resume(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("worker.resume", {"id": args.id})


@command(
    "worker",
    "restart",
    help="replace a worker (the new one is ready before the old one drains)",
    arguments=_worker_id,
)
def _restart(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("worker.restart", {"id": args.id})


@command("reload", help="replace every worker, one at a time, without dropping requests")
def _reload(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("reload")


def _format_stats(result: dict[str, Any]) -> str:
    front = result["front"]
    counters = front["counters"]
    latency = counters["latency"]
    lines = [
        f"front: {counters['requests']} requests, {front['queued']} queued, "
        f"{front['routable_workers']} routable workers, "
        f"{result['client_connections']} client connections",
        f"responses: {_pairs(counters['responses'])}",
        f"errors: {_pairs(counters['errors']) or 'none'}",
        f"latency: p50 <= {_seconds(latency['p50_le'])}, p99 <= {_seconds(latency['p99_le'])}",
    ]
    rows = []
    for worker_id, worker in result["workers"].items():
        c = worker["counters"]
        rows.append(
            {
                "id": worker_id,
                "state": worker["state"],
                "in_flight": worker["in_flight"],
                "served": worker["served"],
                "ejected": worker["ejected"],
                "errors": _pairs(c["errors"]) or "-",
                "p50": _seconds(c["latency"]["p50_le"]),
                "p99": _seconds(c["latency"]["p99_le"]),
            }
        )
    columns = ("id", "state", "in_flight", "served", "ejected", "errors", "p50", "p99")
    return "\n".join(lines) + "\n\n" + format_table(rows, columns)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items() if v)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value * 1000:g}ms"


@command(
    "balancer",
    "stats",
    help="request, error and latency counters of the front and each worker",
    format=_format_stats,
)
def _stats(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("balancer.stats")

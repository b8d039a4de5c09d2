"""
clickpass-ctl db: the database agent on a database host.

    clickpass-ctl db status               role, GTID positions, lag, semi-sync, degraded/quarantined
    clickpass-ctl db switchover           planned: hand the primary role to the replica
    clickpass-ctl db ack                  acknowledge the last automatic failover
    clickpass-ctl db rejoin [--force]     rejoin as replica (--force: a quarantined host)
    clickpass-ctl db reclone              copy the primary's data anew (quarantined host)

This module only formats requests and answers; it must never change
anything itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from clickpass.control.ctl import Connection, command


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="rejoin a quarantined host, keeping its errant transactions",
    )


def format_status(result: Any) -> str:
    if not isinstance(result, dict) or "role" not in result or "node" not in result:
        return str(result)
    flags = [name for name in ("degraded", "quarantined") if result.get(name)]
    lines = [
        f"{result['node']}: {result['role'].upper()}"
        + (f" ({', '.join(flags).upper()})" if flags else "")
        + f" for {result.get('in_role_seconds', 0):.1f}s, group {result.get('group', '?')}, "
        f"peer {'present' if result.get('peer_present') else 'absent'}, "
        f"{'healthy' if result.get('healthy') else 'not electable'}"
    ]
    for key, label in (
        ("failover_blocked", "automatic failover blocked"),
        ("operation", "running"),
        ("reason", "reason"),
        ("last_error", "last error"),
    ):
        if result.get(key):
            lines.append(f"{label}: {result[key]}")
    for problem in result.get("problems") or []:
        lines.append(f"errant: {problem}")
    server = result.get("server")
    if isinstance(server, dict):
        replication = server.get("replication", {})
        semi = server.get("semi_sync", {})
        lines += [
            f"read_only {server.get('read_only')}, gtid_binlog_pos "
            f"{server.get('gtid_binlog_pos') or '-'}, gtid_slave_pos "
            f"{server.get('gtid_slave_pos') or '-'}",
        ]
        if replication.get("configured"):
            lines.append(
                f"replicating from {replication.get('primary')}: io "
                f"{replication.get('io_running')}, sql {replication.get('sql_running')}, "
                f"lag {replication.get('seconds_behind')}s / "
                f"{replication.get('transactions_behind')} transactions"
            )
        lines.append(
            f"semi-sync master {'on' if semi.get('master_enabled') else 'off'}"
            f" ({semi.get('master_clients', 0)} replicas acknowledging), slave "
            f"{'on' if semi.get('slave_active') else 'off'}"
        )
    return "\n".join(lines)


@command("db", "status", help="database role, GTIDs, lag, semi-sync", format=format_status)
def _status(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("db.status")


@command("db", "switchover", help="planned: hand the primary role to the replica")
def _switchover(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("db.switchover")


@command("db", "ack", help="acknowledge the last automatic failover (allows the next one)")
def _ack(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("db.ack")


@command("db", "rejoin", help="rejoin as replica (--force: a quarantined host)", arguments=_force)
def _rejoin(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("db.rejoin", {"force": bool(args.force)})


@command("db", "reclone", help="replace this host's data with the primary's")
def _reclone(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("db.reclone")


__all__ = ["format_status"]

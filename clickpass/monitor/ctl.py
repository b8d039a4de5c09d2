"""
clickpass-ctl commands for backups and alerts: C{backup now},
C{backup status}, C{alerts list}, C{alerts test}. They ask the running
node; the node does the work (a backup runs in its thread pool).

This module must never take a backup itself: scripts/backup does that
without a node.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from clickpass.control.ctl import Connection, command, format_table


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return "never"
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_backup(result: dict[str, Any]) -> str:
    lines = [f"backup:   {result['backup']} uploaded"]
    lines.append(
        f"database: {result['database']}" + (f", GTID {result['gtid']}" if result["gtid"] else "")
    )
    lines.append(f"stored:   {result['stored_bytes']} bytes in {result['seconds']}s")
    if result.get("deleted_by_retention"):
        lines.append("removed:  " + ", ".join(result["deleted_by_retention"]))
    return "\n".join(lines)


@command("backup", "now", help="take an encrypted backup now and upload it", format=_format_backup)
def _backup_now(args: argparse.Namespace, conn: Connection) -> Any:
    # A backup of a big database takes a while; the node answers when it is done.
    conn.timeout = max(conn.timeout, 3600.0)
    return conn.call("backup.now")


def _format_status(result: dict[str, Any]) -> str:
    state = "FAILED" if result["failed"] else ("STALE" if result["stale"] else "ok")
    lines = [
        f"state:        {state}" + (" (a backup is running)" if result["running"] else ""),
        f"last success: {_when(result['last_success'])} {result.get('last_backup') or ''}".rstrip(),
        f"last failure: {_when(result['last_failure'])}",
    ]
    if result["failed"]:
        lines.append(f"error:        {result['last_error']}")
    return "\n".join(lines)


@command("backup", "status", help="the last backup outcomes", format=_format_status)
def _backup_status(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("backup.status")


def _format_alerts(result: list[dict[str, Any]]) -> str:
    if not result:
        return "no alert is firing"
    rows = [{**a, "since": _when(a["since"])} for a in result]
    return format_table(rows, ["key", "since", "count", "summary"])


@command("alerts", "list", help="the alerts firing on this node", format=_format_alerts)
def _alerts_list(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("alerts.list")


@command("alerts", "test", help="send a test notification through every alert channel")
def _alerts_test(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("alerts.test")

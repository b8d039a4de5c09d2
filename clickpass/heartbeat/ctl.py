"""
clickpass-ctl cluster: show the heartbeat groups, hand a VIP over, or put
the node in maintenance.

    clickpass-ctl cluster                      groups, state, priority, peers
    clickpass-ctl cluster switchover GROUP     planned move of GROUP's VIP
    clickpass-ctl cluster maintenance on|off   stay BACKUP everywhere

This module only formats requests and answers; it must never change
anything itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from clickpass.control.ctl import Connection, CtlError, command, format_table


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        default="status",
        choices=["status", "switchover", "maintenance"],
        help="status (default), switchover GROUP, maintenance on|off",
    )
    p.add_argument("value", nargs="?", help="the GROUP for switchover, on|off for maintenance")


def format_status(result: Any) -> str:
    if not isinstance(result, dict) or "groups" not in result:
        return str(result)
    lines = [
        f"node {result['node']} ({result['role']}), epoch {result['epoch']}, "
        f"maintenance {'on' if result.get('maintenance') else 'off'}, "
        f"heartbeat {result.get('process', '?')}"
        + (f" pid {result['pid']}" if result.get("pid") else "")
        + (f", {result['restarts']} restarts" if result.get("restarts") else ""),
        "",
    ]
    watch = result.get("node_watch")
    if isinstance(watch, dict):
        lines[-1:-1] = [
            f"node watchdog: longest silence {watch.get('longest_silence', 0):.2f}s, "
            f"{watch.get('slow_spells', 0)} slow spells (kept the groups)"
        ]
    rows = [
        {
            "group": g["group"],
            "state": g["state"],
            "priority": g["priority"],
            "vip": g.get("vip", "-"),
            "health": g.get("health", "-"),
            "for": f"{g['in_state_seconds']:.1f}s" if "in_state_seconds" in g else "-",
        }
        for g in result["groups"]
    ]
    lines.append(format_table(rows, ["group", "state", "priority", "vip", "health", "for"]))
    peers = [
        {
            "group": g["group"],
            "peer": p["node"],
            "state": p["state"],
            "priority": p["priority"],
            "health": p["health"],
            "last heard": f"{p['last_heard_seconds'] * 1000:.0f} ms ago",
            # From the peer's own adverts: one-way loss shows as "no" here.
            "hears us": _hears_us(p.get("hears"), result.get("node")),
        }
        for g in result["groups"]
        for p in g.get("peers", [])
    ]
    lines.append("")
    if peers:
        columns = ["group", "peer", "state", "priority", "health", "last heard", "hears us"]
        lines.append(format_table(peers, columns))
    else:
        lines.append("no peer heard yet")
    packets = result.get("packets") or {}
    dropped = {k: v for k, v in packets.items() if k not in ("received", "accepted", "sent")}
    lines.append("")
    lines.append(
        f"packets: received {packets.get('received', 0)}, accepted {packets.get('accepted', 0)}, "
        f"sent {packets.get('sent', 0)}"
        + ("".join(f", {k} {v}" for k, v in sorted(dropped.items())) if dropped else "")
    )
    return "\n".join(lines)


def _hears_us(hears: Any, node: Any) -> str:
    if not isinstance(hears, list):
        return "-"  # a peer from before adverts said whom they hear
    return "yes" if node in hears else "no"


@command(
    "cluster",
    help="heartbeat groups; 'switchover GROUP'; 'maintenance on|off'",
    arguments=_arguments,
    format=format_status,
)
def _cluster(args: argparse.Namespace, conn: Connection) -> Any:
    if args.action == "status":
        if args.value:
            raise CtlError("cluster status takes no argument")
        return conn.call("cluster.status")
    if args.action == "switchover":
        if not args.value:
            raise CtlError("cluster switchover needs a GROUP name")
        return conn.call("cluster.switchover", {"group": args.value})
    if args.value not in ("on", "off"):
        raise CtlError("cluster maintenance needs on or off")
    return conn.call("cluster.maintenance", {"on": args.value == "on"})


__all__ = ["format_status"]

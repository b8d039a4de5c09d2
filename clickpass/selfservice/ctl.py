"""
clickpass-ctl commands about people: C{user list}, C{user show EMAIL},
C{user enable EMAIL}, C{user sessions EMAIL} and C{user delete EMAIL
--yes}. They ask the running node, which reads and changes the accounts
in the database.

This module must never open the database itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from clickpass.control.ctl import Connection, CtlError, command, format_table


def _when(value: Any) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _email_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("email", help="the account's email address")


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--match", default="", help="only addresses containing this text")
    p.add_argument("--after", default="", help="only addresses after this one (next page)")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")


def _format_list(result: dict[str, Any]) -> str:
    rows = [
        {
            "email": a["email"],
            "created": _when(a["created"]),
            "state": "disabled" if a["disabled"] else "active",
            "password": a["password"],
            "sessions": a["sessions"],
        }
        for a in result["accounts"]
    ]
    if not rows:
        return "no accounts"
    text = format_table(rows, ["email", "created", "state", "password", "sessions"])
    if result["more"]:
        text += f"\n(more: --after {rows[-1]['email']})"
    return text


@command("user", "list", help="list accounts", format=_format_list, arguments=_list_arguments)
def _user_list(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.list", {"match": args.match, "after": args.after, "limit": args.limit})


def _format_show(result: dict[str, Any]) -> str:
    def names(values: list[str]) -> str:
        return ", ".join(values) or "-"

    lines = [
        f"email:        {result['email']} (id {result['id']})",
        f"created:      {_when(result['created'])}",
        f"state:        {'disabled' if result['disabled'] else 'active'}",
        f"sessions:     {result['sessions']}",
        f"sites:        {names(result['connected_sites'])}",
        f"approvals:    {names(result['approvals'])}",
        f"upstream:     {names(result['upstream_identities'])}",
        f"administers:  {names(result['administers'])}",
        "recent security events:",
    ]
    for e in result["recent_events"] or []:
        where = " ".join(x for x in (e["browser"], e["client_address"]) if x)
        detail = f" ({e['detail']})" if e["detail"] else ""
        lines.append(f"  {_when(e['created'])}  {e['what']}{detail}  {where}".rstrip())
    if not result["recent_events"]:
        lines.append("  -")
    return "\n".join(lines)


@command(
    "user",
    "show",
    help="one account: state, sites, recent security events",
    format=_format_show,
    arguments=_email_argument,
)
def _user_show(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.show", {"email": args.email})


@command("user", "enable", help="enable a disabled account", arguments=_email_argument)
def _user_enable(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.enable", {"email": args.email})


def _format_sessions(result: dict[str, Any]) -> str:
    rows = [
        {
            "browser": s["browser"],
            "address": s["client_address"],
            "started": _when(s["created"]),
            "last seen": _when(s["last_seen"]),
            "expires": _when(s["expires"]),
        }
        for s in result["sessions"]
    ]
    if not rows:
        return f"{result['email']} has no sessions"
    return format_table(rows, ["browser", "address", "started", "last seen", "expires"])


@command(
    "user",
    "sessions",
    help="an account's browser sessions",
    format=_format_sessions,
    arguments=_email_argument,
)
def _user_sessions(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.sessions", {"email": args.email})


def _delete_arguments(p: argparse.ArgumentParser) -> None:
    _email_argument(p)
    p.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")


def _format_delete(result: dict[str, Any]) -> str:
    told = result["partner_sites_told"]
    return f"deleted {result['deleted']}; partner sites told: {', '.join(told) or 'none'}"


@command(
    "user",
    "delete",
    help="delete an account and everything held about it (partner sites told)",
    format=_format_delete,
    arguments=_delete_arguments,
)
def _user_delete(args: argparse.Namespace, conn: Connection) -> Any:
    if not args.yes:
        raise CtlError(
            f"deleting {args.email} cannot be undone: run it again with --yes to confirm"
        )
    return conn.call("user.delete", {"email": args.email})

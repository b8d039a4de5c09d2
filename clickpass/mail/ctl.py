"""
clickpass-ctl commands for the mail outbox: C{mail status}, C{mail show ID},
C{mail retry ID}, C{mail test ADDRESS}. They ask the running node, which
reads and writes the outbox.

This module must never send mail or open the database itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from clickpass.control.ctl import Connection, command, format_table
from clickpass.control.ctl import when as _when


def _format_status(result: dict[str, Any]) -> str:
    counts = result["counts"]
    oldest = result["oldest_unsent_seconds"]
    lines = [
        f"transport: {result['transport']}",
        f"queued:    {counts.get('pending', 0)}"
        + ("" if oldest is None else f" (oldest waiting {oldest}s)")
        + (" - DELAYED" if oldest is not None and oldest > result["alert_after"] else ""),
        f"sent:      {counts.get('sent', 0)} (last {_when(result['last_sent'])})",
        f"failed:    {counts.get('failed', 0)} (given up; mail retry ID queues one again)",
    ]
    if result["unsent"]:
        rows = [
            {
                **m,
                "created": _when(m["created"]),
                "next": _when(m["next_attempt"]) if m["state"] == "pending" else "-",
            }
            for m in result["unsent"]
        ]
        lines += ["", format_table(rows, ["id", "state", "to", "kind", "attempts", "created",
                                          "next", "last_error"])]  # fmt: skip
    return "\n".join(lines)


@command("mail", "status", help="the mail outbox: queued, sent, failed", format=_format_status)
def _mail_status(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("mail.status")


def _id_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int, help="the message's id (from mail status)")


def _format_show(result: dict[str, Any]) -> str:
    lines = [
        f"id:         {result['id']}",
        f"state:      {result['state']}",
        f"to:         {result['to']}",
        f"kind:       {result['kind']}",
        f"subject:    {result['subject']}",
        f"message-id: {result['message_id']}",
        f"created:    {_when(result['created'])}",
        f"attempts:   {result['attempts']}",
    ]
    if result["state"] == "pending":
        lines.append(f"next:       {_when(result['next_attempt'])}")
        lines.append(f"gives up:   {_when(result['give_up_at'])}")
    if result["sent"]:
        lines.append(f"sent:       {_when(result['sent'])}")
    if result["last_error"]:
        lines.append(f"last error: {result['last_error']}")
    if result["text"] is not None:
        lines += ["", *(f"{k}: {v}" for k, v in result["headers"].items()), "", result["text"]]
    elif result["state"] == "sent":
        lines += ["", "(the body is not kept once a message is sent)"]
    return "\n".join(lines).rstrip()


@command(
    "mail", "show", help="one message of the outbox", arguments=_id_argument, format=_format_show
)
def _mail_show(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("mail.show", {"id": args.id})


@command(
    "mail",
    "retry",
    help="queue a given-up message again, due now",
    arguments=_id_argument,
    format=lambda r: f"message {r['queued']} queued again",
)
def _mail_retry(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("mail.retry", {"id": args.id})


def _address_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="where the test message goes")


@command(
    "mail",
    "test",
    help="queue a test message to ADDRESS",
    arguments=_address_argument,
    format=lambda r: f"test message {r['queued']} queued for {r['to']} ({r['transport']})",
)
def _mail_test(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("mail.test", {"to": args.address})

"""
clickpass-ctl commands for the OpenID Connect signing keys:
C{oidc keys list} and C{oidc keys rotate [--alg ALG]}. They ask the
running node, which reads and writes the keys in the database.

This module must never open the database or handle key material itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from clickpass.control.ctl import Connection, command, format_table


def _when(value: Any) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_list(result: dict[str, Any]) -> str:
    rows = [
        {
            "kid": k["kid"],
            "alg": k["alg"],
            "state": k["state"],
            "created": _when(k["created"]),
            "signs from": _when(k["signs_from"]),
            "retire after": _when(k["retire_after"]),
        }
        for k in result["keys"]
    ]
    head = (
        f"new keys sign {result['publication_delay']}s after rotate; retired keys stay "
        f"published {result['longest_token_lifetime']}s"
    )
    columns = ["kid", "alg", "state", "created", "signs from", "retire after"]
    return head + "\n\n" + format_table(rows, columns)


@command("oidc", "keys", "list", help="the OpenID Connect signing keys", format=_format_list)
def _keys_list(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("oidc.keys.list")


def _format_rotate(result: dict[str, Any]) -> str:
    lines = []
    for r in result["rotated"]:
        if r["created"]:
            lines.append(
                f"new {r['alg']} key {r['kid']} published; it starts signing at "
                f"{_when(r['signs_from'])}"
            )
        else:
            lines.append(
                f"{r['alg']} key {r['kid']} was already waiting; it starts signing at "
                f"{_when(r['signs_from'])}"
            )
    return "\n".join(lines)


def _alg_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alg", help="only this algorithm (RS256 or ES256); default: both")


@command(
    "oidc",
    "keys",
    "rotate",
    help="publish new signing keys; they sign after the publication delay",
    arguments=_alg_argument,
    format=_format_rotate,
)
def _keys_rotate(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("oidc.keys.rotate", {} if args.alg is None else {"alg": args.alg})

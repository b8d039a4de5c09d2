"""
clickpass-ctl commands for second factors: C{user mfa EMAIL} (what the
account has set up) and C{user mfa-reset EMAIL} (remove it all, for a
person who lost their phone and recovery codes; logged, and the person
is mailed). They ask the running node.

This module must never open the database itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from clickpass.control.ctl import Connection, _email_argument, command
from clickpass.control.ctl import when as _when


def _format_mfa(result: dict[str, Any]) -> str:
    since = result["totp_since"]
    lines = [
        f"account:          {result['email']}",
        f"authenticator:    {'set up ' + _when(since) if since else 'none'}",
        f"keys:             {len(result.get('keys', []))}",
    ]
    for k in result.get("keys", []):
        kind = "passkey" if k["passkey"] else "security key"
        used = "used " + _when(k["last_used"]) if k["last_used"] else "never used"
        synced = ", synced" if k.get("backed_up") else ""
        lines.append(f"  {k['name']} ({kind}{synced}), added {_when(k['created'])}, {used}")
    lines += [
        f"recovery codes:   {result['recovery_codes_left']} unused",
        f"trusted browsers: {len(result['trusted_browsers'])}",
    ]
    for b in result["trusted_browsers"]:
        lines.append(
            f"  from {b['address']}, trusted {_when(b['created'])}, until {_when(b['expires'])}"
        )
    return "\n".join(lines)


@command(
    "user",
    "mfa",
    help="list an account's second factors",
    arguments=_email_argument,
    format=_format_mfa,
)
def _user_mfa(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.mfa", {"email": args.email})


def _format_reset(result: dict[str, Any]) -> str:
    if result["had_factor"]:
        return f"removed the second factors of {result['email']}; they were mailed"
    return f"{result['email']} had no second factor; nothing removed, they were mailed"


@command(
    "user",
    "mfa-reset",
    help="remove an account's second factors (logged; the person is mailed)",
    arguments=_email_argument,
    format=_format_reset,
)
def _user_mfa_reset(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.mfa-reset", {"email": args.email})

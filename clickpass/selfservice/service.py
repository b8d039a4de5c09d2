"""
The operators' commands about people, on the node's control port:
C{user.list}, C{user.show}, C{user.enable}, C{user.delete} and
C{user.sessions} (C{user.add} and C{user.disable} are the node's own).

Each answers JSON-ready values; bad input is a L{CommandError} with one
line that names what is wrong, and changes nothing. Deleting does what a
person's own deletion does (L{clickpass.selfservice.data.erase}),
partner sites told.

This module must never read requests or render pages.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from clickpass.accounts.service import AccountError, Accounts, check_email
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.selfservice import data
from clickpass.storage.sql import Storage, Transaction

log = Logger()

LIST_LIMIT = 100
MAX_LIST = 10_000
EVENTS_SHOWN = 20


def _email(args: Any, command: str) -> str:
    value = args.get("email") if isinstance(args, dict) else None
    if not isinstance(value, str):
        raise CommandError(f"{command} needs an email address")
    try:
        return check_email(value)
    except AccountError as e:
        raise CommandError(f"{value!r}: {e}") from None


def _list(tx: Transaction, match: str, after: str, limit: int) -> list[dict[str, Any]]:
    rows = tx.fetchall(
        "SELECT a.email, a.created, a.disabled, a.password_hash IS NOT NULL, "
        "(SELECT COUNT(*) FROM sessions s WHERE s.account_id = a.id) "
        "FROM accounts a WHERE INSTR(a.email, ?) > 0 AND a.email > ? ORDER BY a.email LIMIT ?",
        match,
        after,
        limit,
    )
    return [
        {
            "email": str(r[0]),
            "created": int(r[1]),
            "disabled": bool(r[2]),
            "password": bool(r[3]),
            "sessions": int(r[4]),
        }
        for r in rows
    ]


def _account_id(tx: Transaction, email: str) -> int | None:
    row = tx.fetchone("SELECT id FROM accounts WHERE email = ?", email)
    return None if row is None else int(row[0])


class UserCommands:
    """The handlers of the C{user.*} commands, on the node's storage."""

    def __init__(self, clock: IReactorTime, storage: Storage, accounts: Accounts, base_url: str):
        self._clock = clock
        self._storage = storage
        self._accounts = accounts
        self._base_url = base_url

    async def _find(self, email: str) -> int:
        found: int | None = await self._storage.run(_account_id, email)
        if found is None:
            raise CommandError(f"no account with email {email}")
        return found

    async def list(self, args: Any) -> dict[str, Any]:
        match = args.get("match", "")
        after = args.get("after", "")
        limit = args.get("limit", LIST_LIMIT)
        if not isinstance(match, str) or not isinstance(after, str):
            raise CommandError("user.list: match and after must be text")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise CommandError(f"user.list: limit must be a whole number from 1 to {MAX_LIST}")
        found = await self._storage.run(_list, match.strip().lower(), after, limit)
        return {"accounts": found, "more": len(found) == limit}

    async def show(self, args: Any) -> dict[str, Any]:
        email = _email(args, "user.show")
        account_id = await self._find(email)
        found = await self._storage.run(data.export, account_id, self._base_url)
        if found is None:
            raise CommandError(f"no account with email {email}")
        account = found["account"]
        return {
            "email": account["email"],
            "id": account["id"],
            "created": account["created"],
            "disabled": account["disabled"],
            "sessions": len(found["sessions"]),
            "connected_sites": [s["name"] for s in found["connected_sites"]],
            "approvals": [a["realm"] for a in found["approvals"]],
            "upstream_identities": [u["provider"] for u in found["upstream_identities"]],
            "administers": [s["name"] for s in found["partner_sites_administered"]],
            "recent_events": found["security_events"][:EVENTS_SHOWN],
        }

    async def enable(self, args: Any) -> dict[str, Any]:
        email = _email(args, "user.enable")
        if not await self._accounts.enable(email):
            raise CommandError(f"no account with email {email}")
        return {"enabled": email}

    async def sessions(self, args: Any) -> dict[str, Any]:
        email = _email(args, "user.sessions")
        account_id = await self._find(email)
        listed = await self._accounts.sessions(account_id)
        return {
            "email": email,
            "sessions": [
                {
                    "browser": s.browser,
                    "client_address": s.client_address,
                    "created": s.created,
                    "last_seen": s.last_seen,
                    "expires": s.expires,
                }
                for s in listed
            ],
        }

    async def delete(self, args: Any) -> dict[str, Any]:
        email = _email(args, "user.delete")
        account_id = await self._find(email)
        try:
            erased = await self._storage.run(
                data.erase, account_id, self._base_url, int(self._clock.seconds())
            )
        except data.ErasureRefused as e:
            raise CommandError(str(e).replace("You are", f"{email} is", 1)) from None
        if erased is None:
            raise CommandError(f"no account with email {email}")
        log.info(
            "operator deleted the account {email}; {count} partner sites told",
            email=email,
            count=len(erased.sites_told),
        )
        return {"deleted": email, "partner_sites_told": list(erased.sites_told)}


def register_commands(
    commands: CommandRegistry,
    clock: IReactorTime,
    storage: Storage,
    accounts: Accounts,
    base_url: str,
) -> None:
    """C{user.list}, C{user.show}, C{user.enable}, C{user.sessions}, C{user.delete}."""
    users = UserCommands(clock, storage, accounts, base_url)
    commands.register("user.list", users.list, "list accounts (match, after, limit)")
    commands.register("user.show", users.show, "one account: state, sites, recent events")
    commands.register("user.enable", users.enable, "enable a disabled account")
    commands.register("user.sessions", users.sessions, "an account's browser sessions")
    commands.register("user.delete", users.delete, "delete an account and everything held about it")


__all__ = ["UserCommands", "register_commands"]

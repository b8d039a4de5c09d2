"""
The node's part of the OpenID Connect provider: the C{oidc.keys.list}
and C{oidc.keys.rotate} control commands, the housekeeping task that
removes expired retired keys, and the
C{oidc.clients.add|list|show|set|rotate_secret|remove} commands (a new
secret is returned once, by C{add} or C{rotate_secret}).

This module must never return a private key or a stored secret's hash,
nor serve HTTP.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.oidc import backchannel, clients
from clickpass.oidc.keys import ALGORITHMS, SigningKeys, UnknownAlgorithm
from clickpass.oidc.sector import SectorCheck
from clickpass.storage.sql import Storage


def register_commands(commands: CommandRegistry, keys: SigningKeys) -> None:
    """C{oidc.keys.list} and C{oidc.keys.rotate} on the control port."""

    async def list_keys(args: Any) -> dict[str, Any]:
        found = await keys.all_keys()
        return {
            "publication_delay": keys.policy.publication_delay,
            "longest_token_lifetime": keys.policy.longest_token_lifetime,
            "keys": [k.describe() for k in found],
        }

    async def rotate(args: Any) -> dict[str, Any]:
        alg = args.get("alg")
        if alg is None:
            algorithms: tuple[str, ...] = ALGORITHMS
        elif isinstance(alg, str):
            algorithms = (alg,)
        else:
            raise CommandError("oidc.keys.rotate: alg must be a string")
        try:
            done = await keys.rotate(algorithms)
        except UnknownAlgorithm as e:
            raise CommandError(str(e)) from None
        return {
            "rotated": [
                {"kid": r.key.kid, "alg": r.key.alg, "signs_from": r.key.signs_from,
                 "created": r.created}
                for r in done
            ]
        }  # fmt: skip

    commands.register(
        "oidc.keys.list", list_keys, "OpenID Connect signing keys: next, current, retired, removed"
    )
    commands.register(
        "oidc.keys.rotate", rotate, "publish a new OpenID Connect signing key that signs later"
    )


class _ClientCommands:
    """The handlers of the C{oidc.clients.*} control commands."""

    def __init__(self, storage: Storage, clock: IReactorTime, sector: SectorCheck | None) -> None:
        self.storage = storage
        self.clock = clock
        self.sector = sector

    async def add(self, args: Any) -> dict[str, Any]:
        site = args.get("site")
        uris = args.get("redirect_uris")
        scopes = args.get("scopes")
        if not isinstance(site, str) or not _strings(uris):
            raise CommandError("oidc.clients.add needs site and redirect_uris (strings)")
        if scopes is not None and not _strings(scopes):
            raise CommandError("oidc.clients.add: scopes must be a list of strings")
        logout_uris = args.get("post_logout_uris", [])
        if not _strings(logout_uris):
            raise CommandError("oidc.clients.add: post_logout_uris must be a list of strings")
        backchannel = args.get("backchannel_logout_uri") or ""
        if not isinstance(backchannel, str):
            raise CommandError("oidc.clients.add: backchannel_logout_uri must be a string")
        sector_uri = args.get("sector_identifier_uri") or ""
        if not isinstance(sector_uri, str):
            raise CommandError("oidc.clients.add: sector_identifier_uri must be a string")
        try:
            checked = clients.check_settings(
                uris,
                public=bool(args.get("public", False)),
                id_token_alg=str(args.get("id_token_alg") or "RS256"),
                scopes=scopes,
                jwks=args.get("jwks"),
                post_logout_uris=logout_uris,
                backchannel_logout_uri=backchannel,
                backchannel_logout_session_required=bool(
                    args.get("backchannel_logout_session_required", False)
                ),
                lifetimes=_lifetimes(args),
                sector_identifier_uri=sector_uri,
            )
            if checked.sector_identifier_uri:
                if self.sector is None:
                    raise CommandError("this node cannot fetch sector identifier URIs")
                await self.sector.check(checked)
            client, secret = await self.storage.run(
                clients.create_client, site, checked, int(self.clock.seconds())
            )
        except clients.ClientError as e:
            raise CommandError(str(e)) from None
        return {**client.describe(), "client_secret": secret}

    async def list_clients(self, args: Any) -> dict[str, Any]:
        found = await self.storage.run(clients.list_clients)
        return {"clients": [c.describe() for c in found]}

    async def remove(self, args: Any) -> dict[str, Any]:
        client_id = args.get("client_id")
        if not isinstance(client_id, str):
            raise CommandError("oidc.clients.remove needs client_id")
        removed = await self.storage.run(
            clients.remove_client, client_id, int(self.clock.seconds())
        )
        if not removed:
            raise CommandError(f"there is no OpenID Connect client {client_id!r}")
        return {"removed": client_id}

    async def show(self, args: Any) -> dict[str, Any]:
        client_id = _client_id(args, "oidc.clients.show")
        client = await self.storage.run(clients.client_by_id, client_id)
        if client is None:
            raise CommandError(f"there is no OpenID Connect client {client_id!r}")
        logouts = await self.storage.run(backchannel.recent_logouts, client_id, 10)
        return {**client.describe(), "logouts": [r.describe() for r in logouts]}

    async def set_lifetimes(self, args: Any) -> dict[str, Any]:
        client_id = _client_id(args, "oidc.clients.set")
        client = await self.storage.run(clients.client_by_id, client_id)
        if client is None:
            raise CommandError(f"there is no OpenID Connect client {client_id!r}")
        try:
            lifetimes = clients.check_lifetimes(_lifetimes(args), client.lifetimes)
        except clients.ClientError as e:
            raise CommandError(str(e)) from None
        changed = await self.storage.run(clients.set_lifetimes, client_id, lifetimes)
        assert changed is not None
        return changed.describe()

    async def rotate_secret(self, args: Any) -> dict[str, Any]:
        client_id = _client_id(args, "oidc.clients.rotate_secret")
        grace = args.get("grace", clients.DEFAULT_SECRET_GRACE)
        if isinstance(grace, bool) or not isinstance(grace, int):
            raise CommandError("oidc.clients.rotate_secret: grace must be whole seconds")
        now = int(self.clock.seconds())
        try:
            client, secret = await self.storage.run(clients.rotate_secret, client_id, grace, now)
        except clients.ClientError as e:
            raise CommandError(str(e)) from None
        return {
            "client_id": client.client_id,
            "client_secret": secret,
            "previous_secret_expires": client.previous_secret_expires,
        }


def register_client_commands(
    commands: CommandRegistry,
    storage: Storage,
    clock: IReactorTime,
    sector: SectorCheck | None = None,
) -> None:
    """The C{oidc.clients.*} commands (add, list, show, set, rotate_secret, remove)."""
    handlers = _ClientCommands(storage, clock, sector)
    commands.register(
        "oidc.clients.add", handlers.add, "register an OpenID Connect client of a site"
    )
    commands.register(
        "oidc.clients.show", handlers.show, "one OpenID Connect client and its logouts"
    )
    commands.register(
        "oidc.clients.set", handlers.set_lifetimes, "set an OpenID Connect client's token lifetimes"
    )
    commands.register(
        "oidc.clients.rotate_secret",
        handlers.rotate_secret,
        "give an OpenID Connect client a new secret; the old one works for a grace period",
    )
    commands.register("oidc.clients.list", handlers.list_clients, "the OpenID Connect clients")
    commands.register("oidc.clients.remove", handlers.remove, "remove an OpenID Connect client")


def _client_id(args: Any, command: str) -> str:
    client_id = args.get("client_id")
    if not isinstance(client_id, str):
        raise CommandError(f"{command} needs client_id")
    return client_id


def _lifetimes(args: Any) -> dict[str, object]:
    lifetimes = args.get("lifetimes") or {}
    if not isinstance(lifetimes, dict):
        raise CommandError("lifetimes must be an object of seconds by token kind")
    return lifetimes


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)

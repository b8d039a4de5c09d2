"""
The node's part of the OpenID Connect signing keys: the C{oidc.keys.list}
and C{oidc.keys.rotate} control commands and the housekeeping task that
removes expired retired keys.

This module must never return a private key, nor serve HTTP.
"""

from __future__ import annotations

from typing import Any

from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.oidc.keys import ALGORITHMS, SigningKeys, UnknownAlgorithm


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

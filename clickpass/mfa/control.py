"""
The second factors on the node's control port: C{user.mfa} lists what an
account has set up, C{user.mfa-reset} removes it all (logged, and the
person is mailed). Registered by the node; the database work is
L{clickpass.mfa.service.SecondFactors}'.
"""

from __future__ import annotations

from typing import Any

from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.mfa.service import SecondFactors


def _email(args: Any, name: str) -> str:
    email = args.get("email") if isinstance(args, dict) else None
    if not isinstance(email, str) or not email.strip():
        raise CommandError(f"{name} needs an email string")
    return email


def register_commands(commands: CommandRegistry, factors: SecondFactors) -> None:
    """C{user.mfa} and C{user.mfa-reset} on the control port."""

    async def describe(args: Any) -> dict[str, Any]:
        email = _email(args, "user.mfa")
        found = await factors.describe(email)
        if found is None:
            raise CommandError(f"no account with email {email}")
        return found

    async def reset(args: Any) -> dict[str, Any]:
        email = _email(args, "user.mfa-reset")
        had = await factors.operator_reset(email)
        if had is None:
            raise CommandError(f"no account with email {email}")
        return {"email": email, "had_factor": had}

    commands.register("user.mfa", describe, "an account's second factors")
    commands.register(
        "user.mfa-reset", reset, "remove an account's second factors (the person is mailed)"
    )

"""
The second factors' section, [mfa]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class MfaSettings:
    """[mfa]: second factors, the second sign-in step and step-up."""

    issuer: str = dataclasses.field(
        default="Clickpass",
        metadata=_doc("The name authenticator apps show next to a person's codes."),
    )
    second_step_lifetime: int = dataclasses.field(
        default=300,
        metadata=_doc(
            "Seconds a person has, after a correct password, to give their second factor."
        ),
    )
    step_up_window: int = dataclasses.field(
        default=600,
        metadata=_doc(
            "Seconds a sign-in with the strongest factor counts as fresh for sensitive "
            "actions (adding or removing a factor, new recovery codes, changing the "
            "password or email address, the account's export, deleting the account)."
        ),
    )
    trusted_browser_lifetime: int = dataclasses.field(
        default=30 * 24 * 3600,
        metadata=_doc("Seconds a browser a person trusts skips the second step."),
    )
    throttle_window: int = dataclasses.field(
        default=900, metadata=_doc("Seconds over which wrong second-factor codes are counted.")
    )
    throttle_per_account: int = dataclasses.field(
        default=5, metadata=_doc("Wrong second-factor codes allowed per account within the window.")
    )

    webauthn_timeout: int = dataclasses.field(
        default=300,
        metadata=_doc(
            "Seconds a passkey or security key challenge stays good (each is good once, "
            "in the browser session it was given to)."
        ),
    )

    webauthn_challenges_per_address: int = dataclasses.field(
        default=200,
        metadata=_doc(
            "Passkey and security key challenges given to one client address within "
            "webauthn_timeout seconds (each sign-in page a browser shows asks for one); "
            "more are refused until the window passes, so nobody can fill the table."
        ),
    )

    def check(self) -> None:
        """Raise L{ConfigError} with one line for the first problem in this section."""
        for key in (
            "second_step_lifetime",
            "step_up_window",
            "trusted_browser_lifetime",
            "throttle_window",
            "throttle_per_account",
            "webauthn_timeout",
            "webauthn_challenges_per_address",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"[mfa] {key}: must be at least 1")
        if not self.issuer.strip() or ":" in self.issuer or len(self.issuer) > 64:
            raise ConfigError("[mfa] issuer: must be 1 to 64 characters, without a colon")


__all__ = ["MfaSettings"]

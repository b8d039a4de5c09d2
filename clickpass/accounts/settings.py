"""
The accounts' section, [accounts]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class AccountsSettings:
    """[accounts]: people, passwords, sessions and sign-in throttling."""

    min_password_length: int = dataclasses.field(
        default=10, metadata=_doc("Shortest password accepted at sign-up.")
    )
    session_lifetime: int = dataclasses.field(
        default=14 * 24 * 3600,
        metadata=_doc(
            "Seconds a browser session lasts. Its cookie lasts as long when the person "
            'ticks "Keep me signed in"; otherwise the cookie ends when the browser closes.'
        ),
    )
    throttle_window: int = dataclasses.field(
        default=900, metadata=_doc("Seconds over which failed sign-ins are counted.")
    )
    throttle_per_account: int = dataclasses.field(
        default=5, metadata=_doc("Failed sign-ins allowed per account within the window.")
    )
    throttle_per_address: int = dataclasses.field(
        default=20, metadata=_doc("Failed sign-ins allowed per client address within the window.")
    )
    hash_threads: int = dataclasses.field(
        default=1,
        metadata=_doc(
            "Threads per worker that hash and check passwords (argon2id: 64 MiB and up to "
            "4 cores each)."
        ),
    )
    hash_queue: int = dataclasses.field(
        default=4,
        metadata=_doc(
            "Sign-ins and sign-ups a worker lets wait for a hashing thread; past that they "
            "are answered 503 with Retry-After at once."
        ),
    )
    hash_nice: int = dataclasses.field(
        default=10,
        metadata=_doc(
            "Scheduling niceness (0-19) of the hashing threads: above 0 a storm of "
            "sign-ins hashes on the CPU that serving pages leaves, instead of taking it "
            "from them (Linux; elsewhere ignored)."
        ),
    )
    security_events_days: int = dataclasses.field(
        default=90,
        metadata=_doc("Days each person's security events (sign-ins, changes) are kept."),
    )
    signup_window: int = dataclasses.field(
        default=3600, metadata=_doc("Seconds over which sign-ups are counted.")
    )
    signup_per_address: int = dataclasses.field(
        default=50, metadata=_doc("Sign-ups allowed per client address within the window.")
    )
    signup_overall: int = dataclasses.field(
        default=1000,
        metadata=_doc("Sign-ups allowed from all addresses together within the window."),
    )

    verify_lifetime: int = dataclasses.field(
        default=24 * 3600,
        metadata=_doc("Seconds a link to verify an email address (or a new one) stays valid."),
    )
    reset_lifetime: int = dataclasses.field(
        default=3600, metadata=_doc("Seconds a password reset link stays valid.")
    )
    revert_lifetime: int = dataclasses.field(
        default=7 * 24 * 3600,
        metadata=_doc(
            "Seconds the link sent to the old address after an email change can undo it."
        ),
    )
    link_mail_window: int = dataclasses.field(
        default=3600,
        metadata=_doc("Seconds over which mails with a link (verify, reset) are counted."),
    )
    link_mails_per_address: int = dataclasses.field(
        default=3,
        metadata=_doc(
            "Mails with a link sent to one address within the window; past that the "
            "answer is the same but nothing is sent."
        ),
    )
    link_mails_per_client: int = dataclasses.field(
        default=20,
        metadata=_doc(
            "Sign-ups, resends and reset requests one client address may make within the window."
        ),
    )

    def check(self) -> None:
        """Raise L{ConfigError} with one line for the first problem in this section."""
        for key in (
            "throttle_window",
            "throttle_per_account",
            "throttle_per_address",
            "hash_threads",
            "security_events_days",
            "signup_window",
            "signup_per_address",
            "signup_overall",
            "verify_lifetime",
            "reset_lifetime",
            "revert_lifetime",
            "link_mail_window",
            "link_mails_per_address",
            "link_mails_per_client",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"[accounts] {key}: must be at least 1")
        if self.hash_queue < 0:
            raise ConfigError("[accounts] hash_queue: must be 0 or more")
        if not 0 <= self.hash_nice <= 19:
            raise ConfigError("[accounts] hash_nice: must be from 0 to 19")


__all__ = ["AccountsSettings"]

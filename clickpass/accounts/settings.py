"""
The accounts' section, [accounts]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc

# The least memory (KiB) and passes a password hash may cost unless
# [accounts] hash_below_floor says the node keeps no real password: OWASP's
# minimum for argon2id. Below the floor a leaked table of hashes is cheap to
# guess through.
HASH_MEMORY_FLOOR = 19456
HASH_PASSES_FLOOR = 2
# Lanes of each hash, which argon2id may fill on as many cores at once.
HASH_LANES = 4
# What argon2id itself needs: 8 KiB for each lane.
HASH_MEMORY_LEAST = 8 * HASH_LANES


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
    hash_memory: int = dataclasses.field(
        default=65536,
        metadata=_doc(
            "KiB of memory each password hash (argon2id) takes; with hash_passes, what "
            "one guess costs an attacker who has the hashes, and what each sign-in and "
            "sign-up costs this node. At least 19456 (19 MiB) unless hash_below_floor. "
            "A sign-in under a hash made with other costs rehashes the password."
        ),
    )
    hash_passes: int = dataclasses.field(
        default=3,
        metadata=_doc(
            "Passes over that memory each password hash makes. At least 2 unless hash_below_floor."
        ),
    )
    hash_below_floor: bool = dataclasses.field(
        default=False,
        metadata=_doc(
            "Allow hash_memory and hash_passes below the floor (19456 KiB, 2 passes: "
            "the least OWASP advises for argon2id), down to 32 KiB and 1 pass: for "
            "development and test nodes that keep no real person's password, where "
            "hashing cost is only waiting."
        ),
    )
    hash_threads: int = dataclasses.field(
        default=1,
        metadata=_doc(
            "Threads per worker that hash and check passwords (argon2id: hash_memory "
            "and up to 4 cores each)."
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
        if self.hash_memory < HASH_MEMORY_LEAST or self.hash_passes < 1:
            raise ConfigError(
                f"[accounts] hash_memory: must be at least {HASH_MEMORY_LEAST} (KiB)"
                if self.hash_memory < HASH_MEMORY_LEAST
                else "[accounts] hash_passes: must be at least 1"
            )
        if not self.hash_below_floor:
            if self.hash_memory < HASH_MEMORY_FLOOR:
                raise ConfigError(
                    f"[accounts] hash_memory: must be at least {HASH_MEMORY_FLOOR} (KiB); "
                    "set hash_below_floor = true for a node that keeps no real password"
                )
            if self.hash_passes < HASH_PASSES_FLOOR:
                raise ConfigError(
                    f"[accounts] hash_passes: must be at least {HASH_PASSES_FLOOR}; "
                    "set hash_below_floor = true for a node that keeps no real password"
                )
        if self.hash_queue < 0:
            raise ConfigError("[accounts] hash_queue: must be 0 or more")
        if not 0 <= self.hash_nice <= 19:
            raise ConfigError("[accounts] hash_nice: must be from 0 to 19")


__all__ = ["HASH_LANES", "HASH_MEMORY_FLOOR", "HASH_PASSES_FLOOR", "AccountsSettings"]

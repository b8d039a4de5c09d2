"""
The partner features' section, [partners]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class PartnersSettings:
    """[partners]: partner sites, their API and the webhook outbox."""

    webhook_poll_interval: float = dataclasses.field(
        default=1.0, metadata=_doc("Seconds between looks at the webhook outbox.")
    )
    webhook_timeout: float = dataclasses.field(
        default=10.0, metadata=_doc("Seconds allowed for one webhook delivery attempt.")
    )
    webhook_backoff_initial: float = dataclasses.field(
        default=5.0, metadata=_doc("Seconds before the first retry of a failed webhook.")
    )
    webhook_backoff_max: float = dataclasses.field(
        default=600.0, metadata=_doc("Longest wait between retries (the wait doubles up to it).")
    )
    webhook_give_up_after: int = dataclasses.field(
        default=3 * 24 * 3600,
        metadata=_doc("Seconds after which an undeliverable webhook event is given up."),
    )
    webhook_batch: int = dataclasses.field(
        default=100, metadata=_doc("Most webhook events taken from the outbox per look.")
    )
    delivered_retention: int = dataclasses.field(
        default=7 * 24 * 3600, metadata=_doc("Seconds delivered webhook events are kept.")
    )
    allow_private_webhooks: bool = dataclasses.field(
        default=False,
        metadata=_doc(
            "Let webhooks go to loopback and private addresses (only for labs and tests)."
        ),
    )

    def check(self) -> None:
        """Raise L{ConfigError} with one line for the first problem in this section."""
        for name in (
            "webhook_poll_interval",
            "webhook_timeout",
            "webhook_backoff_initial",
            "webhook_backoff_max",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[partners] {name}: must be more than 0")
        if self.webhook_backoff_max < self.webhook_backoff_initial:
            raise ConfigError(
                "[partners] webhook_backoff_max: must be at least webhook_backoff_initial"
            )
        if self.webhook_batch < 1:
            raise ConfigError("[partners] webhook_batch: must be at least 1")


__all__ = ["PartnersSettings"]

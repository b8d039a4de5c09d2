"""
The alerts' section, [alerts]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class AlertsSettings:
    """[alerts]: where the node's alerts go (signed JSON webhooks and email)."""

    webhook_urls: list[str] = dataclasses.field(
        default_factory=list, metadata=_doc("URLs that receive each alert as a signed JSON POST.")
    )
    webhook_secret_file: str = dataclasses.field(
        default="",
        metadata=_doc("File holding the HMAC-SHA256 key that signs webhook bodies (first line)."),
    )
    smtp_host: str = dataclasses.field(
        default="", metadata=_doc("SMTP server for alert email (empty: no email).")
    )
    smtp_port: int = dataclasses.field(default=25, metadata=_doc("SMTP port."))
    smtp_user: str = dataclasses.field(
        default="", metadata=_doc("SMTP user name (empty: no authentication).")
    )
    smtp_password_file: str = dataclasses.field(
        default="", metadata=_doc("File holding the SMTP password (first line).")
    )
    smtp_starttls: bool = dataclasses.field(
        default=False, metadata=_doc("Require STARTTLS before sending.")
    )
    mail_from: str = dataclasses.field(default="", metadata=_doc("Sender address of alert email."))
    mail_to: list[str] = dataclasses.field(
        default_factory=list, metadata=_doc("Recipients of alert email.")
    )
    group_wait: float = dataclasses.field(
        default=10.0,
        metadata=_doc("Seconds to gather alerts into one notification before sending."),
    )
    repeat_interval: float = dataclasses.field(
        default=4 * 3600.0,
        metadata=_doc("Seconds between reminders of an alert that is still firing."),
    )
    timeout: float = dataclasses.field(
        default=10.0, metadata=_doc("Seconds allowed for one delivery attempt.")
    )


__all__ = ["AlertsSettings"]

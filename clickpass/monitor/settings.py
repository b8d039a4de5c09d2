"""
The alerts' section, [alerts]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import ConfigError
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

    def check(self) -> None:
        """Raise L{ConfigError} when the [alerts] section cannot work."""
        alerts = self
        for i, url in enumerate(alerts.webhook_urls):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"[alerts] webhook_urls[{i}]: {url!r} must start with http:// or https://"
                )
        if alerts.webhook_urls and not alerts.webhook_secret_file:
            raise ConfigError("[alerts] webhook_secret_file: needed to sign webhook alerts")
        if alerts.smtp_host:
            if not alerts.mail_from or not alerts.mail_to:
                raise ConfigError("[alerts] mail_from and mail_to: needed with smtp_host")
            if not 1 <= alerts.smtp_port <= 65535:
                raise ConfigError(f"[alerts] smtp_port: {alerts.smtp_port} is not a TCP port")
            if alerts.smtp_user and not alerts.smtp_password_file:
                raise ConfigError("[alerts] smtp_password_file: needed with smtp_user")
        if alerts.group_wait < 0:
            raise ConfigError("[alerts] group_wait: must be 0 or more seconds")
        if alerts.repeat_interval <= 0:
            raise ConfigError("[alerts] repeat_interval: must be more than 0 seconds")
        if alerts.timeout <= 0:
            raise ConfigError("[alerts] timeout: must be more than 0 seconds")


__all__ = ["AlertsSettings"]

"""
Semantic checks of the [backup] and [alerts] sections, called by the
configuration loader. Each problem is one line naming the key.

This module must never read files or touch the network: it only looks at
the parsed settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clickpass.config import Settings
    from clickpass.monitor.settings import AlertsSettings


def check_backup_settings(settings: Settings, error: type[Exception]) -> None:
    """Raise C{error} when an enabled [backup] section cannot work."""
    backup = settings.backup
    if backup.keep_daily < 1:
        raise error("[backup] keep_daily: must be at least 1")
    if backup.keep_weekly < 0:
        raise error("[backup] keep_weekly: must be 0 or more")
    if backup.max_age < 60:
        raise error("[backup] max_age: must be at least 60 seconds")
    if backup.check_interval <= 0:
        raise error("[backup] check_interval: must be more than 0 seconds")
    if not 0 <= backup.source_port <= 65535:
        raise error(f"[backup] source_port: {backup.source_port} is not a TCP port")
    if backup.endpoint and not backup.endpoint.startswith(("http://", "https://")):
        raise error(f"[backup] endpoint: {backup.endpoint!r} must start with http:// or https://")
    if not backup.enabled:
        return
    for key in ("key_file", "bucket"):
        if not getattr(backup, key):
            raise error(f"[backup] {key}: needed when [backup] enabled = true")
    if backup.access_key_id and not backup.secret_access_key_file:
        raise error("[backup] secret_access_key_file: needed with access_key_id")


def check_alerts_settings(alerts: AlertsSettings, error: type[Exception]) -> None:
    """Raise C{error} when the [alerts] section cannot work."""
    for i, url in enumerate(alerts.webhook_urls):
        if not url.startswith(("http://", "https://")):
            raise error(f"[alerts] webhook_urls[{i}]: {url!r} must start with http:// or https://")
    if alerts.webhook_urls and not alerts.webhook_secret_file:
        raise error("[alerts] webhook_secret_file: needed to sign webhook alerts")
    if alerts.smtp_host:
        if not alerts.mail_from or not alerts.mail_to:
            raise error("[alerts] mail_from and mail_to: needed with smtp_host")
        if not 1 <= alerts.smtp_port <= 65535:
            raise error(f"[alerts] smtp_port: {alerts.smtp_port} is not a TCP port")
        if alerts.smtp_user and not alerts.smtp_password_file:
            raise error("[alerts] smtp_password_file: needed with smtp_user")
    if alerts.group_wait < 0:
        raise error("[alerts] group_wait: must be 0 or more seconds")
    if alerts.repeat_interval <= 0:
        raise error("[alerts] repeat_interval: must be more than 0 seconds")
    if alerts.timeout <= 0:
        raise error("[alerts] timeout: must be more than 0 seconds")

"""
The backups' section, [backup]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class BackupSettings:
    """[backup]: encrypted backups to S3-compatible storage (scripts/backup, ctl backup now)."""

    enabled: bool = dataclasses.field(
        default=False,
        metadata=_doc("Allow backups from this node and watch that they succeed and stay fresh."),
    )
    key_file: str = dataclasses.field(
        default="",
        metadata=_doc(
            "File holding the backup encryption key (64 hex digits); keep a copy off the "
            "machines: without it no backup can be restored."
        ),
    )
    endpoint: str = dataclasses.field(
        default="", metadata=_doc("S3 endpoint URL, e.g. https://s3.eu-west-1.amazonaws.com.")
    )
    region: str = dataclasses.field(default="us-east-1", metadata=_doc("S3 region."))
    bucket: str = dataclasses.field(default="", metadata=_doc("S3 bucket the backups go to."))
    prefix: str = dataclasses.field(
        default="clickpass/", metadata=_doc("Key prefix inside the bucket.")
    )
    access_key_id: str = dataclasses.field(default="", metadata=_doc("S3 access key id."))
    secret_access_key_file: str = dataclasses.field(
        default="", metadata=_doc("File holding the S3 secret access key (first line).")
    )
    source_host: str = dataclasses.field(
        default="",
        metadata=_doc(
            "MariaDB server to back up (the replica, when there is one). Default: [database]."
        ),
    )
    source_port: int = dataclasses.field(
        default=0, metadata=_doc("Port of source_host. Default: [database] port.")
    )
    source_socket: str = dataclasses.field(
        default="", metadata=_doc("Unix socket of the server to back up; overrides source_host.")
    )
    source_user: str = dataclasses.field(
        default="", metadata=_doc("MariaDB user for backups. Default: [database] user.")
    )
    source_password_file: str = dataclasses.field(
        default="",
        metadata=_doc("File holding source_user's password. Default: [database] password_file."),
    )
    dump_program: str = dataclasses.field(
        default="mariadb-dump", metadata=_doc("The MariaDB dump program.")
    )
    include_secret: bool = dataclasses.field(
        default=True,
        metadata=_doc("Back up the master secret too (identifiers cannot be rebuilt without it)."),
    )
    keep_daily: int = dataclasses.field(
        default=7, metadata=_doc("Keep the newest backup of each of this many recent days.")
    )
    keep_weekly: int = dataclasses.field(
        default=5, metadata=_doc("Keep the newest backup of each of this many recent weeks.")
    )
    max_age: int = dataclasses.field(
        default=26 * 3600,
        metadata=_doc("Alert when no backup has succeeded for this many seconds."),
    )
    check_interval: float = dataclasses.field(
        default=60.0, metadata=_doc("Seconds between checks of the last backup's outcome.")
    )
    s3_timeout: float = dataclasses.field(
        default=20.0,
        metadata=_doc(
            "Seconds each S3 answer may take, and (up to 10) S3 may take to accept a "
            "connection; a request that times out is tried once more, so a hung endpoint "
            "fails a backup after a little more than twice s3_timeout. Raise it for a distant or "
            "slow S3, lower it to find a hung one sooner."
        ),
    )
    work_dir: str = dataclasses.field(
        default="backup-work",
        metadata=_doc("Scratch directory for backups and restores, relative to data_dir."),
    )

    def check(self) -> None:
        """Raise L{ConfigError} when an enabled [backup] section cannot work."""
        backup = self
        if backup.keep_daily < 1:
            raise ConfigError("[backup] keep_daily: must be at least 1")
        if backup.keep_weekly < 0:
            raise ConfigError("[backup] keep_weekly: must be 0 or more")
        if backup.max_age < 60:
            raise ConfigError("[backup] max_age: must be at least 60 seconds")
        if backup.s3_timeout <= 0:
            raise ConfigError("[backup] s3_timeout: must be more than 0 seconds")
        if backup.check_interval <= 0:
            raise ConfigError("[backup] check_interval: must be more than 0 seconds")
        if not 0 <= backup.source_port <= 65535:
            raise ConfigError(f"[backup] source_port: {backup.source_port} is not a TCP port")
        if backup.endpoint and not backup.endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"[backup] endpoint: {backup.endpoint!r} must start with http:// or https://"
            )
        if not backup.enabled:
            return
        for key in ("key_file", "bucket"):
            if not getattr(backup, key):
                raise ConfigError(f"[backup] {key}: needed when [backup] enabled = true")
        if backup.access_key_id and not backup.secret_access_key_file:
            raise ConfigError("[backup] secret_access_key_file: needed with access_key_id")


__all__ = ["BackupSettings"]

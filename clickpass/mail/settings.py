"""
The C{[mail]} configuration section: where outgoing mail goes (an SMTP
server, or a maildir under the data directory when no server is named),
and how the outbox retries.

The section's checks live here, next to its fields (check()), and run when
the configuration is parsed: each problem is one line naming the key. This
module must never read the files it names or touch the network (the
configuration loader checks files; the delivery service connects).
"""

from __future__ import annotations

import dataclasses
from email.utils import parseaddr
from typing import Literal

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


@dataclasses.dataclass(frozen=True)
class MailSettings:
    """[mail]: outgoing mail (verification, reset and notice messages) through SMTP."""

    smtp_host: str = dataclasses.field(
        default="",
        metadata=_doc(
            "SMTP server that relays Clickpass's mail. Empty: messages are written to the "
            "maildir below instead (the embedded default; nothing leaves the machine)."
        ),
    )
    smtp_port: int = dataclasses.field(
        default=0, metadata=_doc("SMTP port. 0: 587 for starttls, 465 for tls, 25 for none.")
    )
    security: Literal["starttls", "tls", "none"] = dataclasses.field(
        default="starttls",
        metadata=_doc(
            '"starttls" (required, never falls back to plain text), "tls" (implicit TLS, '
            'usually port 465) or "none" (plain SMTP, only to a relay on this machine).'
        ),
    )
    verify_certificate: bool = dataclasses.field(
        default=True,
        metadata=_doc(
            "Check the server's certificate against ca_bundle and its name against "
            "smtp_host. Turn off only in a lab."
        ),
    )
    ca_bundle: str = dataclasses.field(
        default="",
        metadata=_doc(
            "PEM file of CA certificates trusted for the SMTP server. Default: the system's."
        ),
    )
    username: str = dataclasses.field(
        default="", metadata=_doc("SMTP AUTH user name (empty: no authentication).")
    )
    password_file: str = dataclasses.field(
        default="", metadata=_doc("File holding the SMTP AUTH password (first line).")
    )
    from_address: str = dataclasses.field(
        default="",
        metadata=_doc(
            'From: of every message, e.g. "Clickpass <no-reply@login.example.com>". '
            "Default: Clickpass <no-reply@HOST> with the public URL's host."
        ),
    )
    helo_name: str = dataclasses.field(
        default="", metadata=_doc("Name given in EHLO. Default: the public URL's host.")
    )
    maildir: str = dataclasses.field(
        default="mail",
        metadata=_doc(
            "Maildir (relative to [node] data_dir) that receives every message when "
            "smtp_host is empty."
        ),
    )
    timeout: float = dataclasses.field(
        default=30.0, metadata=_doc("Seconds one delivery attempt may take, end to end.")
    )
    poll_interval: float = dataclasses.field(
        default=1.0, metadata=_doc("Seconds between looks at the outbox.")
    )
    batch: int = dataclasses.field(
        default=20, metadata=_doc("Most messages taken from the outbox per look.")
    )
    parallel: int = dataclasses.field(
        default=4, metadata=_doc("Most messages sent at once by one node.")
    )
    backoff_initial: float = dataclasses.field(
        default=30.0, metadata=_doc("Seconds before the first retry of a failed message.")
    )
    backoff_max: float = dataclasses.field(
        default=1800.0,
        metadata=_doc("Longest wait between retries (the wait doubles up to it)."),
    )
    give_up_after: int = dataclasses.field(
        default=24 * 3600,
        metadata=_doc(
            "Seconds after which a message that could not be delivered is given up "
            "(clickpass-ctl mail retry ID queues it again)."
        ),
    )
    alert_after: int = dataclasses.field(
        default=900,
        metadata=_doc("Raise the mail.delayed alert when a message waits longer than this."),
    )
    retention: int = dataclasses.field(
        default=7 * 24 * 3600,
        metadata=_doc("Seconds sent and given-up messages stay in the outbox (for mail status)."),
    )

    def check(self) -> None:
        """Raise L{ConfigError} with one line for the first problem in this section."""
        for name in ("timeout", "poll_interval", "backoff_initial", "backoff_max"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[mail] {name}: must be more than 0")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("[mail] backoff_max: must be at least backoff_initial")
        for name in ("batch", "parallel", "give_up_after", "alert_after", "retention"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[mail] {name}: must be at least 1")
        if not 0 <= self.smtp_port <= 65535:
            raise ConfigError(f"[mail] smtp_port: {self.smtp_port} is not a TCP port")
        if self.smtp_host and any(c.isspace() or c in "/:" for c in self.smtp_host):
            raise ConfigError(
                f"[mail] smtp_host: {self.smtp_host!r} must be a host name or address"
            )
        if self.username and not self.password_file:
            raise ConfigError("[mail] password_file: needed with username")
        if self.password_file and not self.username:
            raise ConfigError("[mail] username: needed with password_file")
        if self.username and self.security == "none":
            raise ConfigError(
                '[mail] security: AUTH needs "starttls" or "tls" (with "none" the password '
                "would cross the network in clear text)"
            )
        if self.from_address:
            _, address = parseaddr(self.from_address)
            if "@" not in address or not address.isascii() or any(c.isspace() for c in address):
                raise ConfigError(
                    f"[mail] from_address: {self.from_address!r} is not an email address "
                    '(e.g. "Clickpass <no-reply@login.example.com>")'
                )
        if not self.maildir:
            raise ConfigError("[mail] maildir: a directory is needed")

    @property
    def port(self) -> int:
        """The SMTP port, with the default of the security mode filled in."""
        return self.smtp_port or DEFAULT_PORTS[self.security]


__all__ = ["MailSettings"]

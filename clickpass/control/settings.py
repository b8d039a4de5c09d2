"""
The C{[control]} configuration section: where the operators' control port
listens (a unix socket and, optionally, a loopback TCP port with a token).

The section's checks live here, next to its fields (check()); the TCP
endpoint is checked by the very parser the control port listens by
(L{clickpass.control.endpoint}, pure). This module must never read the
token file or listen (the configuration loader reads files; the control
service listens).
"""

from __future__ import annotations

import dataclasses

from clickpass.control.endpoint import EndpointError, parse_control_tcp
from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class ControlSettings:
    """[control]: the operators' control port, driven by clickpass-ctl."""

    socket: str = dataclasses.field(
        default="",
        metadata=_doc("Unix socket path (mode 0600). Default: <data_dir>/control.sock."),
    )
    tcp: str = dataclasses.field(
        default="",
        metadata=_doc(
            "Optional loopback TCP endpoint, e.g. tcp:9101:interface=127.0.0.1 (the interface "
            "must be a loopback address, each option given once)."
        ),
    )
    token_file: str = dataclasses.field(
        default="",
        metadata=_doc(
            "File holding the token required on the TCP control port (first line, at least "
            "32 bytes: openssl rand -hex 32)."
        ),
    )

    def check(self) -> None:
        """The section's own rules; L{ConfigError} naming the key."""
        if self.tcp:
            if not self.token_file:
                raise ConfigError("[control] tcp: a TCP control port needs [control] token_file")
            try:
                parse_control_tcp(self.tcp)
            except EndpointError as e:
                raise ConfigError(f"[control] tcp: {e}") from None

"""
The database agent's section, [dbagent]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class DbAgentSettings:
    """[dbagent]: the database agent on a database host (MariaDB role switching)."""

    enabled: bool = dataclasses.field(
        default=False, metadata=_doc("Run the database agent (needs [cluster] process = inline).")
    )
    group: str = dataclasses.field(
        default="db", metadata=_doc("The heartbeat group whose MASTER is the primary.")
    )
    health_check: str = dataclasses.field(
        default="database",
        metadata=_doc("Health input reported into the group (list it as a weight-0 check)."),
    )
    local_socket: str = dataclasses.field(
        default="", metadata=_doc("Unix socket of the local MariaDB (empty: local_host/port).")
    )
    local_host: str = dataclasses.field(default="127.0.0.1", metadata=_doc("Local MariaDB host."))
    local_port: int = dataclasses.field(default=3306, metadata=_doc("Local MariaDB port."))
    peer_socket: str = dataclasses.field(
        default="", metadata=_doc("Unix socket of the peer's MariaDB (tests on one machine).")
    )
    peer_host: str = dataclasses.field(
        default="", metadata=_doc("The other database host's MariaDB address.")
    )
    peer_port: int = dataclasses.field(default=3306, metadata=_doc("The peer's MariaDB port."))
    admin_user: str = dataclasses.field(
        default="agent", metadata=_doc("Administrative MariaDB user (both servers).")
    )
    admin_password_file: str = dataclasses.field(
        default="", metadata=_doc("File holding admin_user's password.")
    )
    replication_user: str = dataclasses.field(
        default="repl", metadata=_doc("User a replica connects to its primary as.")
    )
    replication_password_file: str = dataclasses.field(
        default="", metadata=_doc("File holding replication_user's password.")
    )
    replication_host: str = dataclasses.field(
        default="",
        metadata=_doc("Address this host's replica uses for the peer (default peer_host)."),
    )
    replication_port: int = dataclasses.field(
        default=0, metadata=_doc("Port for replication_host (0: peer_port).")
    )
    check_interval: float = dataclasses.field(
        default=0.1, metadata=_doc("Seconds between fast checks of the local server.")
    )
    check_timeout: float = dataclasses.field(
        default=0.3, metadata=_doc("Seconds a fast check may take.")
    )
    check_fall: int = dataclasses.field(
        default=2, metadata=_doc("Failed checks in a row before the server counts as down.")
    )
    fence_timeout: float = dataclasses.field(
        default=1.0, metadata=_doc("Seconds to make a server read-only before giving up.")
    )
    fence_wait: float = dataclasses.field(
        default=2.0,
        metadata=_doc(
            "Seconds after an election to wait for an unreachable old primary to fence itself."
        ),
    )
    promote_timeout: float = dataclasses.field(
        default=10.0, metadata=_doc("Seconds to apply the relay log when promoting.")
    )
    rejoin_interval: float = dataclasses.field(
        default=0.5, metadata=_doc("Seconds between full status reads and rejoin attempts.")
    )
    flap_period: float = dataclasses.field(
        default=3600.0,
        metadata=_doc("Seconds after an automatic failover with no other one unless acknowledged."),
    )
    semisync: bool = dataclasses.field(
        default=True,
        metadata=_doc(
            "Lossless semi-sync replication (false: asynchronous, for benchmark comparison "
            "only: acknowledged writes can be lost on failover)."
        ),
    )
    server_pid_file: str = dataclasses.field(
        default="",
        metadata=_doc("The local mariadbd's pid file (killed when it cannot be fenced)."),
    )
    degrade_after: float = dataclasses.field(
        default=3.0,
        metadata=_doc("Seconds the replica must be gone before the primary goes on alone."),
    )
    catchup_wait: float = dataclasses.field(
        default=10.0,
        metadata=_doc(
            "Seconds a returning replica may stream before semi-sync is on again, caught up or not."
        ),
    )

    def check(self) -> None:
        """
        Raise L{ConfigError} with one line for the first problem in this
        section (what it needs of [cluster] is checked by the loader).
        """
        if not self.enabled:
            return
        if not (self.peer_host or self.peer_socket):
            raise ConfigError("[dbagent] peer_host: the other database host's address is needed")
        for key in ("local_port", "peer_port"):
            if not 1 <= getattr(self, key) <= 65535:
                raise ConfigError(f"[dbagent] {key}: {getattr(self, key)} is not a TCP port")
        for key in ("check_interval", "check_timeout", "fence_timeout", "promote_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"[dbagent] {key}: must be positive")
        if self.check_fall < 1:
            raise ConfigError("[dbagent] check_fall: must be at least 1")
        for key in ("degrade_after", "catchup_wait"):
            if getattr(self, key) < 0:
                raise ConfigError(f"[dbagent] {key}: must not be negative")


__all__ = ["DbAgentSettings"]

"""
The heartbeat's section, [cluster] with its [[cluster.group]] tables:
its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Literal

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc

MIN_INTERVAL = 0.05
MAX_INTERVAL = 40.0
DEFAULT_PORT = 5405


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """
    Parse C{HOST} or C{HOST:PORT} (C{[V6]:PORT} for IPv6) into an IP literal
    and a port. Raises ValueError with a short reason.
    """
    host, port = text.strip(), default_port
    if host.startswith("["):
        inner, _, rest = host[1:].partition("]")
        host = inner
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected [ADDRESS]:PORT")
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 1 <= port <= 65535:
        raise ValueError("port out of range")
    return host, port


@dataclasses.dataclass(frozen=True)
class HealthCheckSettings:
    """[[cluster.group.check]]: a health input that lowers the priority or faults the group."""

    name: str = dataclasses.field(
        default="",
        metadata=_doc('Health input reported by the node, e.g. "workers" or "database".'),
    )
    weight: int = dataclasses.field(
        default=0,
        metadata=_doc("0: failing puts the group in FAULT; negative: added to the priority."),
    )


@dataclasses.dataclass(frozen=True)
class ClusterGroupSettings:
    """[[cluster.group]]: one heartbeat group, which moves one virtual IP between peers."""

    name: str = dataclasses.field(default="", metadata=_doc("Group name, same on every peer."))
    vip: str = dataclasses.field(
        default="", metadata=_doc("Virtual IP with prefix length, e.g. 10.0.0.100/24.")
    )
    interface: str = dataclasses.field(
        default="", metadata=_doc("Network interface that carries the VIP, e.g. eth0.")
    )
    priority: int = dataclasses.field(
        default=100, metadata=_doc("1-254; the highest healthy priority holds the VIP.")
    )
    peers: list[str] = dataclasses.field(
        default_factory=list,
        metadata=_doc("Peer addresses (HOST or HOST:PORT) that adverts are sent to."),
    )
    advert_interval: float = dataclasses.field(
        default=1.0, metadata=_doc("Seconds between adverts, 0.05 to 40.")
    )
    preempt: bool = dataclasses.field(
        default=True,
        metadata=_doc("Take the VIP back from a lower-priority master (false: nopreempt)."),
    )
    preempt_delay: float = dataclasses.field(
        default=0.0, metadata=_doc("Seconds after start before this node may preempt.")
    )
    lease: int = dataclasses.field(
        default=2,
        metadata=_doc(
            "Seconds the VIP stays on the interface unless renewed (renewed every advert "
            "while MASTER), so a frozen or killed node's address lapses."
        ),
    )
    garp_count: int = dataclasses.field(
        default=5, metadata=_doc("Gratuitous ARPs sent on taking the VIP.")
    )
    garp_interval: float = dataclasses.field(
        default=0.05, metadata=_doc("Seconds between the gratuitous ARPs of a burst.")
    )
    garp_refresh: float = dataclasses.field(
        default=0.0, metadata=_doc("Re-send gratuitous ARP this often while MASTER (0: off).")
    )
    notify: list[str] = dataclasses.field(
        default_factory=list,
        metadata=_doc("Programs run in order on every state change, with GROUP STATE arguments."),
    )
    notify_timeout: float = dataclasses.field(
        default=5.0, metadata=_doc("Seconds a notify program may run before it is killed.")
    )
    vip_drain: float = dataclasses.field(
        default=5.0,
        metadata=_doc(
            "Seconds the VIP stays on lo after a planned move (switchover, preempt), so "
            "requests in flight here still get their answers out; needs arp_ignore=1 and "
            "arp_announce=2 on the interface (else released at once). 0: released at once."
        ),
    )
    vip_bridge: bool = dataclasses.field(
        default=True,
        metadata=_doc(
            "After taking the VIP in a planned move from a live peer, send the packets of "
            "TCP connections this node did not see start to that peer for vip_drain seconds "
            "(it still has them), instead of resetting them; needs nftables (nft). "
            "false: off."
        ),
    )
    check: list[HealthCheckSettings] = dataclasses.field(
        default_factory=list, metadata=_doc("Health inputs ([[cluster.group.check]] tables).")
    )

    def check_holder(self, where: str) -> None:
        """
        Raise L{ConfigError} with one line for the first problem in what a
        node that may hold this group's VIP needs (a witness needs none of it).
        """
        try:
            ipaddress.ip_interface(self.vip)
        except ValueError:
            raise ConfigError(f"{where} vip: {self.vip!r} is not ADDRESS/PREFIX") from None
        if "/" not in self.vip:
            raise ConfigError(f"{where} vip: give the prefix length too, e.g. {self.vip}/24")
        if not self.interface:
            raise ConfigError(f"{where} interface: the interface that carries the VIP is needed")
        if not 1 <= self.priority <= 254:
            raise ConfigError(f"{where} priority: must be 1 to 254")
        if self.preempt_delay < 0:
            raise ConfigError(f"{where} preempt_delay: must not be negative")
        if self.lease < 1:
            raise ConfigError(f"{where} lease: must be at least 1 second")
        if self.lease < 2 * self.advert_interval:
            raise ConfigError(f"{where} lease: must be at least two advert intervals")
        if self.garp_count < 0 or self.garp_interval < 0 or self.garp_refresh < 0:
            raise ConfigError(f"{where} garp_*: must not be negative")
        if self.notify_timeout <= 0:
            raise ConfigError(f"{where} notify_timeout: must be more than 0 seconds")
        if not 0 <= self.vip_drain <= 300:
            raise ConfigError(f"{where} vip_drain: must be 0 to 300 seconds")
        names: set[str] = set()
        for check in self.check:
            if not check.name:
                raise ConfigError(f"{where} check: every check needs a name")
            if check.name in names:
                raise ConfigError(f"{where} check: {check.name!r} is listed twice")
            names.add(check.name)
            if not -253 <= check.weight <= 0:
                raise ConfigError(f"{where} check {check.name!r} weight: must be -253 to 0")


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """[cluster]: the peer heartbeat that moves virtual IPs between nodes."""

    enabled: bool = dataclasses.field(default=False, metadata=_doc("Run the heartbeat."))
    role: Literal["member", "witness"] = dataclasses.field(
        default="member",
        metadata=_doc('"member" holds VIPs; "witness" only votes on takeovers.'),
    )
    secret_file: str = dataclasses.field(
        default="",
        metadata=_doc("File holding the heartbeat secret (first line, 16+ characters)."),
    )
    bind: str = dataclasses.field(
        default="0.0.0.0",  # noqa: S104 - peers' adverts may arrive on any interface
        metadata=_doc("Address the heartbeat UDP socket binds to."),
    )
    port: int = dataclasses.field(default=5405, metadata=_doc("Heartbeat UDP port."))
    witness: str = dataclasses.field(
        default="",
        metadata=_doc("Witness HOST or HOST:PORT whose vote a takeover needs (empty: none)."),
    )
    process: Literal["child", "inline"] = dataclasses.field(
        default="child",
        metadata=_doc('"child": heartbeat in its own small process (keeps time under load).'),
    )
    realtime: bool = dataclasses.field(
        default=True,
        metadata=_doc("Give the heartbeat process real-time scheduling when allowed."),
    )
    node_timeout: float = dataclasses.field(
        default=2.0,
        metadata=_doc("Seconds the heartbeat process waits for word from the node before FAULT."),
    )
    node_slow_factor: float = dataclasses.field(
        default=3.0,
        metadata=_doc(
            "node_timeout x this: how long a silent node that is runnable or using CPU"
            " (slow on a busy host, not frozen) keeps its groups before FAULT; 1 to 10."
        ),
    )
    group: list[ClusterGroupSettings] = dataclasses.field(
        default_factory=list, metadata=_doc("The groups ([[cluster.group]] tables).")
    )

    def check(self) -> None:
        """Raise L{ConfigError} with one line for the first problem in C{cluster}."""
        if not self.enabled:
            return
        cluster = self
        if not cluster.secret_file:
            raise ConfigError("[cluster] secret_file: the heartbeat needs a shared secret file")
        if not 1 <= cluster.port <= 65535:
            raise ConfigError(f"[cluster] port: {cluster.port} is not a UDP port")
        try:
            ipaddress.ip_address(cluster.bind)
        except ValueError:
            raise ConfigError(f"[cluster] bind: {cluster.bind!r} is not an IP address") from None
        if cluster.witness:
            try:
                parse_address(cluster.witness, cluster.port)
            except ValueError:
                raise ConfigError(
                    f"[cluster] witness: {cluster.witness!r} is not HOST or HOST:PORT"
                ) from None
        if cluster.node_timeout <= 0:
            raise ConfigError("[cluster] node_timeout: must be more than 0 seconds")
        if not 1.0 <= cluster.node_slow_factor <= 10.0:
            raise ConfigError("[cluster] node_slow_factor: must be 1 to 10")
        if not cluster.group:
            raise ConfigError("[cluster] group: at least one [[cluster.group]] is needed")
        seen: set[str] = set()
        for i, group in enumerate(cluster.group):
            where = f"[cluster] group[{i}]"
            if not group.name or len(group.name.encode("utf-8")) > 64:
                raise ConfigError(f"{where} name: a name of 1 to 64 bytes is needed")
            if group.name in seen:
                raise ConfigError(f"{where} name: group {group.name!r} is configured twice")
            seen.add(group.name)
            where = f"[cluster] group {group.name!r}"
            if not group.peers:
                raise ConfigError(f"{where} peers: at least one peer address is needed")
            for peer in group.peers:
                try:
                    parse_address(peer, cluster.port)
                except ValueError:
                    raise ConfigError(f"{where} peers: {peer!r} is not HOST or HOST:PORT") from None
            if not MIN_INTERVAL <= group.advert_interval <= MAX_INTERVAL:
                raise ConfigError(
                    f"{where} advert_interval: must be {MIN_INTERVAL} to {MAX_INTERVAL:g} seconds"
                )
            if cluster.role == "witness":
                continue
            group.check_holder(where)


__all__ = ["ClusterGroupSettings", "ClusterSettings", "HealthCheckSettings", "parse_address"]

"""
The heartbeat's section, [cluster] with its [[cluster.group]] tables:
its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from clickpass.settings_base import doc as _doc


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
    check: list[HealthCheckSettings] = dataclasses.field(
        default_factory=list, metadata=_doc("Health inputs ([[cluster.group.check]] tables).")
    )


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


__all__ = ["ClusterGroupSettings", "ClusterSettings", "HealthCheckSettings"]

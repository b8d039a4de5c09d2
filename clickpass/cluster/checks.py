"""
Validation of the [cluster] settings: every problem is one line naming the key.

Pure functions over the settings dataclasses; this module must never touch
the network or the file system.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clickpass.cluster.settings import ClusterSettings

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


def check_cluster_settings(cluster: ClusterSettings, error: type[Exception]) -> None:
    """Raise C{error} with one line for the first problem in C{cluster}."""
    if not cluster.secret_file:
        raise error("[cluster] secret_file: the heartbeat needs a shared secret file")
    if not 1 <= cluster.port <= 65535:
        raise error(f"[cluster] port: {cluster.port} is not a UDP port")
    try:
        ipaddress.ip_address(cluster.bind)
    except ValueError:
        raise error(f"[cluster] bind: {cluster.bind!r} is not an IP address") from None
    if cluster.witness:
        try:
            parse_address(cluster.witness, cluster.port)
        except ValueError:
            raise error(
                f"[cluster] witness: {cluster.witness!r} is not HOST or HOST:PORT"
            ) from None
    if cluster.node_timeout <= 0:
        raise error("[cluster] node_timeout: must be more than 0 seconds")
    if not 1.0 <= cluster.node_slow_factor <= 10.0:
        raise error("[cluster] node_slow_factor: must be 1 to 10")
    if not cluster.group:
        raise error("[cluster] group: at least one [[cluster.group]] is needed")
    seen: set[str] = set()
    for i, group in enumerate(cluster.group):
        where = f"[cluster] group[{i}]"
        if not group.name or len(group.name.encode("utf-8")) > 64:
            raise error(f"{where} name: a name of 1 to 64 bytes is needed")
        if group.name in seen:
            raise error(f"{where} name: group {group.name!r} is configured twice")
        seen.add(group.name)
        where = f"[cluster] group {group.name!r}"
        if not group.peers:
            raise error(f"{where} peers: at least one peer address is needed")
        for peer in group.peers:
            try:
                parse_address(peer, cluster.port)
            except ValueError:
                raise error(f"{where} peers: {peer!r} is not HOST or HOST:PORT") from None
        if not MIN_INTERVAL <= group.advert_interval <= MAX_INTERVAL:
            raise error(
                f"{where} advert_interval: must be {MIN_INTERVAL} to {MAX_INTERVAL:g} seconds"
            )
        if cluster.role == "witness":
            continue
        try:
            ipaddress.ip_interface(group.vip)
        except ValueError:
            raise error(f"{where} vip: {group.vip!r} is not ADDRESS/PREFIX") from None
        if "/" not in group.vip:
            raise error(f"{where} vip: give the prefix length too, e.g. {group.vip}/24")
        if not group.interface:
            raise error(f"{where} interface: the interface that carries the VIP is needed")
        if not 1 <= group.priority <= 254:
            raise error(f"{where} priority: must be 1 to 254")
        if group.preempt_delay < 0:
            raise error(f"{where} preempt_delay: must not be negative")
        if group.lease < 1:
            raise error(f"{where} lease: must be at least 1 second")
        if group.lease < 2 * group.advert_interval:
            raise error(f"{where} lease: must be at least two advert intervals")
        if group.garp_count < 0 or group.garp_interval < 0 or group.garp_refresh < 0:
            raise error(f"{where} garp_*: must not be negative")
        if group.notify_timeout <= 0:
            raise error(f"{where} notify_timeout: must be more than 0 seconds")
        names: set[str] = set()
        for check in group.check:
            if not check.name:
                raise error(f"{where} check: every check needs a name")
            if check.name in names:
                raise error(f"{where} check: {check.name!r} is listed twice")
            names.add(check.name)
            if not -253 <= check.weight <= 0:
                raise error(f"{where} check {check.name!r} weight: must be -253 to 0")


__all__ = ["check_cluster_settings", "parse_address"]

"""
Who the client is: the address the front hands its workers with each
request, worked out from the connection's peer and, when that peer is one
of the configured trusted proxies ([web] trusted_proxies), from the
X-Forwarded-For hops those proxies added.

The front sends the answer in its own header (L{CLIENT_HEADER}); it strips
any copy a client sent, and the workers, which listen only on unix sockets
that only the front reaches, believe nothing else.

Pure functions over bytes and address ranges: no I/O, and never an
exception on what a client sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

# The front's own header; http1.c drops any client-sent copy (H_OWN).
CLIENT_HEADER = b"X-Clickpass-Client"

# Hops of X-Forwarded-For looked at, from the right: a chain of trusted
# proxies is short, and a client must not make the front parse thousands.
MAX_HOPS = 16

Network = IPv4Network | IPv6Network


def parse_ranges(ranges: Iterable[str]) -> tuple[Network, ...]:
    """The address ranges C{ranges} (CIDR or single addresses); ValueError naming a bad one."""
    networks = []
    for text in ranges:
        try:
            networks.append(ip_network(text.strip()))
        except ValueError as e:
            raise ValueError(f"{text!r} is not an address range ({e})") from None
    return tuple(networks)


class TrustedProxies:
    """The configured trusted proxies, and the client behind them."""

    def __init__(self, networks: tuple[Network, ...] = ()) -> None:
        self.networks = networks

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        """Whether the address C{host} (text) is one of the trusted proxies."""
        if not self.networks:
            return False
        try:
            address = ip_address(host)
        except ValueError:
            return False
        return self._contains(address)

    def _contains(self, address: object) -> bool:
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client(self, forwarded_for: bytes, peer: bytes) -> bytes:
        """
        The client of a request that came from the trusted proxy C{peer} with
        the X-Forwarded-For values C{forwarded_for}: the rightmost hop that
        is not a trusted proxy (each proxy appends whom it got the request
        from, so hops to the left of an untrusted one are whatever that
        client wrote). A hop that is not an address (garbage, a port, an
        obfuscated name) ends the walk at the proxy that wrote it; when
        every hop is trusted, the leftmost one looked at is the client.
        """
        client = peer
        if not forwarded_for:
            return client
        hops = forwarded_for.split(b",")
        for raw in reversed(hops[-MAX_HOPS:]):
            try:
                address = ip_address(raw.strip().decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                break
            client = str(address).encode("ascii")
            if not self._contains(address):
                break
        return client

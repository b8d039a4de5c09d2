"""
Two hosts as network namespaces on a veth pair, and nodes run inside one:
for tests that need real addresses, a VIP and gratuitous ARP without the
whole lab (scripts/lab). Names are unique per test run; nothing is added
to the machine's own namespace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator

from tests.support.node import NodeProcess


def ip(*args: str) -> str:
    """Run C{ip ARGS}; its output, or an AssertionError with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class NsNode(NodeProcess):
    """A node run inside a network namespace."""

    namespace = ""

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().command()]


class VethPair:
    """
    Two namespaces (unique names, C{tag} first) joined by a veth pair: each
    has C{eth0} up with its address from C{addresses} (host -> address, /24).
    """

    def __init__(self, tag: str, addresses: dict[str, str]) -> None:
        first, second = addresses
        unique = f"{tag}{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.addresses = addresses
        self.names = {first: f"{unique}a", second: f"{unique}b"}

    def create(self) -> None:
        a, b = self.names.values()
        ip("netns", "add", a)
        ip("netns", "add", b)
        ip("link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0", "netns", b)
        for host, ns in self.names.items():
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def delete(self) -> None:
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def holds(self, host: str, address: str) -> bool:
        """Whether C{host}'s eth0 has C{address} now."""
        return f"{address}/" in ip("-n", self.names[host], "-4", "addr", "show", "dev", "eth0")


@contextlib.contextmanager
def loopback_only(tag: str) -> Iterator[str]:
    """
    A namespace of its own (unique name, C{tag} first) with nothing but its
    loopback up: every port is free in it, so a test of a fixed port (the
    default 8080) does not depend on what the machine runs. Deleted afterwards.
    """
    name = f"{tag}{os.getpid() % 100000}{secrets.token_hex(2)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)

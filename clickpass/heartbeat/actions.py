"""
The heartbeat's side effects on the host: the VIP (rtnetlink, in this
process), gratuitous ARP (an AF_PACKET socket) and notify hooks (programs
run in order).

The VIP is added, renewed and removed with rtnetlink messages sent from this
process, not by running C{ip}: the heartbeat process runs with real-time
priority, and starting a program from it (posix_spawn, a vfork) stops it
until the new program, at normal priority, gets a CPU to exec on; on a
loaded host that took up to 1.9 s, so adverts went out late and the peer
took over (and the renewing C{ip}, starved, let the lease lapse). Hooks
are programs, started with fork (which does not wait for the child), each
with a timeout. Every failure is logged and counted; nothing here blocks the
reactor or raises into the state machine. Actions are idempotent: taking a
held address renews it, releasing an absent one is not an error.

This module must never decide anything: it does what L{clickpass.heartbeat.group}
asks, in the order asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import math
import os
import re
import shlex
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.heartbeat.settings import ClusterGroupSettings
from clickpass.heartbeat.wire import State

IP = "ip"
NFT = "nft"
MAX_OUTPUT = 4096
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# What iproute2 versions say when deleting an address that is not there.
_ABSENT = ("Cannot assign requested address", "Address not found")
# Where a handed-off VIP stays while the connections in flight finish.
PARK_INTERFACE = "lo"


@dataclass(frozen=True)
class Result:
    """How a program ended."""

    code: int | None
    output: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out


class _Collect(ProcessProtocol):
    def __init__(self, done: Deferred[Result], clock: Any, timeout: float) -> None:
        self.done = done
        self.output = b""
        self.timed_out = False
        self._timer: IDelayedCall = clock.callLater(timeout, self._kill)

    def _kill(self) -> None:
        self.timed_out = True
        if self.transport is None:  # not started: nothing to kill
            return
        with contextlib.suppress(Exception):  # it may have just exited
            self.transport.signalProcess("KILL")

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if len(self.output) < MAX_OUTPUT:
            self.output += data[: MAX_OUTPUT - len(self.output)]

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        text = " ".join(self.output.decode("utf-8", "replace").split())
        self.done.callback(Result(code, text, self.timed_out))


class CommandRunner:
    """Runs programs with spawnProcess and a timeout; never blocks."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def run(self, argv: Sequence[str], timeout: float, stdin: bytes = b"") -> Deferred[Result]:
        """Run C{argv}, C{stdin} written to it (then closed); its result, never an error."""
        done: Deferred[Result] = Deferred()
        protocol = _Collect(done, self._reactor, timeout)
        env = {"PATH": os.environ.get("PATH", _PATH), "LANG": "C"}
        try:
            self._reactor.spawnProcess(
                protocol,
                argv[0],
                list(argv),
                env=env,
                # A working directory makes Twisted fork instead of
                # posix_spawn, whose vfork would stop this (real-time)
                # process until the child, at normal priority, has exec'd.
                path="/",
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except Exception as e:
            protocol._timer.cancel()
            return succeed(Result(None, f"cannot start {argv[0]}: {e}"))
        if protocol.transport is not None:  # spawnProcess connected it
            if stdin:
                protocol.transport.write(stdin)
            protocol.transport.closeStdin()
        return done


class Serial:
    """Runs asynchronous steps one after the other, in the order queued."""

    log = Logger()

    def __init__(self) -> None:
        self._tail: Deferred[object] = succeed(None)
        self.pending = 0

    def __call__(self, step: Callable[[], Deferred[Any] | None]) -> Deferred[object]:
        self.pending += 1

        def run(_: object) -> Deferred[Any] | None:
            return step()

        def done(result: object) -> None:
            self.pending -= 1
            if isinstance(result, Failure):
                self.log.failure("cluster action failed", result)

        self._tail = self._tail.addCallback(run).addBoth(done)
        return self._tail


def garp_frame(mac: bytes, address: str) -> bytes:
    """A gratuitous ARP request announcing C{address} at C{mac}, as an Ethernet frame."""
    ip = ipaddress.IPv4Address(address).packed
    ethernet = b"\xff" * 6 + mac + struct.pack("!H", 0x0806)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return ethernet + arp


class GarpSender:
    """Gratuitous ARP on one interface through a non-blocking AF_PACKET socket."""

    log = Logger()

    def __init__(self, interface: str, address: str) -> None:
        self.interface = interface
        self.address = address
        self.counters: Counter[str] = Counter()
        self._socket: socket.socket | None = None
        self._frame = b""

    def send(self) -> None:
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
                sock.setblocking(False)
                sock.bind((self.interface, 0x0806))
                mac = sock.getsockname()[4]
                self._frame = garp_frame(mac, self.address)
                self._socket = sock
            self._socket.send(self._frame)
            self.counters["garp_sent"] += 1
        except OSError as e:
            self.counters["garp_failed"] += 1
            self.log.warn(
                "gratuitous ARP for {address} on {interface} failed: {error}",
                address=self.address,
                interface=self.interface,
                error=e.strerror or str(e),
            )
            self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Addresses(Protocol):
    """Adds (with a lease) and removes one address on one interface."""

    def replace(self, lease: int) -> Deferred[Result]:
        """Add the address, or renew it, valid for C{lease} seconds."""

    def delete(self) -> Deferred[Result]:
        """Remove the address."""


class IpCommand:
    """L{Addresses} through iproute2's C{ip} (where rtnetlink cannot be used)."""

    def __init__(self, settings: ClusterGroupSettings, runner: CommandRunner) -> None:
        self.settings = settings
        self.runner = runner
        self.family = "-6" if ipaddress.ip_interface(settings.vip).version == 6 else "-4"

    def _ip(self, *args: str) -> list[str]:
        return [IP, self.family, "addr", *args]

    def replace(self, lease: int) -> Deferred[Result]:
        return self.runner.run(
            self._ip(
                "replace",
                self.settings.vip,
                "dev",
                self.settings.interface,
                "valid_lft",
                str(lease),
                "preferred_lft",
                str(lease),
            ),
            timeout=2.0,
        )

    def delete(self) -> Deferred[Result]:
        return self.runner.run(
            self._ip("del", self.settings.vip, "dev", self.settings.interface), timeout=2.0
        )


# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h).
NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_DELADDR = 21
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_CACHEINFO = 6
RT_SCOPE_UNIVERSE = 0


def _attribute(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def address_message(
    kind: int, flags: int, seq: int, index: int, vip: str, lease: int | None
) -> bytes:
    """An RTM_NEWADDR/RTM_DELADDR request for C{vip} (address/prefix) on interface C{index}."""
    iface = ipaddress.ip_interface(vip)
    family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    packed = iface.ip.packed
    body = struct.pack("=BBBBI", family, iface.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    body += _attribute(IFA_LOCAL, packed) + _attribute(IFA_ADDRESS, packed)
    if lease is not None:
        # struct ifa_cacheinfo: preferred and valid lifetimes, then two stamps.
        body += _attribute(IFA_CACHEINFO, struct.pack("=IIII", lease, lease, 0, 0))
    header = struct.pack("=IHHII", 16 + len(body), kind, flags | NLM_F_REQUEST, seq, 0)
    return header + body


def ack_error(data: bytes, seq: int) -> int | None:
    """The errno (0 = success) of the NLMSG_ERROR answering C{seq} in C{data}, if there."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _, answered, _ = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return None
        if kind == NLMSG_ERROR and answered == seq and length >= 20:
            return -int(struct.unpack_from("=i", data, offset + 16)[0])
        offset += (length + 3) & ~3
    return None


class NetlinkAddresses:
    """
    L{Addresses} through an rtnetlink socket of this process: no program is
    started, so the real-time heartbeat neither waits for one nor depends on
    one getting a CPU. The kernel handles a request while it is sent, so its
    acknowledgement is read at once, without waiting.
    """

    def __init__(self, settings: ClusterGroupSettings) -> None:
        self.settings = settings
        self._socket: socket.socket | None = None
        self._seq = 0

    def _request(self, kind: int, flags: int, lease: int | None) -> Result:
        try:
            index = socket.if_nametoindex(self.settings.interface)
        except OSError:
            return Result(1, f'Cannot find device "{self.settings.interface}"')
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
                sock.setblocking(False)
                sock.bind((0, 0))
                self._socket = sock
            self._seq += 1
            seq = self._seq
            message = address_message(kind, flags | NLM_F_ACK, seq, index, self.settings.vip, lease)
            self._socket.send(message)
            while True:
                error = ack_error(self._socket.recv(65536), seq)
                if error is not None:
                    break
        except BlockingIOError:
            self.close()
            return Result(None, "no answer from rtnetlink")
        except OSError as e:
            self.close()
            return Result(None, f"rtnetlink: {e.strerror or e}")
        if error == 0:
            return Result(0, "")
        return Result(error, f"RTNETLINK answers: {os.strerror(error)}")

    def replace(self, lease: int) -> Deferred[Result]:
        return succeed(self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, lease))

    def delete(self) -> Deferred[Result]:
        return succeed(self._request(RTM_DELADDR, 0, None))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def parked_settings(settings: ClusterGroupSettings) -> ClusterGroupSettings:
    """The group's VIP as a host address on C{lo}: where L{VipManager.hand_off} parks it."""
    iface = ipaddress.ip_interface(settings.vip)
    return dataclasses.replace(
        settings, vip=f"{iface.ip}/{iface.max_prefixlen}", interface=PARK_INTERFACE
    )


def read_sysctl(name: str) -> int | None:
    """An integer sysctl of this network namespace (net.ipv4.conf.eth0.arp_ignore), or None."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# What L{arp_quiet} accepts: arp_ignore in this range and arp_announce this
# value, on the interface or on C{all} (the kernel takes the larger).
ARP_IGNORE_QUIET = range(1, 3)
ARP_ANNOUNCE_QUIET = 2
# The sysctls a host that carries a VIP sets so that L{arp_quiet} holds on
# every interface: shipped as conf/systemd/clickpass-arp.conf (sysctl.d).
ARP_QUIET_SYSCTLS: dict[str, int] = {
    "net.ipv4.conf.all.arp_ignore": ARP_IGNORE_QUIET[0],
    "net.ipv4.conf.all.arp_announce": ARP_ANNOUNCE_QUIET,
}


def arp_quiet(interface: str, sysctl: Callable[[str], int | None] = read_sysctl) -> bool:
    """
    Whether this host answers ARP on C{interface} only for the addresses it
    has on that interface (arp_ignore 1 or more), and names only those as the
    sender of its own ARP requests there (arp_announce 2); the kernel takes
    the larger of the interface's value and C{all}'s. Only then may an
    address sit on C{lo} without this host claiming it on the network.
    """
    values = {}
    for key in ("arp_ignore", "arp_announce"):
        found = [sysctl(f"net.ipv4.conf.{where}.{key}") for where in ("all", interface)]
        values[key] = max((v for v in found if v is not None), default=0)
    return values["arp_ignore"] in ARP_IGNORE_QUIET and values["arp_announce"] == ARP_ANNOUNCE_QUIET


# The nftables table of a group's hand-off bridge (L{HandoffBridge}).
BRIDGE_TABLE_PREFIX = "clickpass_handoff_"
# How long nft may take to load or remove a table.
NFT_TIMEOUT = 2.0
# An interface name nft may be given (quoted) without anything of it parsed.
_SAFE_INTERFACE = re.compile(r"[A-Za-z0-9_.@-]+")


def bridge_table(group: str) -> str:
    """
    The name of C{group}'s bridge table: C{clickpass_handoff_} and the group's
    name when that is letters, digits and C{_}; otherwise the name with every
    other character as C{_} and 8 hex digits of its SHA-256, so that no two
    groups share a table and nothing of a name reaches nft's parser.
    """
    safe = re.sub(r"[^A-Za-z0-9_]", "_", group)
    if safe != group or not group:
        safe += "_" + hashlib.sha256(group.encode("utf-8")).hexdigest()[:8]
    return BRIDGE_TABLE_PREFIX + safe


def bridge_ruleset(table: str, vip: str, to: str | None, interface: str) -> str:
    """
    Input for C{nft -f -} that replaces C{table} by a bridge of C{vip}'s
    unknown connections to C{to} out of C{interface}, or with C{to} None
    only removes it. Declaring the table before deleting it makes one
    transaction that works whether the table was there or not.

    A TCP packet to the VIP that is not a SYN and finds no connection in
    conntrack (C{ct state new}: picked up mid-stream, as the kernel's
    default C{nf_conntrack_tcp_loose=1} does) belongs to a connection this
    host did not see start; its connection is marked, and every packet of
    a marked connection is copied to the old holder's own address at
    layer 2 (C{dup}, so the destination stays the VIP) and dropped here.
    Connections started here (their SYN came here) are never touched.
    """
    lines = [f"table ip {table}", f"delete table ip {table}"]
    if to is not None:
        lines += [
            f"table ip {table} {{",
            "\tchain pre {",
            "\t\ttype filter hook prerouting priority -150; policy accept;",
            f"\t\tip daddr {vip} tcp flags & syn == 0 ct state new ct mark set 0x1",
            f'\t\tip daddr {vip} ct mark 0x1 dup to {to} device "{interface}" drop',
            "\t}",
            "}",
        ]
    return "\n".join(lines) + "\n"


class HandoffBridge:
    """
    The new holder's half of a planned move: for its drain, the packets to
    the VIP of TCP connections this host did not see start (their handshake
    was done by the old holder just before the ARP change) go on to the old
    holder, which still has the VIP (parked on C{lo}) and the connection's
    socket, and answers the client itself. Without it this host's kernel,
    which knows no such connection, answers RST: "Connection reset by peer".

    One nftables table per group (L{bridge_table}), loaded and removed as a
    whole by C{nft -f -} through the runner (L{bridge_ruleset}). A move never
    waits for it nor fails because of it: when nft is missing or refuses,
    one warning is logged, every failure is counted, and moves go on without
    the bridge. Removing is idempotent, and the first removal (the group
    releases its VIP at start) also clears a table a previous run left.
    """

    log = Logger()

    def __init__(self, settings: ClusterGroupSettings, runner: CommandRunner) -> None:
        self.settings = settings
        self.runner = runner
        self.table = bridge_table(settings.name)
        iface = ipaddress.ip_interface(settings.vip)
        self.vip = str(iface.ip)
        self.network = iface.network
        self.counters: Counter[str] = Counter()
        # The old holder we bridge to, once nft has loaded the table.
        self.bridged_to: str | None = None
        # Whether this process knows the table is absent (not at start: a
        # previous run may have left it).
        self._absent = False
        self._warned = False
        self._serial = Serial()

    def install(self, to: str) -> None:
        """Bridge the VIP's connections not started here to C{to} (the old holder's address)."""
        refusal = self._refusal(to)
        if refusal is not None:
            self.counters["bridge_skipped"] += 1
            self._warn_once(refusal)
            return
        self._absent = False
        self._serial(lambda: Deferred.fromCoroutine(self._load(to)))

    def remove(self) -> None:
        """End the bridge (nothing is run when this process knows there is none)."""
        if self._absent:
            return
        self._absent = True
        self._serial(lambda: Deferred.fromCoroutine(self._load(None)))

    def _refusal(self, to: str) -> str | None:
        """Why the bridge cannot be built to C{to}, or None."""
        try:
            address = ipaddress.ip_address(to)
        except ValueError:
            return f"the old holder's address {to!r} is not an IP address"
        if address.version != 4 or address not in self.network:
            # dup sends on the VIP's link: an address elsewhere is not there.
            return f"the old holder's address {to} is not in the VIP's network {self.network}"
        if not _SAFE_INTERFACE.fullmatch(self.settings.interface):
            return f"the interface name {self.settings.interface!r} is not one nft is given"
        return None

    async def _load(self, to: str | None) -> None:
        ruleset = bridge_ruleset(self.table, self.vip, to, self.settings.interface)
        result = await self.runner.run([NFT, "-f", "-"], NFT_TIMEOUT, stdin=ruleset.encode())
        error = "timed out" if result.timed_out else (result.output or f"exit {result.code}")
        if to is not None:
            if result.ok:
                self.bridged_to = to
                self.counters["bridged"] += 1
                self.log.info(
                    "VIP {vip}: connections not started here are bridged to {to} (table {table})",
                    vip=self.vip,
                    to=to,
                    table=self.table,
                )
            else:
                self.counters["bridge_failed"] += 1
                self._warn_once(f"nft could not load table {self.table}: {error}")
            return
        if result.ok:
            if self.bridged_to is not None:
                self.counters["unbridged"] += 1
                self.log.info("VIP {vip}: bridge to {to} ended", vip=self.vip, to=self.bridged_to)
            self.bridged_to = None
            return
        self._absent = False
        self.counters["unbridge_failed"] += 1
        if self.bridged_to is None:
            if self.settings.vip_bridge:
                # With the bridge off, the removal at start (of a table an
                # earlier run may have left) is the only use of nft: a host
                # without it is no news then.
                self._warn_once(f"nft could not remove table {self.table}: {error}")
            return
        # A bridge left in place would send these packets to an address
        # that soon drops them: say so every time, and try again next time.
        self.log.error(
            "VIP {vip}: cannot end the bridge to {to}: nft could not remove table {table}: {error}",
            vip=self.vip,
            to=self.bridged_to,
            table=self.table,
            error=error,
        )

    def _warn_once(self, why: str) -> None:
        if self._warned:
            return
        self._warned = True
        self.log.warn(
            "cluster group {group}: planned moves of VIP {vip} go on without a bridge for"
            " connections in flight ({why}); such a connection may be reset (needs nftables"
            " and CAP_NET_ADMIN; vip_bridge = false turns the bridge off)",
            group=self.settings.name,
            vip=self.vip,
            why=why,
        )

    def idle(self) -> Deferred[object]:
        """Fires when every queued change of the table has run."""
        return self._serial(lambda: None)


class VipManager:
    """
    The VIP of one group on this host, held as a lease: added with valid and
    preferred lifetimes on take and on every renewal, so the kernel drops the
    address by itself if this process stops renewing.

    A planned move (L{hand_off}: a switchover, or a peer taking its VIP
    back) keeps the address on C{lo} for C{vip_drain} seconds: the kernel
    sends only from an address the host has, so without it a request in
    flight here would never get its answer out.
    """

    log = Logger()

    def __init__(
        self,
        settings: ClusterGroupSettings,
        addresses: Addresses,
        clock: Any,
        garp: GarpSender | None = None,
        parking: Addresses | None = None,
        sysctl: Callable[[str], int | None] = read_sysctl,
        bridge: HandoffBridge | None = None,
    ) -> None:
        self.settings = settings
        self.addresses = addresses
        self.clock = clock
        iface = ipaddress.ip_interface(settings.vip)
        self.garp = garp
        if garp is None and iface.version == 4:
            self.garp = GarpSender(settings.interface, str(iface.ip))
        # The address as a host address on lo, for hand_off (IPv4 only: ARP's
        # sysctls say whether this host would still claim it; IPv6 has none).
        self.parking = parking if iface.version == 4 else None
        # The new holder's side of a planned move (IPv4 only, as the parking is).
        self.handoff_bridge = bridge if iface.version == 4 else None
        self.sysctl = sysctl
        self.counters: Counter[str] = Counter()
        self.held = False
        self.parked = False
        self._unpark: IDelayedCall | None = None
        self._warned_arp = False
        self._serial = Serial()
        self._renewing = False
        self._burst: list[IDelayedCall] = []

    async def _add(self, what: str) -> bool:
        result = await self.addresses.replace(self.settings.lease)
        if not result.ok:
            self.counters[f"{what}_failed"] += 1
            self.log.error(
                "cannot {what} VIP {vip} on {interface}: {error}",
                what=what,
                vip=self.settings.vip,
                interface=self.settings.interface,
                error=result.output or ("timed out" if result.timed_out else f"exit {result.code}"),
            )
            return False
        self.counters[what] += 1
        return True

    def take(self, up: Callable[[], None] = lambda: None) -> None:
        self.held = True

        async def step() -> None:
            if await self._add("take"):
                self.log.info(
                    "VIP {vip} taken on {interface}",
                    vip=self.settings.vip,
                    interface=self.settings.interface,
                )
                # ARP goes out only once the address answers, or clients
                # would send their next SYN into a void.
                self.announce()
                if self.held:
                    up()
                if self.parked:  # ours again before the drain ended
                    await self._remove_parked()

        self._cancel_unpark()
        self._serial(lambda: Deferred.fromCoroutine(step()))

    def renew(self) -> None:
        if self._renewing or not self.held:
            return
        self._renewing = True

        async def step() -> None:
            try:
                if self.held:
                    await self._add("renew")
            finally:
                self._renewing = False

        self._serial(lambda: Deferred.fromCoroutine(step()))

    def release(self) -> None:
        was_held, self.held = self.held, False
        self._cancel_burst()
        self._serial(lambda: Deferred.fromCoroutine(self._delete(was_held)))

    def hand_off(self) -> None:
        """
        Release the address to a peer that now holds it (it claimed MASTER
        once the address answered there and its ARP burst started), letting
        the connections in flight here finish: the address moves to C{lo}
        as a host address for C{vip_drain} seconds (with that lease, so the
        kernel drops it even if this process dies), then goes. The kernel
        can then still send from it, while ARP on the interface no longer
        names this host for it (see L{arp_quiet}: without those settings,
        or with C{vip_drain} 0, it is released at once).
        """
        if not self.held or self.parking is None or self.settings.vip_drain <= 0:
            self.release()
            return
        if not arp_quiet(self.settings.interface, self.sysctl):
            self.counters["hand_off_unparked"] += 1
            if not self._warned_arp:
                self._warned_arp = True
                self.log.warn(
                    "VIP {vip} released at once, not kept on lo for connections in flight:"
                    " {interface} would still answer ARP for it (set net.ipv4.conf.{interface}"
                    ".arp_ignore=1 and .arp_announce=2)",
                    vip=self.settings.vip,
                    interface=self.settings.interface,
                )
            self.release()
            return
        self.held = False
        self._cancel_burst()
        self._cancel_unpark()
        self.parked = True
        drain = self.settings.vip_drain
        parking = self.parking

        async def step() -> None:
            # On lo first, so there is no moment the host cannot send from it.
            result = await parking.replace(math.ceil(drain) + 1)
            if result.ok:
                self.counters["parked"] += 1
                self.log.info(
                    "VIP {vip} handed off; kept on lo for {seconds} s for connections in flight",
                    vip=self.settings.vip,
                    seconds=drain,
                )
            else:
                self.parked = False
                self.counters["park_failed"] += 1
                self.log.error(
                    "cannot keep VIP {vip} on lo: {error}",
                    vip=self.settings.vip,
                    error=result.output or f"exit {result.code}",
                )
            await self._delete(True)
            if self.parked and not self.held:
                self._unpark = self.clock.callLater(drain, self._drained)

        self._serial(lambda: Deferred.fromCoroutine(step()))

    def bridge(self, address: str) -> None:
        """
        Send the packets of the VIP's connections this host did not see start
        to the old holder at C{address} (L{HandoffBridge}); the take does not
        wait for it.
        """
        if self.handoff_bridge is not None:
            self.handoff_bridge.install(address)

    def unbridge(self) -> None:
        """End that bridge (idempotent)."""
        if self.handoff_bridge is not None:
            self.handoff_bridge.remove()

    def _drained(self) -> None:
        self._unpark = None
        if not self.held:
            self._serial(lambda: Deferred.fromCoroutine(self._remove_parked()))

    async def _remove_parked(self) -> None:
        if not self.parked or self.parking is None:
            return
        self.parked = False
        result = await self.parking.delete()
        if result.ok or any(t in result.output for t in _ABSENT):
            self.counters["unparked"] += 1
        else:
            # Its lease ends it anyway, a second after the drain.
            self.counters["unpark_failed"] += 1
            self.log.error(
                "cannot remove VIP {vip} from lo: {error}",
                vip=self.settings.vip,
                error=result.output or f"exit {result.code}",
            )

    def _cancel_unpark(self) -> None:
        if self._unpark is not None and self._unpark.active():
            self._unpark.cancel()
        self._unpark = None

    async def _delete(self, was_held: bool) -> None:
        """Remove the address from the interface (absent is no error)."""
        result = await self.addresses.delete()
        if result.ok:
            self.counters["release"] += 1
            self.log.info(
                "VIP {vip} released from {interface}",
                vip=self.settings.vip,
                interface=self.settings.interface,
            )
        elif any(t in result.output for t in _ABSENT) or (
            "Cannot find device" in result.output and not was_held
        ):
            self.counters["release_absent"] += 1  # idempotent: it was not there
        else:
            self.counters["release_failed"] += 1
            self.log.error(
                "cannot release VIP {vip} from {interface}: {error}",
                vip=self.settings.vip,
                interface=self.settings.interface,
                error=result.output or f"exit {result.code}",
            )

    def announce(self) -> None:
        """A burst of gratuitous ARP: one now, the rest spaced by garp_interval."""
        self._cancel_burst()
        if self.garp is None or not self.held or self.settings.garp_count < 1:
            return
        self.garp.send()
        for i in range(1, self.settings.garp_count):
            self._burst.append(
                self.clock.callLater(i * self.settings.garp_interval, self._burst_one)
            )

    def _burst_one(self) -> None:
        if self.held and self.garp is not None:
            self.garp.send()

    def refresh(self) -> None:
        if self.held and self.garp is not None:
            self.garp.send()

    def _cancel_burst(self) -> None:
        for call in self._burst:
            if call.active():
                call.cancel()
        self._burst = []

    def idle(self) -> Deferred[object]:
        """Fires when every queued address change (and bridge change) has run."""
        bridge = self.handoff_bridge
        if bridge is None:
            return self._serial(lambda: None)
        return self._serial(bridge.idle)

    def status_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        if self.garp is not None:
            counters.update(self.garp.counters)
        if self.handoff_bridge is not None:
            counters.update(self.handoff_bridge.counters)
        return counters

    def close(self) -> None:
        self._cancel_burst()
        self._cancel_unpark()  # a parked address goes with its lease
        if self.garp is not None:
            self.garp.close()
        for addresses in (self.addresses, self.parking):
            close = getattr(addresses, "close", None)
            if close is not None:
                close()


class HookRunner:
    """
    Runs the notify programs of a group on each state change, in order (one
    change's programs all finish before the next change's start), each with
    a timeout. A repeated state is not re-notified.
    """

    log = Logger()

    def __init__(self, programs: Sequence[str], timeout: float, runner: CommandRunner) -> None:
        self.programs = [shlex.split(p) for p in programs if p.strip()]
        self.timeout = timeout
        self.runner = runner
        self.counters: Counter[str] = Counter()
        self._serial = Serial()
        self._last: dict[str, State] = {}

    def notify(self, group: str, state: State) -> None:
        if self._last.get(group) == state or not self.programs:
            self._last[group] = state
            return
        self._last[group] = state
        for argv in self.programs:
            self._serial(self._step(argv, group, state))

    def _step(self, argv: list[str], group: str, state: State) -> Callable[[], Deferred[None]]:
        return lambda: Deferred.fromCoroutine(self._run(argv, group, state))

    async def _run(self, argv: list[str], group: str, state: State) -> None:
        result = await self.runner.run([*argv, group, state.name], self.timeout)
        if result.ok:
            self.counters["hooks_ok"] += 1
            return
        self.counters["hooks_failed"] += 1
        self.log.error(
            "notify hook {program} for group {group} {state} failed: {error}",
            program=argv[0],
            group=group,
            state=state.name,
            error="timed out" if result.timed_out else (result.output or f"exit {result.code}"),
        )

    def idle(self) -> Deferred[object]:
        return self._serial(lambda: None)


__all__ = [
    "Addresses",
    "CommandRunner",
    "GarpSender",
    "HandoffBridge",
    "HookRunner",
    "IpCommand",
    "NetlinkAddresses",
    "Result",
    "VipManager",
    "address_message",
    "arp_quiet",
    "bridge_ruleset",
    "bridge_table",
    "garp_frame",
    "parked_settings",
]

"""
The heartbeat's side effects on the host: the VIP (iproute2), gratuitous ARP
(an AF_PACKET socket) and notify hooks (programs run in order).

Every program runs through C{spawnProcess} with a timeout, and every
failure is logged and counted; nothing here blocks the reactor or raises
into the state machine. Actions are idempotent: taking a held address
renews it, releasing an absent one is not an error.

This module must never decide anything: it does what L{clickpass.cluster.group}
asks, in the order asked.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.cluster.wire import State
from clickpass.config import ClusterGroupSettings

IP = "ip"
MAX_OUTPUT = 4096
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# What iproute2 versions say when deleting an address that is not there.
_ABSENT = ("Cannot assign requested address", "Address not found")


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
        with contextlib.suppress(Exception):  # it may have just exited
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]

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

    def run(self, argv: Sequence[str], timeout: float) -> Deferred[Result]:
        done: Deferred[Result] = Deferred()
        protocol = _Collect(done, self._reactor, timeout)
        env = {"PATH": os.environ.get("PATH", _PATH), "LANG": "C"}
        try:
            self._reactor.spawnProcess(
                protocol,
                argv[0],
                list(argv),
                env=env,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except Exception as e:
            protocol._timer.cancel()
            return succeed(Result(None, f"cannot start {argv[0]}: {e}"))
        protocol.transport.closeStdin()  # type: ignore[union-attr]
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


class VipManager:
    """
    The VIP of one group on this host, held as a lease: C{ip addr replace
    ... valid_lft N preferred_lft N} on take and on every renewal, so the
    kernel drops the address by itself if this process stops renewing.
    """

    log = Logger()

    def __init__(
        self,
        settings: ClusterGroupSettings,
        runner: CommandRunner,
        clock: Any,
        garp: GarpSender | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.clock = clock
        iface = ipaddress.ip_interface(settings.vip)
        self.family = "-6" if iface.version == 6 else "-4"
        self.garp = garp
        if garp is None and iface.version == 4:
            self.garp = GarpSender(settings.interface, str(iface.ip))
        self.counters: Counter[str] = Counter()
        self.held = False
        self._serial = Serial()
        self._renewing = False
        self._burst: list[IDelayedCall] = []

    def _ip(self, *args: str) -> list[str]:
        return [IP, self.family, "addr", *args]

    def _add_command(self) -> list[str]:
        lease = str(self.settings.lease)
        return self._ip(
            "replace",
            self.settings.vip,
            "dev",
            self.settings.interface,
            "valid_lft",
            lease,
            "preferred_lft",
            lease,
        )

    async def _add(self, what: str) -> bool:
        result = await self.runner.run(self._add_command(), timeout=2.0)
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

        async def step() -> None:
            result = await self.runner.run(
                self._ip("del", self.settings.vip, "dev", self.settings.interface), timeout=2.0
            )
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

        self._serial(lambda: Deferred.fromCoroutine(step()))

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
        """Fires when every queued address change has run."""
        return self._serial(lambda: None)

    def status_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        if self.garp is not None:
            counters.update(self.garp.counters)
        return counters

    def close(self) -> None:
        self._cancel_burst()
        if self.garp is not None:
            self.garp.close()


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


__all__ = ["CommandRunner", "GarpSender", "HookRunner", "Result", "VipManager", "garp_frame"]

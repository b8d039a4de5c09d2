"""
A client that tells a gap from a cut connection, for the no-gap lab tests.

Run in the client's namespace, it opens a new connection to the VIP every
C{every} seconds, sends one GET and prints one line per attempt:
"STARTED FINISHED OUTCOME SYN_RETRANSMITS" (CLOCK_MONOTONIC, shared by every
namespace). OUTCOME is "ok", or where the attempt failed: "connect-..."
before the connection was up, "read-..." after.

Why not the lab's plain probe with a tight deadline: on a loaded machine a
probe that is not scheduled for half a second times out requests that were
answered, and a request in flight when the VIP moves (its connection is with
the old master; gratuitous ARP sends its next packets to the new one, which
resets them) fails even when the VIP never stopped answering. A gap, a moment
when nobody answers the VIP, shows differently and whatever the load: the
client's SYN is lost (dropped by a host without the address) and the kernel
retransmits it (TCP_INFO total_retrans after the handshake), or the connection
is refused or never made. That is what the tests count as a gap.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# struct tcp_info: 8 bytes of u8 fields, then u32s; tcpi_total_retrans is the 24th u32.
_TOTAL_RETRANS = 8 + 23 * 4


def syn_retransmits(sock: Any) -> int:
    """Segments this connection retransmitted so far (right after connect: its SYN)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("=I", info, _TOTAL_RETRANS)[0])


async def attempt(host: str, port: int, path: str, timeout: float) -> None:
    started = time.monotonic()
    phase, outcome, retransmits = "connect", "ok", 0
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            retransmits = syn_retransmits(writer.get_extra_info("socket"))
            phase = "read"
            writer.write(request)
            status = await reader.readline()
            if status.split(b" ")[1:2] != [b"200"]:
                outcome = "read-status"
            writer.close()
    except TimeoutError:
        outcome = f"{phase}-timeout"
    except OSError as e:
        outcome = f"{phase}-{os.strerror(e.errno).replace(' ', '_') if e.errno else 'error'}"
    print(f"{started:.6f} {time.monotonic():.6f} {outcome} {retransmits}", flush=True)


async def loop(host: str, port: int, path: str, every: float, timeout: float) -> None:
    tasks: set[asyncio.Task[None]] = set()
    while True:
        task = asyncio.ensure_future(attempt(host, port, path, timeout))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(every)


@dataclass(frozen=True)
class Attempt:
    started: float
    finished: float
    outcome: str
    syn_retransmits: int

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def gap(self) -> bool:
        """Nobody answered this new connection at once: a moment without the VIP."""
        return self.outcome.startswith("connect-") or self.syn_retransmits > 0

    @property
    def cut(self) -> bool:
        """Connected, then lost: a connection in flight while the VIP moved."""
        return not self.ok and not self.gap


class GapProbe:
    """The probe running in a lab's client namespace, and the attempts it made."""

    def __init__(
        self, lab: Any, url_host: str, port: int, every: float = 0.02, timeout: float = 3.0
    ) -> None:
        self.process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.ns("client"),
                sys.executable,
                str(Path(__file__)),
                url_host,
                str(port),
                "--every",
                str(every),
                "--timeout",
                str(timeout),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.attempts: list[Attempt] = []

    def stop(self) -> list[Attempt]:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4:
                self.attempts.append(
                    Attempt(float(parts[0]), float(parts[1]), parts[2], int(parts[3]))
                )
        self.attempts.sort(key=lambda a: a.started)
        return self.attempts

    def between(self, start: float, end: float) -> list[Attempt]:
        return [a for a in self.attempts if start <= a.started <= end]


class VipWatch:
    """
    The order in which the lab's hosts add and delete the VIP, as the kernel
    reports it: one C{ip monitor address all-nsid} in the lab's switch
    namespace, which has an id for every host's namespace, so events from
    all hosts arrive in one queue, in the order they happened, however late
    they are read. A gap is a moment when no host holds the address.

    Each event also keeps the wall-clock time the monitor saw it (C{ip -ts}),
    so that L{holders_over_time} tells how long two hosts held the address.
    """

    def __init__(self, lab: Any, vip: str) -> None:
        self.lab = lab
        self.vip = vip
        listing = subprocess.run(
            ["ip", "-n", lab.switch, "netns", "list-id"], capture_output=True, text=True, check=True
        ).stdout
        self.hosts: dict[str, str] = {
            str(nsid): str(name).removeprefix(lab.prefix)
            for nsid, name in re.findall(r"nsid (\d+) \(iproute2 netns name: (\S+)\)", listing)
        }
        self.process = subprocess.Popen(
            ["ip", "-ts", "-n", lab.switch, "monitor", "address", "all-nsid"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[tuple[str, str]] = []
        self.times: list[float] = []

    def stop(self) -> list[tuple[str, str]]:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        # On an interface of the network only: a VIP handed off and kept on
        # lo (interface index 1 in every namespace) for a drain is held by
        # nobody, as no ARP answer names it. The monitor prints the index.
        pattern = re.compile(
            rf"\[nsid (\d+)\](?:Deleted )?(?!1:)\d+:.*\binet6? {re.escape(self.vip)}/"
        )
        stamp = re.compile(r"^\[(\d{4}-\d\d-\d\dT[\d:.]+)\]")
        for line in out.splitlines():
            match = pattern.search(line)
            if match is None:
                continue
            nsid = str(match.group(1))
            host = self.hosts.get(nsid, nsid)
            self.events.append((host, "del" if "Deleted" in line else "add"))
            when = stamp.match(line)
            # ip prints local time; the lab's machines and CI run in UTC or local alike.
            self.times.append(
                datetime.datetime.fromisoformat(when.group(1)).timestamp() if when else 0.0
            )
        return self.events

    def holders_over_time(self, holders: list[str]) -> list[tuple[float, list[str]]]:
        """(wall-clock time, hosts holding the VIP) at each change, from C{holders}."""
        held = set(holders)
        changes: list[tuple[float, list[str]]] = []
        for (host, what), when in zip(self.events, self.times, strict=True):
            before = set(held)
            if what == "add":
                held.add(host)
            else:
                held.discard(host)
            if held != before:
                changes.append((when, sorted(held)))
        return changes

    def moments_without_holder(self, holders: list[str]) -> list[int]:
        """Indexes of the events after which nobody held the VIP (starting from C{holders})."""
        held = set(holders)
        empty = []
        for i, (host, what) in enumerate(self.events):
            if what == "add":
                held.add(host)
            else:
                held.discard(host)
                if not held:
                    empty.append(i)
        return empty


@dataclass(frozen=True)
class Holding:
    """How the VIP's holders changed after a fault (times in seconds from it)."""

    changes: list[tuple[float, list[str]]]
    single_after: float | None  # one holder from then on (None: not at the end)
    longest_shared: float  # the longest time two or more hosts held it at once

    @classmethod
    def after(cls, changes: list[tuple[float, list[str]]], fault_at: float) -> Holding:
        relative = [(round(t - fault_at, 3), h) for t, h in changes if t >= fault_at]
        single: float | None = None
        if changes and len(changes[-1][1]) == 1:
            single = max(0.0, relative[-1][0]) if relative else 0.0
        longest, since = 0.0, None
        for t, holders in relative:
            if len(holders) > 1 and since is None:
                since = t
            elif len(holders) <= 1 and since is not None:
                longest, since = max(longest, t - since), None
        if since is not None:
            longest = float("inf")
        return cls(relative, single, round(longest, 3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--every", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(loop(args.host, args.port, args.path, args.every, args.timeout))


if __name__ == "__main__":
    main()

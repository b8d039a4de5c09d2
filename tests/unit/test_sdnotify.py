"""
The systemd notify protocol against a real unix datagram socket (the test
binds it, as systemd would) and a fake clock for the watchdog's timer.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from twisted.internet.task import Clock

from clickpass.sdnotify import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0)
    try:
        yield str(path), sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_watchdog_and_stopping(notify_socket: tuple[str, socket.socket]) -> None:
    """
    WATCHDOG=1 at once and then every half WATCHDOG_USEC on the clock,
    READY=1 with a one-line status when told, STOPPING=1 on stop and no
    watchdog after it.
    """
    path, sock = notify_socket
    clock = Clock()
    notifier = SystemdNotifier.from_environment(
        clock, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}, pid=os.getpid()
    )
    notifier.startService()
    assert received(sock) == ["WATCHDOG=1"]
    clock.advance(4.9)
    assert received(sock) == []
    clock.advance(0.1)
    assert received(sock) == ["WATCHDOG=1"]
    notifier.ready("node app1\nserving http://x/")
    assert received(sock) == ["READY=1\nSTATUS=node app1 serving http://x/"]
    clock.pump([5.0] * 3)
    assert received(sock) == ["WATCHDOG=1"] * 3
    notifier.stopService()
    assert received(sock) == ["STOPPING=1"]
    clock.advance(60)
    assert received(sock) == []


def test_abstract_socket_address() -> None:
    """A NOTIFY_SOCKET starting with @ names a socket in the abstract namespace."""
    name = f"clickpass-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        notifier = SystemdNotifier(Clock(), "@" + name, None)
        notifier.startService()
        notifier.ready()
        assert sock.recv(100) == b"READY=1"
        notifier.stopService()
    finally:
        sock.close()


def test_watchdog_for_another_process_is_ignored(notify_socket: tuple[str, socket.socket]) -> None:
    """WATCHDOG_PID naming another process: no watchdog here (READY still goes)."""
    path, sock = notify_socket
    clock = Clock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    notifier = SystemdNotifier.from_environment(clock, env, pid=os.getpid())
    notifier.startService()
    clock.advance(10)
    notifier.ready()
    assert received(sock) == ["READY=1"]
    notifier.stopService()


def test_no_systemd_does_nothing() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing is scheduled."""
    clock = Clock()
    notifier = SystemdNotifier.from_environment(clock, {"WATCHDOG_USEC": "1000000"}, pid=1)
    notifier.startService()
    assert not notifier.enabled and clock.getDelayedCalls() == []
    assert notifier.notify("READY=1") is False
    notifier.stopService()


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    """A socket that does not exist: notify returns False, the watchdog keeps running."""
    clock = Clock()
    notifier = SystemdNotifier(clock, str(tmp_path / "gone"), 2.0)
    notifier.startService()
    clock.advance(5)
    assert notifier.notify("READY=1") is False
    assert len(clock.getDelayedCalls()) == 1
    notifier.stopService()

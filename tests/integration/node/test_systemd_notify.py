"""
A real node under systemd's notify protocol: the test binds the unix
datagram socket systemd would (NOTIFY_SOCKET) and asks for a watchdog
(WATCHDOG_USEC), starts a real node, and reads what it sends.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import NodeProcess, free_port, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield path, sock
    finally:
        sock.close()


def messages_for(sock: socket.socket, seconds: float) -> list[str]:
    """Every message received within C{seconds}."""
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            found.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return found


def wait_for(sock: socket.socket, prefix: str, seconds: float) -> list[str]:
    """Messages up to and including the first starting with C{prefix}."""
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        found.append(message)
        if message.startswith(prefix):
            return found
    raise AssertionError(f"no {prefix!r} within {seconds}s; received {found}")


def test_node_notifies_ready_feeds_the_watchdog_and_says_stopping(
    tmp_path: Path, notify_socket: tuple[Path, socket.socket]
) -> None:
    """
    READY=1 arrives once the node serves (its page answers, its log says
    ready); WATCHDOG=1 comes about every half WATCHDOG_USEC and stops while
    the process is frozen; STOPPING=1 comes on SIGTERM.
    """
    path, sock = notify_socket
    port = free_port()
    node = NodeProcess(
        tmp_path,
        write_config(tmp_path, port),
        env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"},
        port=port,
    )
    node.start(wait_for="starting")
    try:
        before_ready = wait_for(sock, "READY=1", 60)
        assert "ready: serving" in node.log()
        with urllib.request.urlopen(node.url, timeout=10) as answer:
            assert answer.status == 200
        assert before_ready[-1].startswith("READY=1\nSTATUS=node node1 serving")
        assert set(before_ready[:-1]) <= {"WATCHDOG=1"}

        fed = messages_for(sock, 3.5)
        assert fed.count("WATCHDOG=1") >= 3, fed

        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)
        try:
            frozen = messages_for(sock, 2.5)
        finally:
            node.process.send_signal(signal.SIGCONT)
        assert frozen == []
        assert "WATCHDOG=1" in wait_for(sock, "WATCHDOG=1", 5)

        help_text = node.ctl("help", "--node").stdout
        assert "the node's control-protocol commands:" in help_text

        node.process.send_signal(signal.SIGTERM)
        assert wait_for(sock, "STOPPING=1", 30)[-1] == "STOPPING=1"
    finally:
        node.stop()

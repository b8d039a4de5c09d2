"""
The front's defences against hostile clients, each through a real node
(C{twistd -n clickpass}, real workers, real sockets): slow request bodies,
forged client addresses, redirect targets a worker would send malformed,
/metrics on the public listener, malformed request heads, and HSTS.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.balancer.conftest import Node

pytestmark = pytest.mark.integration


def read_answer(s: socket.socket, timeout: float) -> bytes:
    """What the server sends on C{s} until it closes (or C{timeout} passes)."""
    s.settimeout(timeout)
    chunks = []
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        chunks.append(b"<timeout>")
    except ConnectionResetError:
        chunks.append(b"<reset>")
    return b"".join(chunks)


def test_slow_request_bodies_take_no_worker_slot_and_get_no_worker_replaced(start_node):
    """
    40 clients that send a Content-Length of 100 and 7 bytes of body hold
    only connections to the front: a normal client's requests are answered
    promptly meanwhile, past the request timeout the worker is still the
    same process (nothing was counted against it), and each slow client
    gets a 408 at body_timeout.
    """
    body_timeout = 4.0
    node: Node = start_node(
        workers=1,
        balancer=(
            f"body_timeout = {body_timeout}\nrequest_timeout = 3.0\n"
            "queue_timeout = 2.0\nsweep_interval = 0.2\n"
        ),
    )
    (before,) = node.ready_workers()
    slow = []
    try:
        sent = time.monotonic()
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
            s.sendall(b"POST /signin HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n1234567")
            slow.append(s)
        worst = 0.0
        # Past request_timeout: a slow body counted against the worker would
        # have run out its timeout (504, and the worker replaced).
        while time.monotonic() - sent < 3.5:
            started = time.monotonic()
            answer = node.get("/", timeout=10)
            worst = max(worst, time.monotonic() - started)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            time.sleep(0.3)
        assert worst < 1.5, worst
        for s in slow:
            answer = read_answer(s, timeout=10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert time.monotonic() - sent > body_timeout - 0.5
    finally:
        for s in slow:
            s.close()
    (after,) = node.ready_workers()
    assert (after["id"], after["pid"], after["restarts"]) == (
        before["id"],
        before["pid"],
        before["restarts"],
    )
    log = node.log.read_text()
    assert "did not answer" not in log
    assert node.get("/").startswith(b"HTTP/1.1 200 ")
    # A body that does arrive whole still reaches the worker.
    posted = node.request(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    assert posted.startswith(b"HTTP/1.1 200 ") and posted.endswith(b"got 5 bytes: hello"), posted

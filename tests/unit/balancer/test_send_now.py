"""
The front's direct socket write (L{send_now}): bytes go straight to the
socket only when nothing is queued on the transport; whatever the socket
does not take, and every error, goes through Twisted's own write().
"""

from __future__ import annotations

import pytest

from twisted.internet import tcp
from twisted.internet.testing import StringTransport

from clickpass.balancer.twisted_internals import send_now
from tests.unit.balancer.test_proxy import OK, Rig


class FakeSocket:
    def __init__(self, takes: int | None = None, error: OSError | None = None) -> None:
        self.takes = takes
        self.error = error
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        n = len(data) if self.takes is None else min(self.takes, len(data))
        self.sent.append(data[:n])
        return n


def connection(sock: FakeSocket) -> tuple[tcp.Connection, list[bytes]]:
    """A tcp.Connection shell whose write() records what Twisted would queue."""
    conn = tcp.Connection.__new__(tcp.Connection)
    conn.connected = 1
    conn.disconnecting = False
    conn._writeDisconnected = False
    conn.dataBuffer = b""
    conn._tempDataBuffer = []
    conn.socket = sock  # type: ignore[assignment]
    queued: list[bytes] = []
    conn.write = queued.append  # type: ignore[method-assign]
    return conn, queued


def test_everything_sent_at_once_queues_nothing() -> None:
    """With an empty buffer and a socket that takes it all, write() is never called."""
    sock = FakeSocket()
    conn, queued = connection(sock)
    send_now(conn, b"HTTP/1.1 200 OK\r\n\r\n")
    assert sock.sent == [b"HTTP/1.1 200 OK\r\n\r\n"] and queued == []


def test_the_rest_of_a_partial_send_is_queued() -> None:
    """What the socket did not take goes to write(), in order."""
    sock = FakeSocket(takes=4)
    conn, queued = connection(sock)
    send_now(conn, b"0123456789")
    assert sock.sent == [b"0123"] and queued == [b"456789"]


def test_queued_data_keeps_the_order() -> None:
    """When bytes are already queued, new bytes queue behind them (no direct send)."""
    sock = FakeSocket()
    conn, queued = connection(sock)
    conn._tempDataBuffer = [b"earlier"]
    send_now(conn, b"later")
    assert sock.sent == [] and queued == [b"later"]


@pytest.mark.parametrize("error", [BlockingIOError(), ConnectionResetError()])
def test_socket_errors_fall_back_to_write(error: OSError) -> None:
    """A full or broken socket: everything goes through write(), which handles it."""
    conn, queued = connection(FakeSocket(error=error))
    send_now(conn, b"data")
    assert queued == [b"data"]


def test_disconnecting_and_other_transports_use_write() -> None:
    """A closing connection, or a transport that is not a plain socket, uses write()."""
    sock = FakeSocket()
    conn, queued = connection(sock)
    conn.disconnecting = True
    send_now(conn, b"x")
    assert sock.sent == [] and queued == [b"x"]

    class Other:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

    other = Other()
    send_now(other, b"y")
    assert other.written == [b"y"]


def test_a_response_that_arrives_in_one_read_is_written_once() -> None:
    """A worker's response head and body from one read go to the client in one write."""

    class CountingTransport(StringTransport):
        writes = 0

        def write(self, data: bytes) -> None:
            self.writes += 1
            super().write(data)

    rig = Rig(workers=1)
    proto = rig.factory.buildProtocol(None)
    client = CountingTransport()
    proto.makeConnection(client)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream, _, _ = rig.accept_upstream()
    upstream.dataReceived(OK)
    assert client.value() == OK
    assert client.writes == 1

"""
Every place where the front relies on Twisted's private attributes, in one
module: a direct write on a connected socket (L{send_now}) and reads with
plain C{recv()} (L{read_directly}), the two shortcuts that took a third of
the front's CPU off its hot path (docs/balancer.md).

They rely on these names of Twisted's socket transports (L{PRIVATE_NAMES}):
C{tcp.Connection}'s C{TLS}, C{connected}, C{disconnecting},
C{_writeDisconnected}, C{dataBuffer}, C{_tempDataBuffer}, C{socket}, and
C{bufferSize} and C{doRead} (replaced per connection) on the concrete
classes C{tcp.Server} (clients) and C{unix.Client} (workers), with
C{twisted.internet.main}'s C{CONNECTION_LOST} and C{CONNECTION_DONE}.
C{setup.py} bounds Twisted's version from above, and
C{tests/unit/balancer/test_twisted_internals.py} fails, naming the
attribute, when a release renames or drops one of them: then this module is
the only one to change.

Nothing else in the front may touch a private attribute of Twisted's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import main, tcp, unix
from twisted.internet.protocol import Protocol

# Twisted's connected TCP server and UNIX client transports (typed loosely:
# we replace their doRead).
_TCP_SERVER: Any = tcp.Server
_UNIX_CLIENT: Any = unix.Client

# What this module reads or replaces on Twisted's transports, by class.
PRIVATE_NAMES: dict[type, tuple[str, ...]] = {
    tcp.Connection: (
        "TLS",
        "connected",
        "disconnecting",
        "_writeDisconnected",
        "dataBuffer",
        "_tempDataBuffer",
        "socket",
    ),
    tcp.Server: ("socket", "bufferSize", "doRead"),
    unix.Client: ("socket", "bufferSize", "doRead"),
}


def send_now(transport: Any, data: bytes) -> None:
    """
    C{transport.write(data)}, but sent on the socket at once when nothing is
    queued on it. Twisted's write() queues the bytes and waits for the next
    reactor turn to say the socket is writable (two epoll_ctl calls and one
    more wakeup per write); on the front's hot path that was a third of its
    CPU. What the socket does not take at once, and every transport that is
    not a plain TCP or UNIX socket (TLS), goes through write() as usual, so
    ordering, backpressure and error handling stay Twisted's.
    """
    if (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted find the error on its own path and close properly.
            transport.write(data)
            return
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def read_directly(transport: Any, protocol: Protocol) -> None:
    """
    Have C{transport} read with L{read_with_recv} when it is a plain
    connected socket (a client's TCP connection, or a connection to a
    worker); leave any other transport (TLS, tests' fakes) as it is.
    """
    if transport.__class__ is _TCP_SERVER or transport.__class__ is _UNIX_CLIENT:
        transport.doRead = read_with_recv(transport, protocol)


def read_with_recv(transport: Any, protocol: Protocol) -> Callable[[], object]:
    """
    A doRead for a connected plain socket transport (TCP from clients, UNIX
    to workers) that reads with recv() and hands the bytes straight to the
    protocol. Twisted's UNIX transports read with recvmsg() and an
    ancillary buffer in case file descriptors are passed; workers never pass
    any, and that path cost the front a few microseconds on every response.
    Twisted's own abortConnection() and connection loss still replace it as
    usual; an empty read is the peer closing, as in Twisted's.
    """
    recv = transport.socket.recv
    size = transport.bufferSize
    received = protocol.dataReceived

    def doRead() -> object:
        try:
            data = recv(size)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        received(data)
        return None

    return doRead


__all__ = ["PRIVATE_NAMES", "read_directly", "read_with_recv", "send_now"]

"""
The private attributes of Twisted's transports that the front relies on
(L{clickpass.balancer.twisted_internals}), checked on real connections made
by the installed Twisted: a release that renames or drops one fails here,
naming it, before the front silently loses its fast paths (or breaks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

import twisted
from twisted.internet import main, tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol

from clickpass.balancer.twisted_internals import PRIVATE_NAMES, read_directly, send_now
from tests.conftest import global_reactor

UPDATE = (
    "Twisted {version} changed what clickpass/balancer/twisted_internals.py relies on: "
    "{what}. Update that module (and the upper bound on Twisted in setup.py)."
)


class Recorder(Protocol):
    """Keeps what it receives; fires C{made} with itself when connected."""

    def __init__(self) -> None:
        self.made: Deferred[Recorder] = Deferred()
        self.received: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.received.called:
            self.received.callback(data)


class OneProtocol(Factory):
    def __init__(self) -> None:
        self.protocol_made = Recorder()

    def buildProtocol(self, addr: object) -> Recorder:
        return self.protocol_made


def assert_has_private_names(transport: Any) -> None:
    for cls, names in PRIVATE_NAMES.items():
        if not isinstance(transport, cls):
            continue
        for name in names:
            assert hasattr(transport, name), UPDATE.format(
                version=twisted.__version__, what=f"{cls.__module__}.{cls.__name__}.{name} is gone"
            )


async def connected_pair(server_endpoint: Any, client_endpoint: Any) -> tuple[Any, Any, Any]:
    """A real connection: (listening port, server-side protocol, client-side protocol)."""
    server_factory = OneProtocol()
    port = await server_endpoint.listen(server_factory)
    client = Recorder()
    await client_endpoint.connect(Factory.forProtocol(lambda: client))
    await client.made
    server = await server_factory.protocol_made.made
    return port, server, client


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_client_tcp_connection_has_what_the_front_relies_on() -> None:
    """
    A client's connection to a TCP listener is a C{tcp.Server} with every
    attribute the front reads; C{send_now} sends on its socket at once, and
    the C{recv()} reader delivers what the client sends.
    """
    reactor = global_reactor()
    port, server, client = await _tcp_pair(reactor)
    try:
        transport = server.transport
        assert type(transport) is tcp.Server, UPDATE.format(
            version=twisted.__version__, what=f"a TCP connection is a {type(transport)}"
        )
        assert_has_private_names(transport)
        assert transport.dataBuffer == b"" and transport._tempDataBuffer == []
        send_now(transport, b"to the client")
        # Sent on the socket, nothing left queued for Twisted's writer.
        assert transport.dataBuffer == b"" and transport._tempDataBuffer == []
        assert await client.received == b"to the client"
        read_directly(transport, server)
        assert transport.doRead.__qualname__ == "read_with_recv.<locals>.doRead"
        client.transport.write(b"to the front")
        assert await server.received == b"to the front"
    finally:
        client.transport.loseConnection()
        server.transport.loseConnection()
        await port.stopListening()


async def _tcp_pair(reactor: Any) -> tuple[Any, Any, Any]:
    server_factory = OneProtocol()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server_factory)
    client = Recorder()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    await client.made
    server = await server_factory.protocol_made.made
    return port, server, client


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_worker_unix_connection_has_what_the_front_relies_on(tmp_path: Path) -> None:
    """
    The front's connection to a worker's unix socket is a C{unix.Client}
    with every attribute the front reads, and the C{recv()} reader takes
    the place of Twisted's.
    """
    reactor = global_reactor()
    path = str(tmp_path / "w.sock")
    port, worker, front = await connected_pair(
        UNIXServerEndpoint(reactor, path), UNIXClientEndpoint(reactor, path)
    )
    try:
        transport = front.transport
        assert type(transport) is unix.Client, UPDATE.format(
            version=twisted.__version__, what=f"a UNIX client connection is a {type(transport)}"
        )
        assert_has_private_names(transport)
        read_directly(transport, front)
        assert transport.doRead.__qualname__ == "read_with_recv.<locals>.doRead"
        worker.transport.write(b"HTTP/1.1 200 OK\r\n")
        assert await front.received == b"HTTP/1.1 200 OK\r\n"
        send_now(transport, b"GET / HTTP/1.1\r\n")
        assert await worker.received == b"GET / HTTP/1.1\r\n"
    finally:
        front.transport.loseConnection()
        worker.transport.loseConnection()
        await port.stopListening()


def test_the_reader_answers_with_twisteds_connection_states() -> None:
    """What the C{recv()} reader returns on a close or an error is what Twisted expects."""
    for name in ("CONNECTION_LOST", "CONNECTION_DONE"):
        assert hasattr(main, name), UPDATE.format(
            version=twisted.__version__, what=f"twisted.internet.main.{name} is gone"
        )

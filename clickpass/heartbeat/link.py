"""
The process link: one TCP connection from this heartbeat process to each
peer's, authenticated both ways with the heartbeat key, whose only job is to
be closed by the peer's kernel when the peer's heartbeat process dies.

A crash of the whole node (kill -9 of the node and its heartbeat process)
while its host stays up is otherwise seen only as missed adverts: 3
intervals plus skew after the last one. The dead process cannot resign, but
its kernel closes its sockets, so the far end of this link sees a FIN or a
reset within a round trip. An authenticated outgoing link to a peer that
closes is reported to the engine as "that peer's heartbeat process is gone",
which a group treats like a resign (RFC 5798: priority 0 -> Skew_Time) if
that peer is its master. A partition, a frozen process or a powered-off host
close nothing, so they still take the full down interval; a lost packet
cannot close a TCP connection, so the 3-advert tolerance to loss is kept.

Each side sends a random nonce and answers the other's with
HMAC-SHA256(key, label | nonce | node), so a connection is tied to a live
holder of the key (no replay: the nonce is fresh). Nothing else is sent.

This module must never decide a takeover (it only reports which peer's
process went away), never close an authenticated connection except when it
stops or the peer restarted (a new epoch in its adverts: our old
connection may be half-open on a rebooted host), and never take the
heartbeat down: a port it cannot listen on or a
peer it cannot reach only leaves the adverts to do the work.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ClientFactory, Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

HELLO = b"CPLINK1"
AUTH = b"AUTH"
NONCE_SIZE = 16
AUTH_TIMEOUT = 3.0
RETRY_DELAY = 0.5
CONNECT_TIMEOUT = 1.0
_LABEL = b"clickpass process link v1|"


def proof(key: bytes, nonce: bytes, node: str) -> str:
    """What C{node} answers to C{nonce}."""
    return hmac.new(key, _LABEL + nonce + b"|" + node.encode("utf-8"), hashlib.sha256).hexdigest()


class LinkProtocol(LineReceiver):
    """One end of a link: challenge, answer, then silence until it closes."""

    delimiter = b"\n"
    MAX_LENGTH = 256

    def __init__(self, link: ProcessLink, outgoing: bool) -> None:
        self.link = link
        self.outgoing = outgoing
        self.peer: str | None = None
        self.nonce = os.urandom(NONCE_SIZE)
        self._answered = False
        self.superseded = False
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.link.connections.add(self)
        self._timeout = self.link.clock.callLater(AUTH_TIMEOUT, self._refuse, "auth_timeout")
        self.sendLine(HELLO + b" " + self.nonce.hex().encode("ascii"))

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            return  # authenticated: nothing more is expected, nothing is read
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        parts = line.split(b" ", 2)
        try:
            if parts[0] == HELLO and len(parts) == 2 and not self._answered:
                nonce = bytes.fromhex(parts[1].decode("ascii"))
                if len(nonce) != NONCE_SIZE:
                    raise ValueError("nonce size")
                self._answered = True
                answer = proof(self.link.key, nonce, self.link.node_id)
                self.sendLine(b" ".join([AUTH, answer.encode(), self.link.node_id.encode()]))
                return
            if parts[0] == AUTH and len(parts) == 3:
                node = parts[2].decode("utf-8")
                expected = proof(self.link.key, self.nonce, node).encode()
                if node != self.link.node_id and hmac.compare_digest(parts[1], expected):
                    self._authenticated(node)
                    return
                self._refuse("bad_auth")
                return
        except (ValueError, UnicodeDecodeError):
            pass
        self._refuse("malformed")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse("oversized")

    def _authenticated(self, node: str) -> None:
        self.peer = node
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self.link.counters["authenticated"] += 1
        if self.outgoing:
            self.link.log.info("cluster: process link to {peer} up", peer=node)

    def _refuse(self, why: str) -> None:
        if self.peer is not None:
            return
        self.link.counters[why] += 1
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.link.connections.discard(self)
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        if self.outgoing and self.peer is not None and not (self.link.stopping or self.superseded):
            self.link.peer_gone(self.peer)


class _Outgoing(ClientFactory):
    noisy = False

    def __init__(self, link: ProcessLink, address: tuple[str, int]) -> None:
        self.link = link
        self.address = address

    def buildProtocol(self, addr: Any) -> LinkProtocol:
        protocol = LinkProtocol(self.link, outgoing=True)
        protocol.factory = self
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.link.retry(self.address)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.link.retry(self.address)


class _Incoming(Factory):
    noisy = False

    def __init__(self, link: ProcessLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> LinkProtocol:
        protocol = LinkProtocol(self.link, outgoing=False)
        protocol.factory = self
        return protocol


class ProcessLink:
    """
    Listens on the heartbeat's TCP port and keeps a link to every peer;
    calls C{on_gone(node)} when an authenticated link to a peer is closed
    by the far end.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        key: bytes,
        node_id: str,
        bind: str,
        port: int,
        peers: Sequence[tuple[str, int]],
        on_gone: Callable[[str], None],
    ) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.key = key
        self.node_id = node_id
        self.bind = bind
        self.port = port
        self.peers = list(dict.fromkeys(peers))
        self.on_gone = on_gone
        self.counters: Counter[str] = Counter()
        self.connections: set[LinkProtocol] = set()
        self.stopping = False
        self._listening: IListeningPort | None = None
        self._retries: dict[tuple[str, int], IDelayedCall] = {}

    def start(self) -> None:
        try:
            self._listening = self.reactor.listenTCP(
                self.port, _Incoming(self), interface=self.bind
            )
        except Exception as e:
            self.counters["listen_failed"] += 1
            self.log.error(
                "cluster: no process link (tcp {bind}:{port}: {error}); adverts only",
                bind=self.bind,
                port=self.port,
                error=str(e),
            )
        for address in self.peers:
            self._connect(address)

    def _connect(self, address: tuple[str, int]) -> None:
        self._retries.pop(address, None)
        if self.stopping:
            return
        self.reactor.connectTCP(
            address[0],
            address[1],
            _Outgoing(self, address),
            timeout=CONNECT_TIMEOUT,
            bindAddress=(self.bind, 0),
        )

    def retry(self, address: tuple[str, int]) -> None:
        if self.stopping or address in self._retries:
            return
        self._retries[address] = self.clock.callLater(RETRY_DELAY, self._connect, address)

    def peer_gone(self, node: str) -> None:
        self.counters["peer_gone"] += 1
        self.log.warn("cluster: {peer}'s heartbeat process closed its link (it is gone)", peer=node)
        try:
            self.on_gone(node)
        except Exception:
            self.log.failure("cluster: handling {peer}'s link closing failed", peer=node)

    def peer_restarted(self, node: str) -> None:
        """
        C{node} advertises a new epoch: it restarted, maybe with its host,
        whose new kernel knows nothing of our old connection and would never
        close it. Replace our link to it (closing it ourselves reports nothing).
        """
        for protocol in list(self.connections):
            if protocol.outgoing and protocol.peer == node and protocol.transport is not None:
                protocol.superseded = True
                self.counters["superseded"] += 1
                protocol.transport.loseConnection()

    def stop(self) -> None:
        self.stopping = True
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        if self._listening is not None:
            self._listening.stopListening()
            self._listening = None


__all__ = ["LinkProtocol", "ProcessLink", "proof"]

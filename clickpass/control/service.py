"""
The control port as a service: a unix socket (mode 0600) and, optionally,
a loopback TCP port that requires a token of at least 32 bytes.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from clickpass import config as configmod
from clickpass.control.endpoint import ControlTCP, parse_control_tcp
from clickpass.control.protocol import CommandRegistry, ControlFactory


def tcp_endpoint(
    reactor: Any, where: ControlTCP
) -> endpoints.TCP4ServerEndpoint | endpoints.TCP6ServerEndpoint:
    """The server endpoint that listens on exactly the address C{where} says."""
    if where.kind == "tcp6":
        return endpoints.TCP6ServerEndpoint(reactor, where.port, where.backlog, where.interface)
    return endpoints.TCP4ServerEndpoint(reactor, where.port, where.backlog, where.interface)


class ControlService(Service):
    """Listens for clickpass-ctl."""

    log = Logger()

    def __init__(
        self, reactor: Any, settings: configmod.Settings, registry: CommandRegistry
    ) -> None:
        self.setName("control")
        self._reactor = reactor
        self._settings = settings
        self._registry = registry
        self._ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._listen())
        d.addErrback(lambda f: self.log.failure("control port failed to start", f))

    async def _listen(self) -> None:
        path = self._settings.control_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        escaped = str(path).replace(":", "\\:")
        # lockfile=1 lets a restarted node replace the socket a dead one left.
        unix = endpoints.serverFromString(self._reactor, f"unix:{escaped}:mode=600:lockfile=1")
        self._ports.append(await unix.listen(ControlFactory(self._registry)))
        os.chmod(path, 0o600)
        self.log.info("control port listening on {path}", path=str(path))
        tcp = self._settings.control.tcp
        if tcp:
            # Both were checked at start; read again here so that the port
            # listens on exactly the address that was checked (never a
            # second parse of the string) and never with a short token.
            token = configmod.control_token(self._settings)
            where = parse_control_tcp(tcp)
            self._ports.append(
                await tcp_endpoint(self._reactor, where).listen(
                    ControlFactory(self._registry, token)
                )
            )
            self.log.info(
                "control port listening on {interface} port {port} (token required)",
                interface=where.interface,
                port=where.port,
            )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ports, self._ports = self._ports, []
        return DeferredList([maybeDeferred(p.stopListening) for p in ports])

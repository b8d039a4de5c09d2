"""
Active health checks of the workers: C{GET [balancer] health_path} on a
fresh connection to a worker's socket, every C{health_interval}, and the
verdict told to the pool (L{probe} is its L{clickpass.balancer.pool.Probe}).

A check that times out while its worker goes on finishing proxied requests
is "busy", not a failure: a saturated worker stays in the pool. This module
must never block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime, IReactorUNIX
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

from clickpass.balancer.pool import Backend, Pool

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall


class HealthCheck(Protocol):
    """One active health check: GET the health path on a fresh connection."""

    transport: Any

    def __init__(self, pool: Pool, backend: Backend) -> None:
        self.pool = pool
        self.backend = backend
        self.buf = b""
        self.decided = False
        self.timer: IDelayedCall | None = None
        # Requests the worker had finished when the check started: one that
        # goes on finishing requests while its check waits is busy, not dead.
        self.served_at_start = backend.served

    @classmethod
    def run(cls, pool: Pool, backend: Backend) -> HealthCheck:
        check = cls(pool, backend)
        clock: IReactorTime = pool.reactor
        check.timer = clock.callLater(pool.settings.health_timeout, check.timed_out)
        reactor: IReactorUNIX = pool.reactor
        reactor.connectUNIX(
            backend.path, _HealthFactory(check), timeout=pool.settings.health_timeout
        )
        return check

    def connectionMade(self) -> None:
        path = self.pool.settings.health_path.encode("ascii")
        self.transport.write(
            b"GET " + path + b" HTTP/1.1\r\nHost: clickpass-front\r\nConnection: close\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= 12:
            status = self.buf[9:12]
            self.decide(status == b"200", "status " + status.decode("latin-1"))
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.decide(False, "connection closed without an answer")

    def timed_out(self) -> None:
        self.timer = None
        if self.backend.served > self.served_at_start:
            self.decided = True
            self.pool.health_busy(self.backend)
        else:
            self.decide(False, "no answer in time")
        if self.transport is not None:
            self.transport.abortConnection()

    def decide(self, ok: bool, why: str) -> None:
        if self.decided:
            return
        self.decided = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.pool.health_result(self.backend, ok, why)


class _HealthFactory(ClientFactory):
    noisy = False

    def __init__(self, check: HealthCheck) -> None:
        self.check = check

    def buildProtocol(self, addr: object) -> HealthCheck:
        return self.check

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.check.decide(False, "connect failed")


def probe(pool: Pool, backend: Backend) -> None:
    """Start one active health check of C{backend} (the pool's L{Probe})."""
    HealthCheck.run(pool, backend)


__all__ = ["HealthCheck", "probe"]

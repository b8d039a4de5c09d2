"""
The balancer: which worker gets the next request, and the keep-alive
connections the front holds to each worker.

Each request goes to the routable worker with the fewest requests in
flight, up to a per-worker cap; when every worker is at its cap the request
waits in a bounded FIFO queue and gets a 503 with Retry-After when the wait
times out. A worker that refuses or resets connections is ejected for a
while (passive ejection) and probed by active health checks. A request is
moved to another worker only when it never reached one.

This module never parses HTTP (that is the front's client side and its
worker connections) and never starts or stops processes (that is the
supervisor): it is told which workers exist and tells its L{PoolEvents}
what it notices. It is given how to dial a worker (L{Dial}) and how to
probe one (L{Probe}); what it needs of a request and of a connection to a
worker are the Protocols L{Dispatch} and L{WorkerLink}, so that it imports
none of the modules that use it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.balancer.settings import BalancerSettings
from clickpass.balancer.stats import Counters

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class Dispatch(Protocol):
    """What the pool needs of a request it routes (the front's exchange)."""

    backend: Backend | None
    dispatched: float
    queued_at: float
    attempts: int
    abandoned: bool
    response_started: bool
    method: bytes

    def path_for_log(self) -> str:
        """The request's path, for a log line."""

    def fail(self, status: int, kind: str, retry_after: int | None = None) -> None:
        """Answer with an error of the front's (no worker answered)."""

    def time_out(self) -> None:
        """The worker did not answer in time."""


class WorkerLink(Protocol):
    """What the pool needs of one connection to a worker."""

    backend: Backend
    # Set while the connection is open (Twisted's Protocol.transport).
    transport: Any

    def attach(self, exchange: Any) -> None:
        """
        Carry C{exchange} (a L{Dispatch}; typed loosely so that the link's
        own class can name its concrete exchange) to the worker.
        """

    def close(self) -> None:
        """Close once what is queued is sent."""

    def abort(self) -> None:
        """Close at once."""


# Starts connecting to a worker's socket: the link reports back with
# Pool.connected or Pool.connect_failed.
Dial = Callable[["Pool", "Backend"], WorkerLink]
# Starts one active health check of a worker: it reports back with
# Pool.health_result or Pool.health_busy.
Probe = Callable[["Pool", "Backend"], object]


class PoolEvents:
    """What the pool tells its owner (the supervisor). Defaults do nothing."""

    def idle(self, backend: Backend) -> None:
        """A draining worker has no request in flight any more."""

    def served(self, backend: Backend) -> None:
        """
        A worker finished a request (for max-requests recycling): told only
        once it has served L{Pool.served_from} requests, and never when that
        is 0.
        """

    def stuck(self, backend: Backend) -> None:
        """A worker did not answer a request within the request timeout."""

    def unhealthy(self, backend: Backend) -> None:
        """A worker failed its health checks too many times in a row."""


class Backend:
    """The pool's view of one worker process: its socket and its load."""

    __slots__ = (
        "connecting",
        "counters",
        "draining",
        "ejected_until",
        "health_failures",
        "id",
        "idle",
        "in_flight",
        "open_connections",
        "path",
        "served",
    )

    def __init__(self, id: str, path: str) -> None:
        self.id = id
        self.path = path
        self.in_flight = 0
        self.served = 0
        self.draining = False
        self.ejected_until = 0.0
        self.health_failures = 0
        self.idle: list[WorkerLink] = []
        self.open_connections: set[WorkerLink] = set()
        self.connecting = 0
        self.counters = Counters()

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "served": self.served,
            "draining": self.draining,
            "ejected": self.ejected_until > now,
            "connections": len(self.open_connections),
            "counters": self.counters.snapshot(),
        }


class Pool:
    """Least-outstanding balancing over the routable workers."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: BalancerSettings,
        events: PoolEvents | None = None,
        *,
        dial: Dial,
        probe: Probe,
    ) -> None:
        self.reactor = reactor
        self._dial = dial
        self._probe = probe
        # The request each connection being dialled will carry first.
        self._pending: dict[WorkerLink, Dispatch] = {}
        self.clock: IReactorTime = reactor
        self.settings = settings
        self.events = events or PoolEvents()
        self.backends: list[Backend] = []
        self.queue: deque[Dispatch] = deque()
        self.counters = Counters()
        self._in_progress: set[Dispatch] = set()
        self._sweeper: LoopingCall | None = None
        self._checker: LoopingCall | None = None
        self._cap = settings.max_in_flight
        self.served_from = 0

    # Membership.

    def add(self, backend: Backend) -> None:
        """Start routing requests to C{backend}."""
        backend.draining = False
        if backend not in self.backends:
            self.backends.append(backend)
        self._drain_queue()

    def drain(self, backend: Backend) -> None:
        """
        Send no new request to C{backend}; the owner hears L{PoolEvents.idle}
        once its requests in flight are done (at once if there are none).
        """
        backend.draining = True
        if backend in self.backends:
            self.backends.remove(backend)
        self._close_idle(backend)
        if backend.in_flight == 0:
            self.events.idle(backend)

    def remove(self, backend: Backend) -> None:
        """The worker is gone: forget it and close every connection to it."""
        backend.draining = True
        if backend in self.backends:
            self.backends.remove(backend)
        for connection in list(backend.open_connections):
            connection.abort()

    def _close_idle(self, backend: Backend) -> None:
        idle, backend.idle = backend.idle, []
        for connection in idle:
            connection.close()

    def routable(self) -> int:
        """How many workers take requests now (in the pool, not ejected)."""
        now = self.clock.seconds()
        return sum(1 for b in self.backends if b.ejected_until <= now)

    # Choosing a worker.

    def pick(self, exclude: Backend | None = None) -> Backend | None:
        """The routable, un-ejected worker with the fewest requests in flight."""
        best: Backend | None = None
        best_load = self._cap
        now = 0.0
        for backend in self.backends:
            load = backend.in_flight
            if load < best_load and backend is not exclude:
                if backend.ejected_until:
                    now = now or self.clock.seconds()
                    if backend.ejected_until > now:
                        continue
                    backend.ejected_until = 0.0
                best, best_load = backend, load
        return best

    def _pick_ejected(self, exclude: Backend | None) -> Backend | None:
        # When every worker is ejected, trying one beats refusing everyone.
        candidates = [b for b in self.backends if b is not exclude and b.in_flight < self._cap]
        return min(candidates, key=lambda b: b.ejected_until, default=None)

    def submit(self, exchange: Dispatch) -> None:
        """Send C{exchange} to a worker now, or queue it."""
        self.counters.requests += 1
        self._in_progress.add(exchange)
        backend = self.pick()
        if backend is not None:
            self._assign(exchange, backend)
        else:
            self._route(exchange)

    def _route(self, exchange: Dispatch, exclude: Backend | None = None) -> None:
        backend = self.pick(exclude)
        if backend is None and all(b.ejected_until for b in self.backends):
            backend = self._pick_ejected(exclude)
        if backend is not None:
            self._assign(exchange, backend)
            return
        if len(self.queue) >= self.settings.queue_size:
            self._refuse(exchange, "queue_full")
            return
        exchange.queued_at = self.clock.seconds()
        self.queue.append(exchange)

    def _refuse(self, exchange: Dispatch, kind: str) -> None:
        self._in_progress.discard(exchange)
        self.counters.error(kind)
        retry_after = max(1, int(self.settings.queue_timeout))
        exchange.fail(503, kind, retry_after)

    def _assign(self, exchange: Dispatch, backend: Backend) -> None:
        backend.in_flight += 1
        backend.counters.requests += 1
        exchange.backend = backend
        exchange.dispatched = self.clock.seconds()
        if backend.idle:
            backend.idle.pop().attach(exchange)
            return
        backend.connecting += 1
        self._pending[self._dial(self, backend)] = exchange

    def _drain_queue(self) -> None:
        queue = self.queue
        while queue:
            backend = self.pick()
            if backend is None:
                return
            exchange = queue.popleft()
            if exchange.abandoned:
                continue
            self._assign(exchange, backend)

    # What connections report.

    def connected(self, connection: WorkerLink) -> None:
        backend = connection.backend
        backend.connecting -= 1
        backend.open_connections.add(connection)
        exchange = self._pending.pop(connection, None)
        if exchange is None or exchange.backend is not backend:
            # Timed out or abandoned meanwhile (and already accounted for).
            self._release(None, backend, connection)
            return
        connection.attach(exchange)

    def connect_failed(self, connection: WorkerLink, reason: Failure) -> None:
        """The worker's socket refused us: the request never reached it."""
        backend = connection.backend
        backend.connecting -= 1
        self._eject(backend, "connect failed: " + _one_line(reason))
        exchange = self._pending.pop(connection, None)
        if exchange is not None and exchange.backend is backend:
            self.unreached(exchange)

    def unreached(self, exchange: Dispatch) -> None:
        """C{exchange} did not reach its worker: give the slot back and retry."""
        backend = exchange.backend
        if backend is not None:
            self._leave(backend)
            self.retry(exchange, backend)

    def _leave(self, backend: Backend) -> None:
        backend.in_flight -= 1
        if backend.draining and backend.in_flight == 0:
            self.events.idle(backend)

    def retry(self, exchange: Dispatch, failed: Backend) -> None:
        """Move C{exchange}, which never reached a worker, to another one."""
        exchange.backend = None
        if exchange.abandoned:
            self._in_progress.discard(exchange)
            return
        exchange.attempts += 1
        if exchange.attempts > self.settings.retries:
            self._in_progress.discard(exchange)
            self.counters.error("upstream_failed")
            exchange.fail(502, "upstream_failed")
            return
        self.counters.error("retried")
        self._route(exchange, exclude=failed)
        self._drain_queue()

    def _eject(self, backend: Backend, why: str) -> None:
        if backend.ejected_until <= self.clock.seconds():
            self.log.warn(
                "worker {worker} ejected for {seconds}s: {why}",
                worker=backend.id,
                seconds=self.settings.eject_seconds,
                why=why,
            )
        backend.ejected_until = self.clock.seconds() + self.settings.eject_seconds
        self._close_idle(backend)

    def connection_failed(self, connection: WorkerLink, why: str) -> None:
        """A connection to a worker was reset or closed while in use."""
        self._eject(connection.backend, why)

    def finished(self, exchange: Dispatch, connection: WorkerLink | None, reusable: bool) -> None:
        """C{exchange} is over as far as its worker is concerned."""
        backend = exchange.backend
        self._in_progress.discard(exchange)
        if backend is None:
            return
        exchange.backend = None
        backend.served += 1
        if (
            reusable
            and connection is not None
            and not self.queue
            and not backend.draining
            and connection.transport is not None
        ):
            # The common case, as _release would do it: the connection goes
            # back to the worker's idle list.
            backend.in_flight -= 1
            backend.idle.append(connection)
        else:
            self._release(exchange, backend, connection if reusable else None)
        if self.served_from and backend.served >= self.served_from:
            self.events.served(backend)

    def _release(
        self,
        exchange: Dispatch | None,
        backend: Backend,
        connection: WorkerLink | None,
    ) -> None:
        if exchange is not None:
            backend.in_flight -= 1
        if connection is not None:
            if backend.draining or connection.transport is None:
                connection.close()
            else:
                # The queue is served first by the connection just freed.
                queue = self.queue
                while queue and backend.in_flight < self._cap:
                    waiting = queue.popleft()
                    if waiting.abandoned:
                        continue
                    backend.in_flight += 1
                    backend.counters.requests += 1
                    waiting.backend = backend
                    waiting.dispatched = self.clock.seconds()
                    connection.attach(waiting)
                    break
                else:
                    backend.idle.append(connection)
        if backend.draining:
            if exchange is not None and backend.in_flight == 0:
                self.events.idle(backend)
        elif self.queue:
            self._drain_queue()

    def connection_closed(self, connection: WorkerLink) -> None:
        backend = connection.backend
        backend.open_connections.discard(connection)
        if connection in backend.idle:
            backend.idle.remove(connection)

    def abandoned(self, exchange: Dispatch) -> None:
        """The client of a queued request went away."""
        self._in_progress.discard(exchange)

    # Timers: queue and request timeouts, active health checks.

    def start(self) -> None:
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(self.settings.sweep_interval, now=False).addErrback(
            lambda f: self.log.failure("balancer sweep failed", f)
        )
        if self.settings.health_interval > 0:
            self._checker = LoopingCall(self.check_health)
            self._checker.clock = self.clock
            self._checker.start(self.settings.health_interval, now=False).addErrback(
                lambda f: self.log.failure("health checks failed", f)
            )

    def stop(self) -> None:
        for call in (self._sweeper, self._checker):
            if call is not None and call.running:
                call.stop()
        self._sweeper = self._checker = None

    def sweep(self) -> None:
        """Time out queued requests and requests a worker sits on."""
        now = self.clock.seconds()
        queue = self.queue
        limit = now - self.settings.queue_timeout
        while queue and (queue[0].abandoned or queue[0].queued_at <= limit):
            exchange = queue.popleft()
            if not exchange.abandoned:
                self._refuse(exchange, "queue_timeout")
        deadline = now - self.settings.request_timeout
        stuck = [e for e in self._in_progress if e.backend is not None and e.dispatched <= deadline]
        for exchange in stuck:
            backend = exchange.backend
            assert backend is not None
            self.counters.error("timeout")
            backend.counters.error("timeout")
            if exchange.response_started:
                # The worker answered; what is left of its response waits for
                # a client that does not read it. The exchange is cut, but a
                # client's stall never gets a worker replaced.
                self.log.info(
                    "{method} {path}: the client did not take worker {worker}'s answer "
                    "within {timeout}s",
                    worker=backend.id,
                    method=exchange.method.decode("latin-1"),
                    path=exchange.path_for_log(),
                    timeout=self.settings.request_timeout,
                )
                exchange.time_out()
                continue
            self.log.warn(
                "worker {worker} did not answer {method} {path} within {timeout}s",
                worker=backend.id,
                method=exchange.method.decode("latin-1"),
                path=exchange.path_for_log(),
                timeout=self.settings.request_timeout,
            )
            exchange.time_out()
            self.events.stuck(backend)

    def check_health(self) -> None:
        for backend in list(self.backends):
            self._probe(self, backend)

    def health_busy(self, backend: Backend) -> None:
        """
        C{backend}'s health check timed out while it went on answering
        proxied requests: it is saturated, not dead, and stays in the pool
        (ejecting every busy worker would make a loaded node look unready
        and hand its virtual IP away). Its failure count is left as it is.
        """
        self.counters.error("health_busy")
        self.log.debug("worker {worker} too busy for its health check", worker=backend.id)

    def health_result(self, backend: Backend, ok: bool, why: str) -> None:
        if ok:
            if backend.health_failures or backend.ejected_until:
                self.log.info("worker {worker} passes its health check again", worker=backend.id)
            backend.health_failures = 0
            backend.ejected_until = 0.0
            return
        backend.health_failures += 1
        self._eject(backend, "health check failed: " + why)
        if backend.health_failures >= self.settings.health_fall:
            backend.health_failures = 0
            self.events.unhealthy(backend)

    def snapshot(self) -> dict[str, Any]:
        return {
            "routable_workers": len(self.backends),
            "queued": len(self.queue),
            "in_progress": len(self._in_progress),
            "counters": self.counters.snapshot(),
        }


def _one_line(reason: Failure) -> str:
    text = str(reason.value) or type(reason.value).__name__
    return " ".join(text.split())

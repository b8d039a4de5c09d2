"""
The front of a node as one service: the worker supervisor, the balancer
pool and the public HTTP(S) listeners, plus their control commands
(C{workers}, C{worker.drain}, C{worker.resume}, C{worker.restart},
C{reload}, C{balancer.stats}) and SIGHUP for a rolling reload.

It also answers /metrics for the whole node: the node's own registry,
the front's counters and the workers' registries (asked over their
stdin/stdout pipes), added up; on the public listeners, or only on
C{[balancer] metrics_listen} when that is set.

The node opens storage and migrates before it adds this service; this
module must never run application code in the front process.
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from clickpass import config as configmod
from clickpass.balancer.client import FrontFactory
from clickpass.balancer.forwarding import TrustedProxies, parse_ranges
from clickpass.balancer.health import probe
from clickpass.balancer.pool import Pool
from clickpass.balancer.static import StaticFiles
from clickpass.balancer.stats import ERROR_KINDS, LATENCY_BOUNDS
from clickpass.balancer.supervisor import AlertSink, ReloadError, Supervisor, install_sighup
from clickpass.balancer.worker_connection import dial
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.monitor.metrics import Registry, Snapshot, merge, render

STATIC_DIR = Path(__file__).parent.parent / "web" / "static"


class ListenError(Exception):
    """A listener could not be opened; the message is one line."""


class Front(MultiService):
    """Listeners -> balancer pool -> supervised workers."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: configmod.Settings,
        *,
        worker_count: int | None = None,
        socket_dir: Path | None = None,
        static_dir: Path = STATIC_DIR,
        tls_endpoint: Any = None,
        alerts: AlertSink | None = None,
        node_metrics: Registry | None = None,
    ) -> None:
        super().__init__()
        self.setName("front")
        self.reactor = reactor
        self.settings = settings
        self.pool = Pool(reactor, settings.balancer, dial=dial, probe=probe)
        self.supervisor = Supervisor(
            reactor, settings, self.pool, count=worker_count, socket_dir=socket_dir
        )
        # The node's alerts take workers.crash_loop.
        self.supervisor.alerts = alerts
        self.supervisor.setServiceParent(self)
        self.static = (
            StaticFiles(static_dir, settings.balancer.static_max_age)
            if settings.balancer.static
            else None
        )
        self._tls_endpoint = tls_endpoint or (lambda description, settings: description)
        self.factories: list[FrontFactory] = []
        self.ports: list[IListeningPort] = []
        self._sweeper: LoopingCall | None = None
        self._uninstall_sighup: Any = None
        # The node's registry, added to /metrics.
        self.node_metrics = node_metrics

    def startService(self) -> None:
        _raise_file_limit()
        super().startService()
        self.pool.start()
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(1.0, now=False).addErrback(
            lambda f: self.log.failure("front sweep failed", f)
        )
        try:
            self._uninstall_sighup = install_sighup(self.reactor, self._sighup)
        except ValueError:  # not the main thread (tests)
            self._uninstall_sighup = None

    async def listen(self) -> list[IListeningPort]:
        """Open every [web] listen endpoint; raise L{ListenError} if one fails."""
        settings = self.settings
        redirect = None
        if settings.balancer.redirect_http_to_https:
            redirect = settings.base_url.rstrip("/").encode("ascii")
        separate_metrics = bool(settings.balancer.metrics_listen)
        # On the public listeners /metrics needs the bearer token; without
        # one, or with a listener of its own, they pass the path on like any
        # other (404).
        token = configmod.metrics_token(settings) if settings.web.metrics_token_file else None
        public_metrics = self.metrics_page if token is not None and not separate_metrics else None
        trusted = TrustedProxies(parse_ranges(settings.web.trusted_proxies))
        healthz_headers = b""
        if settings.served_over_tls and settings.web.hsts_max_age:
            # As on the application's answers (clickpass.application).
            healthz_headers = b"Strict-Transport-Security: max-age=%d\r\n" % (
                settings.web.hsts_max_age
            )
        for description in settings.web.listen:
            tls = description.startswith("ssl:")
            factory = FrontFactory(
                self.reactor,
                self.pool,
                settings.balancer,
                tls=tls,
                trusted_proxies=trusted,
                static=self.static,
                redirect_base=None if tls else redirect,
                metrics_page=public_metrics,
                metrics_token=token,
                healthz_headers=healthz_headers,
            )
            await self._listen(description, factory)
        if separate_metrics:
            description = settings.balancer.metrics_listen
            factory = FrontFactory(
                self.reactor,
                self.pool,
                settings.balancer,
                tls=description.startswith("ssl:"),
                metrics_page=self.metrics_page,
                metrics_only=True,
            )
            await self._listen(description, factory)
        return self.ports

    async def _listen(self, description: str, factory: FrontFactory) -> None:
        endpoint = endpoints.serverFromString(
            self.reactor, self._tls_endpoint(description, self.settings)
        )
        try:
            port = await endpoint.listen(factory)
        except Exception as e:
            raise ListenError(f"cannot listen on {description}: {e}") from None
        self.factories.append(factory)
        self.ports.append(port)

    # /metrics.

    def metrics_page(self) -> Deferred[bytes]:
        """The node's metrics in the Prometheus text format (for the front to serve)."""
        return Deferred.fromCoroutine(self._metrics_text())

    async def _metrics_text(self) -> bytes:
        workers = [s for s in await self.supervisor.collect_metrics() if s]
        snapshots = [self.front_snapshot(len(workers)), *workers]
        if self.node_metrics is not None:
            snapshots.insert(0, self.node_metrics.snapshot())
        return render(merge(snapshots)).encode("utf-8")

    def front_snapshot(self, worker_snapshots: int = 0) -> Snapshot:
        """The front's counters and the workers' states, as a metrics snapshot."""
        return {
            **self._request_metrics(),
            **self._worker_metrics(),
            "clickpass_metrics_worker_snapshots": _entry(
                "gauge",
                "Workers whose metrics are in this page.",
                [],
                [[[], worker_snapshots]],
            ),
        }

    def _request_metrics(self) -> Snapshot:
        """The front's requests, answers, errors, latency and connections."""
        counters = self.pool.counters
        latency = counters.latency
        return {
            "clickpass_front_requests_total": _entry(
                "counter",
                "Requests the front received (proxied or answered itself).",
                [],
                [[[], counters.requests]],
            ),
            "clickpass_front_responses_total": _entry(
                "counter",
                "Responses the front sent, by status class.",
                ["code"],
                [[[f"{i}xx"], n] for i, n in enumerate(counters.responses) if i],
            ),
            "clickpass_front_errors_total": _entry(
                "counter",
                "Requests the front refused or could not complete, by kind.",
                ["kind"],
                [[[kind], counters.errors.get(kind, 0)] for kind in ERROR_KINDS],
            ),
            "clickpass_front_request_seconds": {
                **_entry(
                    "histogram",
                    "Time from a request's head to its complete response.",
                    [],
                    [[[], list(latency.buckets), latency.total, latency.count]],
                ),
                "buckets": list(LATENCY_BOUNDS),
            },
            "clickpass_front_client_connections": _entry(
                "gauge",
                "Open client connections.",
                [],
                [[[], sum(len(f.connections) for f in self.factories)]],
            ),
            "clickpass_balancer_queued_requests": _entry(
                "gauge", "Requests waiting for a free worker.", [], [[[], len(self.pool.queue)]]
            ),
        }

    def _worker_metrics(self) -> Snapshot:
        """The workers as the front sees them: routable, by state, restarts, load."""
        by_state: dict[str, int] = {}
        for worker in self.supervisor.workers():
            state = worker.lifecycle.state()
            by_state[state] = by_state.get(state, 0) + 1
        slots = self.supervisor.slots
        return {
            "clickpass_balancer_routable_workers": _entry(
                "gauge", "Workers taking requests now.", [], [[[], self.pool.routable()]]
            ),
            "clickpass_workers": _entry(
                "gauge",
                "Worker processes by lifecycle state.",
                ["state"],
                [[[state], n] for state, n in sorted(by_state.items())],
            ),
            "clickpass_worker_restarts_total": _entry(
                "counter",
                "Workers started again in each slot (respawn, recycle, reload).",
                ["slot"],
                [[[str(s.index)], s.restarts] for s in slots],
            ),
            "clickpass_worker_in_flight": _entry(
                "gauge",
                "Requests in flight at each slot's worker.",
                ["slot"],
                [[[str(s.index)], s.current.backend.in_flight if s.current else 0] for s in slots],
            ),
            "clickpass_workers_crash_looping": _entry(
                "gauge",
                "Worker slots whose workers keep dying at start.",
                [],
                [[[], sum(1 for s in slots if s.crash_loop)]],
            ),
        }

    def wait_ready(self) -> Deferred[None]:
        return self.supervisor.wait_ready()

    def _sweep(self) -> None:
        now = self.reactor.seconds()
        for factory in self.factories:
            factory.sweep(now)

    def _sighup(self) -> None:
        self.log.info("SIGHUP: reloading the workers")
        d = Deferred.fromCoroutine(self.supervisor.reload())
        d.addErrback(lambda f: self.log.error("reload failed: {why}", why=str(f.value)))

    def stopService(self) -> Deferred[Any]:
        if self._uninstall_sighup is not None:
            self._uninstall_sighup()
            self._uninstall_sighup = None
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        ports, self.ports = self.ports, []
        stopping = [maybeDeferred(port.stopListening) for port in ports]
        for factory in self.factories:
            factory.close_idle()

        def stop_children(_: object) -> Deferred[Any]:
            # The supervisor drains each worker (requests in flight finish)
            # before SIGTERM.
            return maybeDeferred(MultiService.stopService, self)

        def stop_pool(result: object) -> object:
            self.pool.stop()
            for factory in self.factories:
                for connection in list(factory.connections):
                    connection.close_now()
            return result

        d: Deferred[Any] = DeferredList(stopping).addCallback(stop_children)
        return d.addBoth(stop_pool)

    # Control commands.

    def register_commands(self, registry: CommandRegistry) -> None:
        registry.register("workers", self._cmd_workers, "the worker processes and their load")
        registry.register("worker.drain", self._cmd_drain, "stop sending requests to a worker")
        registry.register("worker.resume", self._cmd_resume, "send requests to a drained worker")
        registry.register("worker.restart", self._cmd_restart, "replace one worker")
        registry.register("reload", self._cmd_reload, "replace every worker, one at a time")
        registry.register("balancer.stats", self._cmd_stats, "front and per-worker counters")

    def _cmd_workers(self, args: Any) -> list[dict[str, Any]]:
        now = self.reactor.seconds()
        return [w.describe(now) for w in self.supervisor.workers()]

    def _worker(self, args: Any) -> Any:
        worker_id = args.get("id")
        if not isinstance(worker_id, str | int):
            raise CommandError("give the worker's id (see clickpass-ctl workers)")
        worker = self.supervisor.find(str(worker_id))
        if worker is None:
            raise CommandError(f"no worker with id {worker_id} (see clickpass-ctl workers)")
        return worker

    def _cmd_drain(self, args: Any) -> dict[str, Any]:
        worker = self._worker(args)
        if worker.lifecycle.state() != "ready":
            raise CommandError(f"worker {worker.id} is {worker.lifecycle.state()}, not ready")
        worker.lifecycle.hold()
        return {"drained": worker.id, "in_flight": worker.backend.in_flight}

    def _cmd_resume(self, args: Any) -> dict[str, Any]:
        worker = self._worker(args)
        if worker.lifecycle.state() != "drained":
            raise CommandError(f"worker {worker.id} is {worker.lifecycle.state()}, not drained")
        worker.lifecycle.resume()
        return {"resumed": worker.id}

    async def _cmd_restart(self, args: Any) -> dict[str, Any]:
        worker = self._worker(args)
        slot = worker.slot
        if worker is not slot.current:
            raise CommandError(f"worker {worker.id} is already being replaced")
        ok = await self.supervisor.replace(slot, "operator restart")
        if not ok:
            raise CommandError(f"the replacement for worker {worker.id} did not start; see the log")
        new = slot.current
        return {"replaced": worker.id, "by": new.id if new else None}

    async def _cmd_reload(self, args: Any) -> dict[str, Any]:
        try:
            return await self.supervisor.reload()
        except ReloadError as e:
            raise CommandError(str(e)) from None

    def _cmd_stats(self, args: Any) -> dict[str, Any]:
        now = self.reactor.seconds()
        return {
            "front": self.pool.snapshot(),
            "client_connections": sum(len(f.connections) for f in self.factories),
            "workers": {
                w.id: {"state": w.lifecycle.state(), **w.backend.snapshot(now)}
                for w in self.supervisor.workers()
            },
        }


def _entry(kind: str, help: str, labels: list[str], samples: list[Any]) -> dict[str, Any]:
    """One metric of a snapshot (L{clickpass.monitor.metrics.Snapshot})."""
    found: dict[str, Any] = {"type": kind, "help": help, "labels": labels, "samples": samples}
    if kind == "gauge":
        found["aggregate"] = "sum"
    return found


def _raise_file_limit() -> None:
    # Each client costs a file descriptor; the default soft limit (1024)
    # would refuse clients long before the front is busy.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

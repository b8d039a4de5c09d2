"""
The front of a node as one service: the worker supervisor, the balancer
pool and the public HTTP(S) listeners, plus their control commands
(C{workers}, C{worker.drain}, C{worker.resume}, C{worker.restart},
C{reload}, C{balancer.stats}) and SIGHUP for a rolling reload.

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
from clickpass.balancer.pool import Pool
from clickpass.balancer.proxy import FrontFactory
from clickpass.balancer.static import StaticFiles
from clickpass.balancer.supervisor import ReloadError, Supervisor, install_sighup
from clickpass.control.protocol import CommandError, CommandRegistry

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
    ) -> None:
        super().__init__()
        self.setName("front")
        self.reactor = reactor
        self.settings = settings
        self.pool = Pool(reactor, settings.balancer)
        self.supervisor = Supervisor(
            reactor, settings, self.pool, count=worker_count, socket_dir=socket_dir
        )
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
        for description in settings.web.listen:
            tls = description.startswith("ssl:")
            factory = FrontFactory(
                self.reactor,
                self.pool,
                settings.balancer,
                tls=tls,
                trust_forwarded=settings.web.trust_forwarded_headers,
                static=self.static,
                redirect_base=None if tls else redirect,
            )
            endpoint = endpoints.serverFromString(
                self.reactor, self._tls_endpoint(description, settings)
            )
            try:
                port = await endpoint.listen(factory)
            except Exception as e:
                raise ListenError(f"cannot listen on {description}: {e}") from None
            self.factories.append(factory)
            self.ports.append(port)
        return self.ports

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


def _raise_file_limit() -> None:
    # Each client costs a file descriptor; the default soft limit (1024)
    # would refuse clients long before the front is busy.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

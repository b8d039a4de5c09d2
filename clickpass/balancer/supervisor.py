"""
The worker supervisor: spawns the worker processes, routes traffic to a
worker only after it reports ready, respawns dead workers with exponential
backoff, recycles workers (max-requests with jitter and a minimum lifetime,
stuck or unhealthy workers), replaces them one at a time on reload (each
new worker ready before the old one drains) and stops them gracefully:
drain, then SIGTERM, then SIGKILL.

Each worker's lifecycle is an Automat machine with no I/O inside; its
outputs call the L{WorkerProcess}, which talks to the pool and the
process. This module never parses HTTP and never touches client sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from automat import TypeMachineBuilder
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass import config as configmod
from clickpass.balancer.pool import Backend, Pool, PoolEvents

# A worker that dies sooner than this after it was spawned counts as a
# failure to start, and its slot waits before the next try.
QUICK_DEATH = 10.0
FIRST_DELAY = 1.0
# This many failures to start in a row in one slot is a crash loop: the
# workers.crash_loop alert fires, and is resolved once a worker of every
# such slot has stayed up for QUICK_DEATH seconds after it became ready.
CRASH_LOOP_DEATHS = 3
CRASH_LOOP_ALERT = "workers.crash_loop"
# Longest line a worker may send on its stdout (a metrics snapshot).
MAX_CONTROL_LINE = 16 * 1024 * 1024


class AlertSink(Protocol):
    """What the supervisor needs of L{clickpass.monitor.alerts.Alerts}."""

    def raise_(self, key: str, summary: str, details: dict[str, Any] | None = None) -> None: ...

    def resolve(self, key: str) -> None: ...


class Lifecycle(Protocol):
    """The inputs of one worker's lifecycle."""

    def reported_ready(self) -> None:
        "The worker wrote its ready line."

    def retire(self) -> None:
        "Stop the worker gracefully: drain, SIGTERM, SIGKILL."

    def hold(self) -> None:
        "Take the worker out of rotation but keep it running (operator drain)."

    def resume(self) -> None:
        "Put a held worker back into rotation."

    def idle(self) -> None:
        "The pool says the draining worker has nothing in flight."

    def drain_expired(self) -> None:
        "The drain timeout passed."

    def kill_expired(self) -> None:
        "The SIGTERM grace period passed."

    def start_expired(self) -> None:
        "The worker did not report ready in time."

    def exited(self) -> None:
        "The process ended."

    def state(self) -> str:
        "The state's name, for operators."
        return ""


class Actions(Protocol):
    """What the lifecycle machine makes happen (the L{WorkerProcess})."""

    def route(self) -> None: ...
    def unroute(self) -> None: ...
    def start_drain_timer(self) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def forget(self) -> None: ...


@dataclass
class LifecycleCore:
    """
    The machine's core: the actions its outputs call. C{TypeMachineBuilder}
    takes the core's class, and mypy accepts no Protocol where a class is
    expected (it could be instantiated), so the L{Actions} are held in one.
    """

    actions: Actions


# The lifecycle machine, built at import like the heartbeat's and the
# database agent's: its states, the moves that do something, then the inputs
# each state ignores.
_builder = TypeMachineBuilder(Lifecycle, LifecycleCore)
_starting = _builder.state("starting")
_ready = _builder.state("ready")
_held = _builder.state("held")
_draining = _builder.state("draining")
_stopping = _builder.state("stopping")
_gone = _builder.state("gone")

for _state, _name in (
    (_starting, "starting"),
    (_ready, "ready"),
    (_held, "drained"),
    (_draining, "draining"),
    (_stopping, "stopping"),
    (_gone, "gone"),
):
    _state.upon(Lifecycle.state).loop().returns(_name)


@_starting.upon(Lifecycle.reported_ready).to(_ready)
def _became_ready(lc: Lifecycle, core: LifecycleCore) -> None:
    core.actions.route()


@_starting.upon(Lifecycle.retire).to(_stopping)
@_starting.upon(Lifecycle.start_expired).to(_stopping)
@_draining.upon(Lifecycle.idle).to(_stopping)
@_draining.upon(Lifecycle.drain_expired).to(_stopping)
def _terminate(lc: Lifecycle, core: LifecycleCore) -> None:
    core.actions.terminate()


@_ready.upon(Lifecycle.hold).to(_held)
def _hold(lc: Lifecycle, core: LifecycleCore) -> None:
    core.actions.unroute()


@_held.upon(Lifecycle.resume).to(_ready)
def _resume(lc: Lifecycle, core: LifecycleCore) -> None:
    core.actions.route()


@_ready.upon(Lifecycle.retire).to(_draining)
@_held.upon(Lifecycle.retire).to(_draining)
def _drain(lc: Lifecycle, core: LifecycleCore) -> None:
    core.actions.start_drain_timer()
    core.actions.unroute()


@_stopping.upon(Lifecycle.kill_expired).loop()
def _kill(lc: Lifecycle, core: LifecycleCore) -> None:
    core.actions.kill()


for _state in (_starting, _ready, _held, _draining, _stopping):

    @_state.upon(Lifecycle.exited).to(_gone)
    def _forget(lc: Lifecycle, core: LifecycleCore) -> None:
        core.actions.forget()


# Inputs that mean nothing in a state are ignored there.
_IGNORED: dict[object, tuple[Callable[..., None], ...]] = {
    _starting: (
        Lifecycle.idle,
        Lifecycle.hold,
        Lifecycle.resume,
        Lifecycle.drain_expired,
        Lifecycle.kill_expired,
    ),
    _ready: (
        Lifecycle.reported_ready,
        Lifecycle.idle,
        Lifecycle.resume,
        Lifecycle.start_expired,
        Lifecycle.drain_expired,
        Lifecycle.kill_expired,
    ),
    _held: (
        Lifecycle.reported_ready,
        Lifecycle.idle,
        Lifecycle.hold,
        Lifecycle.start_expired,
        Lifecycle.drain_expired,
        Lifecycle.kill_expired,
    ),
    _draining: (
        Lifecycle.reported_ready,
        Lifecycle.retire,
        Lifecycle.hold,
        Lifecycle.resume,
        Lifecycle.start_expired,
        Lifecycle.kill_expired,
    ),
    _stopping: (
        Lifecycle.reported_ready,
        Lifecycle.retire,
        Lifecycle.hold,
        Lifecycle.resume,
        Lifecycle.idle,
        Lifecycle.start_expired,
        Lifecycle.drain_expired,
    ),
    _gone: (
        Lifecycle.reported_ready,
        Lifecycle.retire,
        Lifecycle.hold,
        Lifecycle.resume,
        Lifecycle.idle,
        Lifecycle.drain_expired,
        Lifecycle.kill_expired,
        Lifecycle.start_expired,
        Lifecycle.exited,
    ),
}
for _state in (_starting, _ready, _held, _draining, _stopping, _gone):
    for _method in _IGNORED[_state]:
        _state.upon(_method).loop().returns(None)

new_lifecycle: Callable[[LifecycleCore], Lifecycle] = _builder.build()


class WorkerProcess(ProcessProtocol):
    """One worker process, as the supervisor sees it."""

    log = Logger()

    def __init__(self, supervisor: Supervisor, slot: Slot, number: int, socket_path: str) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.id = str(number)
        self.socket_path = socket_path
        self.backend = Backend(self.id, socket_path)
        self.pid: int | None = None
        self.spawned_at = supervisor.clock.seconds()
        self.ready_at: float | None = None
        self.max_requests = 0
        self.lifecycle = new_lifecycle(LifecycleCore(self))
        self.ended: Deferred[None] = Deferred()
        self.ready: Deferred[bool] = Deferred()
        self._lines = {1: b"", 2: b""}
        self._timer: IDelayedCall | None = None
        self.exit_status: str = ""
        self._metrics_waiters: list[Deferred[dict[str, Any]]] = []

    # Process events.

    def connectionMade(self) -> None:
        # makeConnection sets the transport before it calls connectionMade.
        assert self.transport is not None
        self.pid = self.transport.pid
        self._timer = self.supervisor.clock.callLater(
            self.supervisor.settings.start_timeout, self._start_expired
        )

    def _start_expired(self) -> None:
        self._timer = None
        if self.lifecycle.state() == "starting":
            self.log.warn(
                "worker {worker} did not report ready within {timeout}s; stopping it",
                worker=self.id,
                timeout=self.supervisor.settings.start_timeout,
            )
        self.lifecycle.start_expired()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buf = self._lines.get(childFD, b"") + data
        *lines, rest = buf.split(b"\n")
        self._lines[childFD] = rest[-MAX_CONTROL_LINE:] if childFD == 1 else rest[-8192:]
        for line in lines:
            if childFD == 1 and line.startswith(b"metrics "):
                self._metrics_received(line[8:])
                continue
            text = line.decode("utf-8", "replace").rstrip()
            if childFD == 1:
                if text.startswith("ready"):
                    self._cancel_timer()
                    self.ready_at = self.supervisor.clock.seconds()
                    self.lifecycle.reported_ready()
                elif text:
                    self.log.warn("worker {worker} said {line!r}", worker=self.id, line=text)
            elif text:
                self.log.info("worker {worker}: {line}", worker=self.id, line=text)

    def request_metrics(self) -> Deferred[dict[str, Any]]:
        """
        Ask the worker for its metrics snapshot (over its stdin; the answer
        comes back as one C{metrics JSON} line on its stdout).
        """
        d: Deferred[dict[str, Any]] = Deferred()
        if self.transport is None:
            d.callback({})
            return d
        # Waiters that timed out are dropped; one question is in flight at a time.
        self._metrics_waiters = [w for w in self._metrics_waiters if not w.called]
        first = not self._metrics_waiters
        self._metrics_waiters.append(d)
        if first:
            with contextlib.suppress(OSError):
                self.transport.writeToChild(0, b"metrics\n")
        return d

    def _metrics_received(self, raw: bytes) -> None:
        try:
            snapshot = json.loads(raw)
        except ValueError:
            self.log.warn("worker {worker} sent unreadable metrics", worker=self.id)
            snapshot = {}
        if not isinstance(snapshot, dict):
            snapshot = {}
        waiters, self._metrics_waiters = self._metrics_waiters, []
        for waiter in waiters:
            waiter.callback(snapshot)

    def processEnded(self, reason: Failure) -> None:
        self._cancel_timer()
        waiters, self._metrics_waiters = self._metrics_waiters, []
        for waiter in waiters:
            waiter.callback({})
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.exit_status = f"signal {sig}" if sig else f"exit code {code}"
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        self.lifecycle.exited()

    # Actions of the lifecycle machine.

    def route(self) -> None:
        self.log.info(
            "worker {worker} (pid {pid}) ready after {seconds:.2f}s",
            worker=self.id,
            pid=self.pid,
            seconds=(self.ready_at or self.spawned_at) - self.spawned_at,
        )
        self.supervisor.pool.add(self.backend)
        self.supervisor.worker_ready(self)
        if not self.ready.called:
            self.ready.callback(True)

    def unroute(self) -> None:
        self.supervisor.pool.drain(self.backend)

    def start_drain_timer(self) -> None:
        self._cancel_timer()
        self._timer = self.supervisor.clock.callLater(
            self.supervisor.settings.drain_timeout, self._drain_expired
        )

    def _drain_expired(self) -> None:
        self._timer = None
        self.log.warn(
            "worker {worker} still had {n} requests after the drain timeout",
            worker=self.id,
            n=self.backend.in_flight,
        )
        self.lifecycle.drain_expired()

    def terminate(self) -> None:
        self._cancel_timer()
        self.supervisor.pool.remove(self.backend)
        self._signal("TERM")
        self._timer = self.supervisor.clock.callLater(
            self.supervisor.settings.kill_timeout, self._kill_expired
        )

    def _kill_expired(self) -> None:
        self._timer = None
        self.log.warn("worker {worker} ignored SIGTERM; killing it", worker=self.id)
        self.lifecycle.kill_expired()

    def kill(self) -> None:
        self._signal("KILL")

    def forget(self) -> None:
        self._cancel_timer()
        self.supervisor.pool.remove(self.backend)
        if not self.ready.called:
            self.ready.callback(False)
        self.supervisor.worker_gone(self)
        self.ended.callback(None)

    def _signal(self, name: str) -> None:
        if self.transport is None:
            return
        with contextlib.suppress(ProcessExitedAlready, OSError):
            self.transport.signalProcess(name)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "slot": self.slot.index,
            "pid": self.pid,
            "state": self.lifecycle.state(),
            "in_flight": self.backend.in_flight,
            "served": self.backend.served,
            "restarts": self.slot.restarts,
            "age_seconds": round(now - self.spawned_at, 1),
            "socket": self.socket_path,
        }


@dataclass(eq=False)
class Slot:
    """One of the N places a worker runs in; a reload replaces its worker."""

    index: int
    current: WorkerProcess | None = None
    replacement: WorkerProcess | None = None
    restarts: int = 0
    quick_deaths: int = 0
    crash_loop: bool = False
    stable_check: IDelayedCall | None = None
    respawn: IDelayedCall | None = None
    retired: list[WorkerProcess] = field(default_factory=list)


class Supervisor(Service, PoolEvents):
    """Runs the worker processes of one node."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: configmod.Settings,
        pool: Pool,
        count: int | None = None,
        socket_dir: Path | None = None,
        executable: str = sys.executable,
    ) -> None:
        self.setName("workers")
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.node_settings = settings
        self.settings = settings.workers
        self.pool = pool
        pool.events = self
        # The pool tells served() only from this many requests on.
        pool.served_from = settings.workers.max_requests
        self.count = count or settings.workers.count or os.cpu_count() or 1
        self._socket_dir = socket_dir
        self.executable = executable
        self.slots = [Slot(i) for i in range(self.count)]
        self._numbers = 0
        self._stopping = False
        self._ready_waiters: list[Deferred[None]] = []
        # Where workers.crash_loop goes (the node's alerts); None: nowhere.
        self.alerts: AlertSink | None = None

    # Service.

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.socket_dir = self._socket_dir or self._make_socket_dir()
        for slot in self.slots:
            slot.current = self._spawn(slot)

    def _make_socket_dir(self) -> Path:
        configured = self.settings.socket_dir
        path = self.node_settings.data_path(configured or "workers")
        # A unix socket path must fit in 108 bytes.
        if len(str(path.absolute())) > 80:
            if configured:
                self.log.warn(
                    "[workers] socket_dir {path} is too long for unix sockets; using /tmp",
                    path=str(path),
                )
            return Path(tempfile.mkdtemp(prefix="clickpass-workers-"))
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path.absolute()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        workers: list[WorkerProcess] = []
        for slot in self.slots:
            for call in (slot.respawn, slot.stable_check):
                if call is not None and call.active():
                    call.cancel()
            slot.respawn = slot.stable_check = None
            for worker in (slot.current, slot.replacement, *slot.retired):
                if worker is not None and worker.lifecycle.state() != "gone":
                    workers.append(worker)
        for worker in workers:
            worker.lifecycle.retire()
        return DeferredList([w.ended for w in workers])

    # Spawning and respawning.

    def argv(self, worker: WorkerProcess) -> list[str]:
        args = [
            self.executable,
            "-m",
            "clickpass.worker",
            "--socket",
            worker.socket_path,
            "--id",
            worker.id,
        ]
        if Path(self.node_settings.source).is_file():
            args += ["--config", self.node_settings.source]
        if self.settings.app:
            args += ["--app", self.settings.app]
        return args

    def _spawn(self, slot: Slot) -> WorkerProcess:
        self._numbers += 1
        path = str(self.socket_dir / f"w{self._numbers}.sock")
        worker = WorkerProcess(self, slot, self._numbers, path)
        jitter = self.settings.max_requests_jitter
        if self.settings.max_requests:
            worker.max_requests = self.settings.max_requests + (
                random.randint(0, jitter) if jitter else 0
            )
        env = dict(os.environ)
        self.reactor.spawnProcess(
            worker,
            self.executable,
            self.argv(worker),
            env=env,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self.log.info(
            "worker {worker} spawned in slot {slot} (pid {pid})",
            worker=worker.id,
            slot=slot.index,
            pid=worker.pid,
        )
        return worker

    def worker_ready(self, worker: WorkerProcess) -> None:
        slot = worker.slot
        if worker is slot.replacement:
            old, slot.current, slot.replacement = slot.current, worker, None
            if old is not None:
                slot.retired.append(old)
                old.lifecycle.retire()
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if slot.crash_loop and worker is slot.current:
            if slot.stable_check is not None and slot.stable_check.active():
                slot.stable_check.cancel()
            slot.stable_check = self.clock.callLater(QUICK_DEATH, self._check_stable, slot, worker)

    def _check_stable(self, slot: Slot, worker: WorkerProcess) -> None:
        """A worker of a crash-looping slot stayed up: the loop is over."""
        slot.stable_check = None
        if worker is not slot.current or worker.lifecycle.state() == "gone":
            return
        slot.quick_deaths = 0
        slot.crash_loop = False
        self.log.info(
            "slot {slot}: worker {worker} is up; no crash loop", slot=slot.index, worker=worker.id
        )
        if self.alerts is not None and not any(s.crash_loop for s in self.slots):
            self.alerts.resolve(CRASH_LOOP_ALERT)

    def _crash_looping(self, slot: Slot, worker: WorkerProcess) -> None:
        slot.crash_loop = True
        if slot.stable_check is not None and slot.stable_check.active():
            slot.stable_check.cancel()
        slot.stable_check = None
        looping = [s.index for s in self.slots if s.crash_loop]
        self.log.error(
            "slot {slot}: worker died at start {deaths} times in a row (last: {status})",
            slot=slot.index,
            deaths=slot.quick_deaths,
            status=worker.exit_status,
        )
        if self.alerts is not None:
            self.alerts.raise_(
                CRASH_LOOP_ALERT,
                f"workers keep dying at start: slot {slot.index} failed {slot.quick_deaths} "
                f"times in a row (last: {worker.exit_status})",
                {
                    "slots": looping,
                    "deaths": slot.quick_deaths,
                    "last_exit": worker.exit_status,
                    "routable_workers": self.pool.routable(),
                },
            )

    def worker_gone(self, worker: WorkerProcess) -> None:
        slot = worker.slot
        lived = self.clock.seconds() - worker.spawned_at
        if worker in slot.retired:
            slot.retired.remove(worker)
            self.log.info(
                "worker {worker} stopped ({status})", worker=worker.id, status=worker.exit_status
            )
            return
        if worker is slot.replacement:
            slot.replacement = None
            self.log.warn(
                "replacement worker {worker} died before it was ready ({status})",
                worker=worker.id,
                status=worker.exit_status,
            )
            if slot.current is not None:
                return
        elif worker is slot.current:
            slot.current = None
            if self._stopping:
                self.log.info(
                    "worker {worker} stopped ({status})",
                    worker=worker.id,
                    status=worker.exit_status,
                )
                return
            self.log.warn(
                "worker {worker} (pid {pid}) died after {seconds:.1f}s ({status})",
                worker=worker.id,
                pid=worker.pid,
                seconds=lived,
                status=worker.exit_status,
            )
        else:
            return
        if self._stopping or slot.replacement is not None:
            return
        if worker.ready_at is None or lived < QUICK_DEATH:
            slot.quick_deaths += 1
            if slot.quick_deaths >= CRASH_LOOP_DEATHS:
                self._crash_looping(slot, worker)
        else:
            slot.quick_deaths = 0
        delay = (
            0.0
            if slot.quick_deaths == 0
            else min(FIRST_DELAY * 2 ** (slot.quick_deaths - 1), self.settings.respawn_delay_max)
        )
        self._schedule_respawn(slot, delay)

    def _schedule_respawn(self, slot: Slot, delay: float) -> None:
        if slot.respawn is not None and slot.respawn.active():
            return
        if delay:
            self.log.warn("slot {slot}: respawning in {delay:g}s", slot=slot.index, delay=delay)

        def respawn() -> None:
            slot.respawn = None
            if self._stopping or slot.current is not None:
                return
            slot.restarts += 1
            slot.current = self._spawn(slot)

        slot.respawn = self.clock.callLater(delay, respawn)

    # Replacing workers.

    def replace(self, slot: Slot, why: str) -> Deferred[bool]:
        """
        Start a new worker for C{slot}; once it is ready, retire the old one.
        Fires with whether the new worker became ready.
        """
        if self._stopping:
            return succeed(False)
        if slot.replacement is not None:
            return slot.replacement.ready
        if slot.current is None:
            if slot.respawn is not None and slot.respawn.active():
                slot.respawn.cancel()
                slot.respawn = None
            slot.restarts += 1
            slot.current = self._spawn(slot)
            return slot.current.ready
        self.log.info(
            "replacing worker {worker} in slot {slot}: {why}",
            worker=slot.current.id,
            slot=slot.index,
            why=why,
        )
        slot.restarts += 1
        slot.replacement = self._spawn(slot)
        return slot.replacement.ready

    async def reload(self) -> dict[str, Any]:
        """Replace every worker, one slot at a time, each new one ready first."""
        replaced = 0
        for slot in self.slots:
            ok = await self.replace(slot, "reload")
            if not ok:
                raise ReloadError(
                    f"reload stopped: the new worker for slot {slot.index} did not start "
                    "(see the log); the old workers keep serving"
                )
            replaced += 1
        return {"replaced": replaced}

    def find(self, worker_id: str) -> WorkerProcess | None:
        for slot in self.slots:
            for worker in (slot.current, slot.replacement, *slot.retired):
                if worker is not None and worker.id == worker_id:
                    return worker
        return None

    def workers(self) -> list[WorkerProcess]:
        found: list[WorkerProcess] = []
        for slot in self.slots:
            found += [w for w in (slot.current, slot.replacement, *slot.retired) if w is not None]
        return found

    def wait_ready(self) -> Deferred[None]:
        """Fires when at least one worker is ready."""
        if self.pool.backends:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    async def collect_metrics(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """
        The metrics snapshots of the workers in service (current ones, ready
        or draining); a worker that does not answer within C{timeout} is left
        out rather than holding up the page.
        """
        asked: list[Deferred[dict[str, Any]]] = []
        for slot in self.slots:
            worker = slot.current
            if worker is not None and worker.ready_at is not None:
                d = worker.request_metrics()
                d.addTimeout(timeout, self.clock)
                d.addErrback(lambda f: {})
                asked.append(d)
        results: list[dict[str, Any]] = []
        for d in asked:
            results.append(await d)
        return results

    def _worker_for(self, backend: Backend) -> WorkerProcess | None:
        for slot in self.slots:
            for worker in (slot.current, slot.replacement, *slot.retired):
                if worker is not None and worker.backend is backend:
                    return worker
        return None

    # PoolEvents.

    def idle(self, backend: Backend) -> None:
        worker = self._worker_for(backend)
        if worker is not None:
            worker.lifecycle.idle()

    def served(self, backend: Backend) -> None:
        if not self.settings.max_requests or backend.served < self.settings.max_requests:
            # Called on every request: decide without looking for the worker
            # (each worker's own limit is the setting plus its jitter).
            return
        worker = self._worker_for(backend)
        if worker is None or worker.slot.current is not worker or worker.slot.replacement:
            return
        if backend.served < worker.max_requests:
            return
        if self.clock.seconds() - worker.spawned_at < self.settings.min_lifetime:
            return
        self._replace_logged(worker, f"served {backend.served} requests")

    def stuck(self, backend: Backend) -> None:
        worker = self._worker_for(backend)
        if worker is not None and worker.slot.current is worker:
            self._replace_logged(worker, "a request timed out")

    def unhealthy(self, backend: Backend) -> None:
        worker = self._worker_for(backend)
        if worker is not None and worker.slot.current is worker:
            self._replace_logged(worker, "failed its health checks")

    def _replace_logged(self, worker: WorkerProcess, why: str) -> None:
        d = self.replace(worker.slot, why)
        d.addErrback(lambda f: self.log.failure("replacing worker {worker}", f, worker=worker.id))


class ReloadError(Exception):
    """A reload could not complete; the message is one line for the operator."""


def install_sighup(reactor: Any, handler: Callable[[], None]) -> Callable[[], None]:
    """Call C{handler} on the reactor thread on SIGHUP; returns an uninstaller."""
    previous = signal.getsignal(signal.SIGHUP)

    def on_signal(signum: int, frame: object) -> None:
        reactor.callFromThread(handler)

    signal.signal(signal.SIGHUP, on_signal)

    def uninstall() -> None:
        signal.signal(signal.SIGHUP, previous)

    return uninstall

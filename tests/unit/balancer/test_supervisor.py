"""
The worker supervisor against a fake process reactor: readiness, respawn
backoff, recycling, rolling replacement and graceful stop.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from clickpass import config
from clickpass.balancer.health import probe
from clickpass.balancer.pool import Pool
from clickpass.balancer.supervisor import Supervisor, WorkerProcess
from clickpass.balancer.worker_connection import dial


class FakeProcess:
    def __init__(self, proto: WorkerProcess, pid: int) -> None:
        self.proto = proto
        self.pid = pid
        self.signals: list[str] = []
        self.stdin: list[bytes] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == 0
        self.stdin.append(data)


class ProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, proto: Any, executable: str, args: Any, env: Any = None, **kw: Any):
        process = FakeProcess(proto, 1000 + len(self.processes))
        proto.makeConnection(process)
        self.processes.append(process)
        return process


def make(count: int = 2, tmp_path: Any = None, **workers: Any):
    settings = config.parse(
        {"workers": {"count": count, **workers}, "balancer": {"health_interval": 0}}
    )
    reactor = ProcessReactor()
    pool = Pool(reactor, settings.balancer, dial=dial, probe=probe)
    supervisor = Supervisor(reactor, settings, pool, socket_dir=tmp_path)
    supervisor.startService()
    return reactor, pool, supervisor


def ready(process: FakeProcess) -> None:
    process.proto.childDataReceived(1, b"ready %d\n" % process.pid)


def exit_(process: FakeProcess, code: int = 1) -> None:
    reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)
    process.proto.processEnded(Failure(reason))


def test_a_worker_gets_traffic_only_after_it_reports_ready(tmp_path):
    """Spawned workers are not routable until their ready line arrives."""
    reactor, pool, _supervisor = make(2, tmp_path)
    assert len(reactor.processes) == 2
    assert pool.backends == []
    ready(reactor.processes[0])
    assert [b.id for b in pool.backends] == [reactor.processes[0].proto.id]
    assert reactor.processes[0].proto.lifecycle.state() == "ready"


def test_workers_that_die_at_start_are_respawned_with_growing_delays(tmp_path):
    """No respawn storm: each quick death doubles the wait before the next try."""
    reactor, _, _supervisor = make(1, tmp_path)
    delays = []
    for _ in range(4):
        before = len(reactor.processes)
        exit_(reactor.processes[-1])
        waited = 0.0
        while len(reactor.processes) == before:
            reactor.advance(0.25)
            waited += 0.25
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_a_worker_that_dies_after_a_long_life_is_respawned_at_once(tmp_path):
    """A crash after a healthy life respawns immediately."""
    reactor, _, supervisor = make(1, tmp_path)
    ready(reactor.processes[0])
    reactor.advance(60)
    exit_(reactor.processes[0], code=-9)
    reactor.advance(0)
    assert len(reactor.processes) == 2
    assert supervisor.slots[0].restarts == 1


def test_replace_starts_the_new_worker_before_the_old_one_drains(tmp_path):
    """A restart keeps the old worker routable until the new one is ready."""
    reactor, pool, supervisor = make(1, tmp_path)
    old = reactor.processes[0]
    ready(old)
    d = supervisor.replace(supervisor.slots[0], "test")
    new = reactor.processes[1]
    assert [b.id for b in pool.backends] == [old.proto.id]
    assert old.signals == []
    ready(new)
    assert [b.id for b in pool.backends] == [new.proto.id]
    assert old.signals == ["TERM"]  # nothing in flight: drained at once
    assert d.called
    exit_(old, 0)
    assert supervisor.workers() == [new.proto]


def test_graceful_stop_waits_for_requests_then_terms_then_kills(tmp_path):
    """Stop: drain (requests finish), SIGTERM, and SIGKILL after kill_timeout."""
    reactor, _pool, supervisor = make(1, tmp_path, drain_timeout=30.0, kill_timeout=5.0)
    process = reactor.processes[0]
    ready(process)
    backend = process.proto.backend
    backend.in_flight = 1  # a request is still being answered
    stopped = supervisor.stopService()
    assert process.signals == []
    assert process.proto.lifecycle.state() == "draining"
    backend.in_flight = 0
    supervisor.idle(backend)
    assert process.signals == ["TERM"]
    reactor.advance(5.0)
    assert process.signals == ["TERM", "KILL"]
    assert not stopped.called
    exit_(process, -9)
    assert stopped.called


def test_drain_timeout_forces_the_stop(tmp_path):
    """A worker whose requests never end is terminated after drain_timeout."""
    reactor, _, supervisor = make(1, tmp_path, drain_timeout=3.0)
    process = reactor.processes[0]
    ready(process)
    process.proto.backend.in_flight = 1
    supervisor.stopService()
    reactor.advance(3.0)
    assert process.signals == ["TERM"]


def test_max_requests_recycles_after_the_minimum_lifetime(tmp_path):
    """max_requests replaces a worker, but never before min_lifetime."""
    reactor, _, supervisor = make(1, tmp_path, max_requests=10, min_lifetime=30.0)
    process = reactor.processes[0]
    ready(process)
    backend = process.proto.backend
    backend.served = 10
    supervisor.served(backend)
    assert len(reactor.processes) == 1
    reactor.advance(31)
    supervisor.served(backend)
    assert len(reactor.processes) == 2


class _Finished:
    """What the pool needs of an exchange to finish it."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend


def test_requests_finished_through_the_pool_recycle_at_max_requests(tmp_path):
    """
    The pool itself tells the supervisor when a worker has served
    max_requests (not before), and the worker is replaced then.
    """
    reactor, pool, _supervisor = make(1, tmp_path, max_requests=3, min_lifetime=0.0)
    process = reactor.processes[0]
    ready(process)
    backend = process.proto.backend
    for _ in range(2):
        backend.in_flight += 1
        pool.finished(_Finished(backend), None, False)
    assert len(reactor.processes) == 1
    backend.in_flight += 1
    pool.finished(_Finished(backend), None, False)
    assert backend.served == 3
    assert len(reactor.processes) == 2


def test_jitter_spreads_max_requests(tmp_path):
    """Each worker's max_requests is the setting plus up to the jitter."""
    reactor, _, _supervisor = make(8, tmp_path, max_requests=100, max_requests_jitter=50)
    limits = {p.proto.max_requests for p in reactor.processes}
    assert all(100 <= n <= 150 for n in limits)
    assert len(limits) > 1


def test_a_worker_that_never_reports_ready_is_stopped(tmp_path):
    """start_timeout: a silent worker is terminated and its slot respawned."""
    reactor, _, _supervisor = make(1, tmp_path, start_timeout=5.0)
    process = reactor.processes[0]
    reactor.advance(5.0)
    assert process.signals == ["TERM"]
    exit_(process, -15)
    reactor.advance(1.0)
    assert len(reactor.processes) == 2


def test_operator_drain_and_resume(tmp_path):
    """hold takes a worker out of rotation without stopping it; resume puts it back."""
    reactor, pool, _supervisor = make(1, tmp_path)
    process = reactor.processes[0]
    ready(process)
    process.proto.lifecycle.hold()
    assert pool.backends == []
    assert process.signals == []
    assert process.proto.lifecycle.state() == "drained"
    process.proto.lifecycle.resume()
    assert len(pool.backends) == 1

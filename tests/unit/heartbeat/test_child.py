"""Tests for the heartbeat process's link to the node: pings, node timeout, stdin closing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from clickpass.heartbeat.child import ParentLink, ProcStat, read_proc_stat
from clickpass.heartbeat.engine import NODE_CHECK


class FakeEngine:
    def __init__(self) -> None:
        self.health: list[tuple[str, bool]] = []
        self.maintenance: list[bool] = []

    def set_health(self, name: str, ok: bool) -> None:
        self.health.append((name, ok))

    def set_maintenance(self, on: bool) -> None:
        self.maintenance.append(on)

    def switchover(self, group: str) -> str:
        raise ValueError(f"group {group} is BACKUP here, not MASTER")

    def status(self) -> dict[str, Any]:
        return {"groups": []}


def link() -> tuple[ParentLink, FakeEngine, Clock, StringTransport]:
    engine, clock, transport = FakeEngine(), Clock(), StringTransport()
    parent = ParentLink(engine, clock, node_timeout=2.0)  # type: ignore[arg-type]
    parent.makeConnection(transport)
    return parent, engine, clock, transport


def test_ready_pings_keep_the_node_check_ok() -> None:
    """While the node pings and says it is ready, the node check passes."""
    parent, engine, clock, _ = link()
    for _ in range(20):
        parent.lineReceived(b'{"op": "ping", "ready": true}')
        clock.advance(0.5)
    assert engine.health == [(NODE_CHECK, True)]


def test_silence_longer_than_node_timeout_faults() -> None:
    """No ping for node_timeout (a frozen node) fails the node check; pings restore it."""
    parent, engine, clock, _ = link()
    parent.lineReceived(b'{"op": "ping", "ready": true}')
    clock.advance(1.9)
    assert engine.health == [(NODE_CHECK, True)]
    clock.advance(0.4)
    assert engine.health[-1] == (NODE_CHECK, False)
    parent.lineReceived(b'{"op": "ping", "ready": true}')
    assert engine.health[-1] == (NODE_CHECK, True)


def test_late_watchdog_reads_the_waiting_ping_before_judging_the_node() -> None:
    """This process was not scheduled for 3 s while the node kept pinging (its pings wait
    unread in our stdin): the late watchdog does not fault the node; reading the pings
    keeps it ok. With nothing waiting, the same silence faults."""
    for waiting in (40, 0):
        engine, clock, transport = FakeEngine(), Clock(), StringTransport()
        parent = ParentLink(
            engine,  # type: ignore[arg-type]
            clock,
            node_timeout=2.0,
            pending=(lambda: 40) if waiting else (lambda: 0),
        )
        parent.makeConnection(transport)
        parent.dataReceived(b'{"op": "ping", "ready": true}\n')
        clock.advance(3.0)  # one late watchdog run, before the waiting bytes are read
        if waiting:
            assert engine.health == [(NODE_CHECK, True)]
            parent.dataReceived(b'{"op": "ping", "ready": true}\n')
            clock.advance(1.0)
            assert engine.health == [(NODE_CHECK, True)]
        else:
            assert engine.health == [(NODE_CHECK, True), (NODE_CHECK, False)]


def test_part_of_a_line_from_the_node_shows_it_is_alive() -> None:
    """Bytes from the node count as word from it, even before a whole line has come."""
    parent, engine, clock, _ = link()
    parent.dataReceived(b'{"op": "ping", "ready": true}\n')
    clock.advance(1.5)
    parent.dataReceived(b'{"op": "pi')
    clock.advance(1.5)
    assert engine.health == [(NODE_CHECK, True)]


def test_not_ready_node_keeps_the_check_failing() -> None:
    """A node that pings but is not ready yet does not let the groups take a VIP."""
    parent, engine, clock, _ = link()
    parent.lineReceived(b'{"op": "ping", "ready": false}')
    clock.advance(1)
    assert (NODE_CHECK, True) not in engine.health


def test_requests_are_answered_and_errors_are_one_line() -> None:
    """Commands with an id get a JSON answer; a refused switchover is an error line."""
    parent, engine, _, transport = link()
    parent.lineReceived(b'{"op": "switchover", "group": "app", "id": 7}')
    parent.lineReceived(b'{"op": "maintenance", "on": true, "id": 8}')
    parent.lineReceived(b"not json")
    answers = [json.loads(line) for line in transport.value().splitlines()]
    assert answers[0] == {"id": 7, "ok": False, "error": "group app is BACKUP here, not MASTER"}
    assert answers[1] == {"id": 8, "ok": True, "result": "maintenance on"}
    assert engine.maintenance == [True]


def test_stdin_closing_finishes_the_process() -> None:
    """When the node goes away (stdin closes) the heartbeat process finishes."""
    parent, _, _, _ = link()
    assert not parent.finished.called
    parent.connectionLost(None)
    assert parent.finished.called


class FakeProc:
    """/proc/<pid>/stat of the node as the test sets it: state letter and CPU ticks."""

    def __init__(self, state: str = "S", cpu: int = 1000) -> None:
        self.state = state
        self.cpu = cpu
        self.reads: list[int] = []

    def __call__(self, pid: int) -> ProcStat | None:
        self.reads.append(pid)
        if self.state == "gone":
            return None
        return ProcStat(self.state, self.cpu)


def watched(proc: FakeProc) -> tuple[ParentLink, FakeEngine, Clock]:
    """A link to a ready node (pid 4242) with node_timeout 2 s and a slow factor of 3."""
    engine, clock = FakeEngine(), Clock()
    parent = ParentLink(
        engine,  # type: ignore[arg-type]
        clock,
        node_timeout=2.0,
        node_pid=4242,
        slow_factor=3.0,
        read_stat=proc,
    )
    parent.makeConnection(StringTransport())
    parent.dataReceived(b'{"op": "ping", "ready": true}\n')
    assert engine.health == [(NODE_CHECK, True)]
    return parent, engine, clock


def advance(clock: Clock, seconds: float, step: float = 0.05) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_stopped_node_faults_at_node_timeout() -> None:
    """A node stopped by SIGSTOP (state T) faults as soon as node_timeout has passed."""
    proc = FakeProc()
    _parent, engine, clock = watched(proc)
    proc.state = "T"
    advance(clock, 1.9)
    assert engine.health == [(NODE_CHECK, True)]
    advance(clock, 0.4)
    assert engine.health[-1] == (NODE_CHECK, False)
    assert 4242 in proc.reads


def test_runnable_node_keeps_its_groups_up_to_the_slow_limit() -> None:
    """A silent node that is runnable (waiting for a CPU on a busy host) is slow, not frozen:
    it keeps its groups past node_timeout, and its next ping ends the spell; if it stays
    silent it faults at node_timeout x node_slow_factor."""
    proc = FakeProc(state="R")
    parent, engine, clock = watched(proc)
    advance(clock, 4.0)
    assert engine.health == [(NODE_CHECK, True)]
    assert parent.slow_spells == 1
    parent.dataReceived(b'{"op": "ping", "ready": true}\n')
    advance(clock, 5.9)
    assert engine.health == [(NODE_CHECK, True)]
    assert parent.slow_spells == 2
    advance(clock, 0.4)
    assert engine.health[-1] == (NODE_CHECK, False)


def test_node_using_cpu_is_working_even_when_sampled_asleep() -> None:
    """A node seen asleep (S) whose CPU time keeps growing (it runs between samples) is
    working: it keeps its groups past node_timeout."""
    proc = FakeProc(state="S", cpu=1000)
    parent, engine, clock = watched(proc)
    for _ in range(30):  # 3 s of silence, some CPU every 0.1 s
        clock.advance(0.1)
        proc.cpu += 1
    assert engine.health == [(NODE_CHECK, True)]
    assert parent.slow_spells == 1


def test_hung_node_faults_at_node_timeout() -> None:
    """A node neither runnable nor using CPU while its pings are due (blocked, deadlocked)
    is hung: it faults at node_timeout, as a stopped one does."""
    proc = FakeProc(state="S", cpu=1000)
    parent, engine, clock = watched(proc)
    advance(clock, 1.9)
    assert engine.health == [(NODE_CHECK, True)]
    advance(clock, 0.4)
    assert engine.health[-1] == (NODE_CHECK, False)
    assert parent.slow_spells == 0


def test_node_that_stops_using_cpu_faults_within_half_a_timeout() -> None:
    """CPU used just after the last word, then none (it hung after some work): the node is
    judged on the last node_timeout / 2, so it faults well before the slow limit."""
    proc = FakeProc(state="S", cpu=1000)
    _parent, engine, clock = watched(proc)
    advance(clock, 0.5)
    proc.cpu += 5  # some work, then nothing
    advance(clock, 1.8)  # 2.3 s silent: used CPU since the last word -> working
    assert engine.health == [(NODE_CHECK, True)]
    advance(clock, 1.2)  # 3.5 s: nothing used in the last second -> hung
    assert engine.health[-1] == (NODE_CHECK, False)


def test_node_state_unreadable_faults_at_node_timeout() -> None:
    """When the node's state cannot be read, silence past node_timeout faults, as before."""
    proc = FakeProc(state="gone")
    _parent, engine, clock = watched(proc)
    advance(clock, 2.3)
    assert engine.health[-1] == (NODE_CHECK, False)


def test_read_proc_stat_reads_real_processes() -> None:
    """The /proc reader sees a real sleeping process as S, a stopped one as T, a spinning
    one as R or using CPU, and returns None for a process that does not exist."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 30
        while True:
            slept, spun = read_proc_stat(sleeper.pid), read_proc_stat(spinner.pid)
            assert slept is not None and spun is not None
            if slept.state == "S" and spun.cpu > 20:
                break
            assert time.monotonic() < deadline, (slept, spun)
            time.sleep(0.05)
        sleeper.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while (stat := read_proc_stat(sleeper.pid)) is None or stat.state != "T":
            assert time.monotonic() < deadline, stat
            time.sleep(0.05)
        before = read_proc_stat(spinner.pid)
        time.sleep(0.3)
        after = read_proc_stat(spinner.pid)
        assert before is not None and after is not None
        assert after.state == "R" or after.cpu > before.cpu
    finally:
        for process in (sleeper, spinner):
            process.kill()
            process.wait()
    assert read_proc_stat(sleeper.pid) is None


def test_status_reports_the_longest_silence_and_slow_spells() -> None:
    """The status answer tells how long the node was silent at worst and how often it was
    kept as slow (the startup wait before the first word does not count)."""
    proc = FakeProc(state="R")
    parent, _, clock = watched(proc)
    advance(clock, 0.5)
    parent.dataReceived(b'{"op": "ping", "ready": true}\n')
    advance(clock, 3.0)
    parent.dataReceived(b'{"op": "status", "id": 1}\n')
    transport = parent.transport
    assert isinstance(transport, StringTransport)
    answer = json.loads(transport.value().splitlines()[-1])
    assert answer["result"]["node_watch"] == {"longest_silence": 3.0, "slow_spells": 1}

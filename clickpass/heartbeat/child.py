"""
The heartbeat process: a small child of the node that runs the heartbeat
engine on its own reactor, so a node whose front is saturated, or whose
database is slow, still sends its adverts on time.

It talks to the node over stdin/stdout, one JSON object per line. The node
pings it; when the pings stop the watchdog reads the node's state in
/proc/<pid>/stat to tell a frozen node from a slow one: stopped (SIGSTOP),
or neither runnable nor using CPU (hung), puts the groups in FAULT at once;
a node that is runnable (waiting for a CPU on a busy host) or still using
CPU is given up to node_timeout x node_slow_factor. When stdin closes it
resigns every group, releases every VIP and exits.
A node that stops cleanly says "stop" first; stdin closing without it means
the node died, so the groups resign as FAULT (their peers report a
failover). Failovers this process makes are sent to the node as
{"event": "failover", "details": {...}} lines, for its alerts. It keeps a
TCP process link to each peer's heartbeat process (L{clickpass.heartbeat.link})
so that the death of either is known to the other at once. It asks for real-time scheduling
(SCHED_RR, not inherited by the programs it runs) when the host allows it.

This module must never import the node's application code: it stays small
so that it starts fast and has little to go wrong.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import struct
import sys
import termios
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.stdio import StandardIO
from twisted.internet.task import LoopingCall, react
from twisted.logger import FileLogObserver, Logger, formatEvent, globalLogBeginner
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from clickpass import config as configmod
from clickpass.heartbeat import wire
from clickpass.heartbeat.engine import NODE_CHECK, Engine, load_secret
from clickpass.heartbeat.link import ProcessLink

REALTIME_PRIORITY = 10


@dataclass(frozen=True)
class ProcStat:
    """What /proc/<pid>/stat tells about a process: its state letter and CPU time."""

    state: str  # R running or runnable, S sleeping, D disk wait, T/t stopped, Z zombie...
    cpu: int  # utime + stime, in clock ticks


def read_proc_stat(pid: int) -> ProcStat | None:
    """The state and CPU time of process C{pid} (None if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = data[data.rindex(b")") + 2 :].split()
        return ProcStat(fields[0].decode("ascii"), int(fields[11]) + int(fields[12]))
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


class ParentLink(LineReceiver):
    """The node's end of the conversation, seen from the heartbeat process."""

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024
    log = Logger()

    def __init__(
        self,
        engine: Engine,
        clock: Any,
        node_timeout: float,
        pending: Callable[[], int] = lambda: 0,
        node_pid: int | None = None,
        slow_factor: float = 3.0,
        read_stat: Callable[[int], ProcStat | None] = read_proc_stat,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.node_timeout = node_timeout
        # How many bytes from the node wait in our stdin, unread.
        self.pending = pending
        # The node's process, whose /proc state tells slow from frozen (None: not read).
        self.node_pid = node_pid
        self.slow_timeout = node_timeout * max(1.0, slow_factor)
        self.read_stat = read_stat
        # (time, CPU ticks) of the node: at its last word, then at each check while silent.
        self._cpu_samples: list[tuple[float, int]] = []
        self._slow_since: float | None = None
        self.slow_spells = 0
        # The longest time between two words from the node (seconds), for status.
        self.longest_silence = 0.0
        self._heard_before = False
        self.finished: Deferred[None] = Deferred()
        self.last_ping = clock.seconds()
        self.node_ok = False
        self._ready = False
        self._stopping = False
        self._watchdog = LoopingCall(self._watch)
        self._watchdog.clock = clock

    def connectionMade(self) -> None:
        self.engine.on_failover = self._failover
        self._watchdog.start(max(0.02, self.node_timeout / 8), now=False)

    def _failover(self, details: dict[str, Any]) -> None:
        self.sendLine(json.dumps({"event": "failover", "details": details}).encode("utf-8"))

    def _watch(self) -> None:
        now = self.clock.seconds()
        silent = now - self.last_ping
        alive = silent <= self.node_timeout
        why = f"no word from the node for {silent:.1f}s"
        if not alive and self.node_ok:
            if self.pending() > 0:
                # This timer ran late (this process was not scheduled or was
                # busy) and the node's words wait unread: they are read in this
                # reactor turn. Silence is judged on what the node sent, not on
                # when we got round to reading it.
                return
            verdict = self._judge_silence(now, silent)
            if verdict is None:
                return  # slow, not frozen: it keeps its groups a while longer
            why += f" ({verdict})"
        ok = alive and self._ready
        if ok != self.node_ok:
            self.node_ok = ok
            if not alive:
                self.log.warn("heartbeat: {why}; groups go to FAULT", why=why)
            self.engine.set_health(NODE_CHECK, ok)

    def _judge_silence(self, now: float, silent: float) -> str | None:
        """The node has been silent past node_timeout: a reason to fault it, or None to wait.

        Stopped (SIGSTOP, a debugger) faults at once. Runnable (waiting for a
        CPU on a busy host) or having used CPU over the last node_timeout / 2
        means it is working: wait, up to node_timeout x node_slow_factor in
        all. Neither (asleep or blocked while its pings are due: hung or
        deadlocked) faults.
        """
        stat = self.read_stat(self.node_pid) if self.node_pid is not None else None
        if stat is None:
            return f"no state for node process {self.node_pid}"
        if stat.state in ("T", "t"):
            return f"node process {self.node_pid} is stopped"
        if silent > self.slow_timeout:
            return f"still silent after {self.slow_timeout:.1f}s though state {stat.state}"
        # CPU used since the latest sample at least node_timeout / 2 old.
        older = [cpu for at, cpu in self._cpu_samples if at <= now - self.node_timeout / 2]
        used_cpu = bool(older) and stat.cpu > older[-1]
        self._cpu_samples = [*self._cpu_samples[max(0, len(older) - 1) :], (now, stat.cpu)]
        if stat.state != "R" and not used_cpu:
            return f"node process {self.node_pid} is {stat.state} and used no CPU: hung"
        if self._slow_since is None:
            self._slow_since = self.last_ping
            self.slow_spells += 1
            self.log.warn(
                "heartbeat: the node is slow, not frozen: silent for {silent:.1f}s but "
                "working (state {state}{cpu}); waiting up to {limit:.1f}s before FAULT",
                silent=silent,
                state=stat.state,
                cpu=", using CPU" if used_cpu else "",
                limit=self.slow_timeout,
            )
        return None

    def _heard(self) -> None:
        """Word from the node: remember when, and how much CPU it had used by then."""
        now = self.clock.seconds()
        if self._heard_before:
            self.longest_silence = max(self.longest_silence, now - self.last_ping)
        self._heard_before = True
        self.last_ping = now
        if self._slow_since is not None:
            self.log.info(
                "heartbeat: the node spoke again after {silent:.1f}s of silence",
                silent=now - self._slow_since,
            )
            self._slow_since = None
        stat = self.read_stat(self.node_pid) if self.node_pid is not None else None
        self._cpu_samples = [(now, stat.cpu)] if stat is not None else []

    def dataReceived(self, data: bytes) -> None:
        # Any bytes (even part of a line) show the node is alive.
        self._heard()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            self.log.warn("heartbeat: malformed line from the node ignored")
            return
        self.last_ping = self.clock.seconds()
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            if op == "ping":
                self._ready = bool(request.get("ready", True))
                self._watch()
                return
            if op == "health":
                self.engine.set_health(str(request["name"]), bool(request["ok"]))
                return
            if op == "maintenance":
                self.engine.set_maintenance(bool(request["on"]))
                reply["result"] = f"maintenance {'on' if request['on'] else 'off'}"
            elif op == "switchover":
                reply["result"] = self.engine.switchover(str(request["group"]))
            elif op == "status":
                reply["result"] = {
                    **self.engine.status(),
                    "node_watch": {
                        "longest_silence": round(self.longest_silence, 3),
                        "slow_spells": self.slow_spells,
                    },
                }
            elif op == "stop":
                self._stopping = True
                self._finish()
                return
            else:
                raise ValueError(f"unknown heartbeat operation {op!r}")
            reply["ok"] = True
        except (ValueError, KeyError) as e:
            reply.update(ok=False, error=str(e))
        if request.get("id") is not None:
            self.sendLine(json.dumps(reply, default=str).encode("utf-8"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self._stopping and not self.finished.called:
            self.log.warn("heartbeat: the node went away without stopping; resigning as FAULT")
            self.node_ok = False
            self.engine.set_health(NODE_CHECK, False)
        self._finish()

    def _finish(self) -> None:
        if self._watchdog.running:
            self._watchdog.stop()
        if not self.finished.called:
            self.finished.callback(None)


def _stdin_pending() -> int:
    """Bytes waiting unread in our stdin (0 when that cannot be told)."""
    try:
        answer = fcntl.ioctl(0, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", answer)[0])


def set_realtime() -> str:
    """Ask for SCHED_RR (children reset to normal); fall back to a better nice level."""
    try:
        os.sched_setscheduler(
            0,
            os.SCHED_RR | os.SCHED_RESET_ON_FORK,
            os.sched_param(REALTIME_PRIORITY),
        )
        return "SCHED_RR"
    except (OSError, AttributeError):
        pass
    try:
        os.nice(-10)
        return "nice -10"
    except OSError:
        return "normal"


async def run(reactor: Any, config_path: str) -> None:
    log = Logger()
    settings = configmod.load(config_path)
    secret = load_secret(settings)
    epoch = wire.next_epoch(settings.data_path("cluster.epoch"))
    scheduling = set_realtime() if settings.cluster.realtime else "normal"
    engine = Engine(
        reactor,
        settings.node.name,
        settings.cluster,
        secret,
        epoch,
        extra_checks=[(NODE_CHECK, 0)],
    )
    link = ParentLink(
        engine,
        reactor,
        settings.cluster.node_timeout,
        pending=_stdin_pending,
        node_pid=os.getppid(),
        slow_factor=settings.cluster.node_slow_factor,
    )
    StandardIO(link, reactor=reactor)
    engine.set_health(NODE_CHECK, False)  # until the node says it is ready
    engine.start()
    # Peers learn at once when this process dies, and we when theirs does.
    process_link = None
    if settings.cluster.role == "member":
        process_link = ProcessLink(
            reactor,
            engine.key,
            settings.node.name,
            settings.cluster.bind,
            settings.cluster.port,
            engine.link_peers(),
            engine.peer_process_gone,
        )
        engine.on_peer_restart = process_link.peer_restarted
        process_link.start()
    log.info(
        "heartbeat process {pid} running ({scheduling})", pid=os.getpid(), scheduling=scheduling
    )
    await link.finished
    await engine.stop()
    if process_link is not None:
        process_link.stop()
    log.info("heartbeat process {pid} stopped", pid=os.getpid())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clickpass-heartbeat")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    # One line per event; the node adds the time and the "heartbeat:" prefix.
    observer = FileLogObserver(sys.stderr, lambda event: (formatEvent(event) or "") + "\n")
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def start(reactor: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(run(reactor, args.config))

        def failed(failure: Failure) -> None:
            if failure.check(configmod.ConfigError, OSError):
                sys.stderr.write(f"heartbeat cannot start: {failure.value}\n")
                raise SystemExit(1)
            failure.raiseException()

        return d.addErrback(failed)

    react(start)


if __name__ == "__main__":
    main()

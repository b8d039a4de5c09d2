"""
The heartbeat process: a small child of the node that runs the heartbeat
engine on its own reactor, so a node whose front is saturated, or whose
database is slow, still sends its adverts on time.

It talks to the node over stdin/stdout, one JSON object per line. The node
pings it; when the pings stop (the node is frozen) the groups go to FAULT,
and when stdin closes it resigns every group, releases every VIP and exits.
A node that stops cleanly says "stop" first; stdin closing without it means
the node died, so the groups resign as FAULT (their peers report a
failover). Failovers this process makes are sent to the node as
{"event": "failover", "details": {...}} lines, for its alerts. It keeps a
TCP process link to each peer's heartbeat process (L{clickpass.cluster.link})
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
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.stdio import StandardIO
from twisted.internet.task import LoopingCall, react
from twisted.logger import FileLogObserver, Logger, formatEvent, globalLogBeginner
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from clickpass import config as configmod
from clickpass.cluster import wire
from clickpass.cluster.engine import NODE_CHECK, Engine, load_secret
from clickpass.cluster.link import ProcessLink

REALTIME_PRIORITY = 10


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
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.node_timeout = node_timeout
        # How many bytes from the node wait in our stdin, unread.
        self.pending = pending
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
        alive = self.clock.seconds() - self.last_ping <= self.node_timeout
        if not alive and self.node_ok and self.pending() > 0:
            # This timer ran late (this process was not scheduled or was
            # busy) and the node's words wait unread: they are read in this
            # reactor turn. Silence is judged on what the node sent, not on
            # when we got round to reading it.
            return
        ok = alive and self._ready
        if ok != self.node_ok:
            self.node_ok = ok
            if not alive:
                self.log.warn(
                    "heartbeat: no word from the node for {timeout}s; groups go to FAULT",
                    timeout=self.node_timeout,
                )
            self.engine.set_health(NODE_CHECK, ok)

    def dataReceived(self, data: bytes) -> None:
        # Any bytes (even part of a line) show the node is alive.
        self.last_ping = self.clock.seconds()
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
                reply["result"] = self.engine.status()
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
    link = ParentLink(engine, reactor, settings.cluster.node_timeout, pending=_stdin_pending)
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

"""
The node's cluster service: runs the heartbeat (in its own child process by
default), keeps it told that the node is alive and how healthy it is, and
answers the C{cluster.*} control commands.

Other parts of the node report health with L{ClusterService.set_health}
(e.g. C{"workers"}, C{"database"}); groups that list a check of that name
lower their priority or go to FAULT. A failover this node makes (it took a
VIP over from a master that went silent or faulted) is raised as the
C{failover.happened} alert.

This module must never block the node's reactor, and a heartbeat process
that dies is restarted, never allowed to take the node down.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass import config as configmod
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.heartbeat import wire
from clickpass.heartbeat.engine import NODE_CHECK, Engine, load_secret

RESTART_DELAY = 1.0
STOP_TIMEOUT = 5.0
CALL_TIMEOUT = 5.0
ALERT_FAILOVER = "failover.happened"


class _ChildProtocol(ProcessProtocol):
    log = Logger()

    def __init__(self, service: ClusterService) -> None:
        self.service = service
        self._out = b""
        self._err = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict) and "event" in answer:
                self.service._event(answer)
            elif isinstance(answer, dict):
                self.service._answer(answer)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self.log.info("heartbeat: {line}", line=text)

    def processEnded(self, reason: Failure) -> None:
        self.service._child_ended(self, reason)
        self.ended.callback(None)


class ClusterService(Service):
    """The heartbeat, seen from the node."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: configmod.Settings,
        ready: Callable[[], bool] = lambda: True,
        alerts: Any = None,
    ) -> None:
        self.setName("cluster")
        self.reactor = reactor
        self.settings = settings
        self.ready = ready
        # clickpass.monitor.alerts.Alerts (or None): failovers are raised there.
        self.alerts = alerts
        self.health: dict[str, bool] = {}
        self.maintenance = False
        self.engine: Engine | None = None
        self.restarts = 0
        self._child: _ChildProtocol | None = None
        self._pending: dict[int, Deferred[Any]] = {}
        self._next_id = 0
        self._restart: IDelayedCall | None = None
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor
        # Given by the node before start (inline heartbeat only): see
        # Engine(wrap_vip=, wrap_notifier=) and follow().
        self.wrap_vip: Callable[[Any, Any], Any] | None = None
        self.wrap_notifier: Callable[[Any, Any], Any] | None = None

    def follow(
        self, wrap_vip: Callable[[Any, Any], Any], wrap_notifier: Callable[[Any, Any], Any]
    ) -> None:
        """
        Have the heartbeat engine's VIPs and notifiers wrapped (the database
        agent follows the db group). Called by the node that builds both,
        before start: the agent reports its health to this service, and this
        service's engine acts through the agent, so neither can be built
        with the other.
        """
        self.wrap_vip = wrap_vip
        self.wrap_notifier = wrap_notifier

    # Lifecycle.

    def startService(self) -> None:
        super().startService()
        cluster = self.settings.cluster
        if cluster.process == "inline":
            secret = load_secret(self.settings)
            epoch = wire.next_epoch(self.settings.data_path("cluster.epoch"))
            self.engine = Engine(
                self.reactor,
                self.settings.node.name,
                cluster,
                secret,
                epoch,
                extra_checks=[(NODE_CHECK, 0)],
                wrap_vip=self.wrap_vip,
                wrap_notifier=self.wrap_notifier,
            )
            self.engine.set_health(NODE_CHECK, False)
            self.engine.on_failover = self._failover
            self.engine.start()
        else:
            self._spawn()
        self._pinger.start(max(0.02, cluster.node_timeout / 4), now=True)

    def _spawn(self) -> None:
        self._restart = None
        protocol = _ChildProtocol(self)
        args = [sys.executable, "-m", "clickpass.heartbeat.child", "--config", self.settings.source]
        transport = self.reactor.spawnProcess(
            protocol, sys.executable, args, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
        )
        self._child = protocol
        self.log.info("cluster: heartbeat process {pid} started", pid=transport.pid)
        # Tell a (re)started heartbeat everything it must know at once.
        for name, ok in self.health.items():
            self._write({"op": "health", "name": name, "ok": ok})
        if self.maintenance:
            self._write({"op": "maintenance", "on": True})
        self._ping()

    def _child_ended(self, protocol: _ChildProtocol, reason: Failure) -> None:
        if protocol is not self._child:
            return
        self._child = None
        for d in self._pending.values():
            d.errback(CommandError("the heartbeat process exited"))
        self._pending.clear()
        if self.running:
            self.restarts += 1
            self.log.error(
                "cluster: heartbeat process ended ({reason}); restarting in {delay}s",
                reason=str(reason.value),
                delay=RESTART_DELAY,
            )
            self._restart = self.reactor.callLater(RESTART_DELAY, self._spawn)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._pinger.running:
            self._pinger.stop()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        if self.engine is not None:
            engine, self.engine = self.engine, None
            return engine.stop()
        child, self._child = self._child, None
        if child is None or child.transport is None:
            return succeed(None)
        # "stop" then closing stdin makes the heartbeat resign, release its
        # VIPs and exit (stdin closing alone means the node died: FAULT).
        child.transport.write(b'{"op": "stop"}\n')
        child.transport.closeStdin()
        kill = self.reactor.callLater(STOP_TIMEOUT, _kill, child)

        def stopped(_: object) -> None:
            if kill.active():
                kill.cancel()

        return child.ended.addCallback(stopped)

    # Talking to the heartbeat.

    def _write(self, message: dict[str, Any]) -> None:
        if self._child is not None and self._child.transport is not None:
            self._child.transport.write(json.dumps(message).encode("utf-8") + b"\n")

    def _ping(self) -> None:
        ready = bool(self.ready())
        if self.engine is not None:
            self.engine.set_health(NODE_CHECK, ready)
        else:
            self._write({"op": "ping", "ready": ready})

    def _event(self, event: dict[str, Any]) -> None:
        details = event.get("details")
        if event.get("event") == "failover" and isinstance(details, dict):
            self._failover(details)

    def _failover(self, details: dict[str, Any]) -> None:
        """This node took a VIP over from a master that failed: raise failover.happened."""
        summary = (
            f"VIP failover: {details.get('node')} took {details.get('vip')} "
            f"(group {details.get('group')}) over from {details.get('from')} "
            f"({details.get('reason')})"
        )
        self.log.warn("cluster: {summary}", summary=summary)
        if self.alerts is not None:
            self.alerts.raise_(ALERT_FAILOVER, summary, details)

    def _answer(self, answer: dict[str, Any]) -> None:
        d = self._pending.pop(answer.get("id", -1), None)
        if d is None:
            return
        if answer.get("ok"):
            d.callback(answer.get("result"))
        else:
            d.errback(CommandError(str(answer.get("error", "heartbeat error"))))

    async def call(self, op: str, **args: Any) -> Any:
        """Ask the heartbeat (status, switchover, maintenance); one-line CommandError on failure."""
        if self.engine is not None:
            return self._inline(op, **args)
        if self._child is None:
            raise CommandError("the heartbeat process is not running (restarting?)")
        self._next_id += 1
        d: Deferred[Any] = Deferred()
        self._pending[self._next_id] = d
        self._write({"op": op, "id": self._next_id, **args})
        d.addTimeout(CALL_TIMEOUT, self.reactor)
        return await d

    def _inline(self, op: str, **args: Any) -> Any:
        assert self.engine is not None
        try:
            if op == "status":
                return self.engine.status()
            if op == "switchover":
                return self.engine.switchover(args["group"])
            if op == "maintenance":
                self.engine.set_maintenance(bool(args["on"]))
                return f"maintenance {'on' if args['on'] else 'off'}"
        except ValueError as e:
            raise CommandError(str(e)) from None
        raise CommandError(f"unknown heartbeat operation {op!r}")

    # For the rest of the node.

    def set_health(self, name: str, ok: bool) -> None:
        """Report a health input (e.g. "workers", "database") to every group."""
        if self.health.get(name) == ok:
            return
        self.health[name] = ok
        if self.engine is not None:
            self.engine.set_health(name, ok)
        else:
            self._write({"op": "health", "name": name, "ok": ok})

    def register_commands(self, commands: CommandRegistry) -> None:
        commands.register("cluster.status", self._cmd_status, "heartbeat groups, states, peers")
        commands.register(
            "cluster.switchover", self._cmd_switchover, "hand a group's VIP to its peer"
        )
        commands.register(
            "cluster.maintenance", self._cmd_maintenance, "stay BACKUP in every group (on|off)"
        )

    async def _cmd_status(self, args: Any) -> Any:
        status = await self.call("status")
        status["process"] = self.settings.cluster.process
        status["restarts"] = self.restarts
        if self._child is not None and self._child.transport is not None:
            status["pid"] = self._child.transport.pid
        return status

    async def _cmd_switchover(self, args: Any) -> Any:
        group = args.get("group")
        if not isinstance(group, str):
            raise CommandError("cluster.switchover needs a group name")
        return await self.call("switchover", group=group)

    async def _cmd_maintenance(self, args: Any) -> Any:
        on = args.get("on")
        if not isinstance(on, bool):
            raise CommandError("cluster.maintenance needs on: true or false")
        self.maintenance = on
        return await self.call("maintenance", on=on)


def _kill(child: _ChildProtocol) -> None:
    if child.transport is not None:
        with contextlib.suppress(Exception):  # already gone
            child.transport.signalProcess("KILL")


__all__ = ["ClusterService"]

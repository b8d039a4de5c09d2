"""
The database agent inside a node: builds the L{DbAgent} from C{[dbagent]},
hooks it into the heartbeat's C{db} group (the group's state changes feed
the agent, the group's VIP goes through the agent's gate so it is taken only
once this host is writable, and the agent's health is one of the group's
checks), tells it whether the peer is heard, raises and resolves the
database alerts, and answers the C{db.*} control commands.

The heartbeat must run inline (C{[cluster] process = "inline"}): the agent
follows the group's state on the node's reactor. This module must never
block the reactor (the SQL runs in the agent's own thread pool) and never
take the node down: a bad command is a one-line error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from clickpass import config as configmod
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.dbagent import mariadb as ops
from clickpass.dbagent.agent import AgentConfig, DbAgent, VipGate, one_line, peer_vip_off
from clickpass.dbagent.machine import Role
from clickpass.heartbeat.group import DOWN_ADVERTS
from clickpass.heartbeat.wire import Health, State

ALERT_FAILOVER = "failover.happened"
ALERT_DEGRADED = "semisync.degraded"
ALERT_QUARANTINED = "db.quarantined"


def agent_config(settings: configmod.Settings) -> AgentConfig:
    """The [dbagent] section as the agent runs by it, for this node."""
    db = settings.dbagent
    section = {f.name: getattr(db, f.name) for f in dataclasses.fields(db)}
    if db.server_pid_file:
        section["server_pid_file"] = str(settings.data_path(db.server_pid_file))
    return AgentConfig(node=settings.node.name, **section)


def _password(settings: configmod.Settings, value: str, key: str) -> str:
    if not value:
        return ""
    return configmod.read_secret_file(settings.data_path(value), key)


class _Follow:
    """The db group's notifier: the hooks run as before, and the agent hears the change."""

    def __init__(self, inner: Any, agent: DbAgent) -> None:
        self.inner = inner
        self.agent = agent

    def notify(self, group: str, state: State) -> None:
        self.inner.notify(group, state)
        self.agent.notify(group, state)

    @property
    def counters(self) -> Any:
        return getattr(self.inner, "counters", {})

    def idle(self) -> Deferred[object]:
        idle = getattr(self.inner, "idle", None)
        return idle() if idle is not None else succeed(None)


class DbHost(MultiService):
    """The agent, its thread pool, the peer-presence feed and the alerts."""

    log = Logger()

    def __init__(self, reactor: Any, settings: configmod.Settings, cluster: Any, alerts: Any):
        super().__init__()
        self.setName("dbagent")
        self.reactor = reactor
        self.settings = settings
        self.cluster = cluster
        self.alerts = alerts
        db = settings.dbagent
        self.group_name = db.group
        admin_password = _password(
            settings, db.admin_password_file, "[dbagent] admin_password_file"
        )
        repl_password = _password(
            settings, db.replication_password_file, "[dbagent] replication_password_file"
        )
        self.pool = ThreadPool(2, 8, "dbagent")
        local = ops.Server(
            reactor,
            self.pool,
            ops.ServerAddress(
                host=db.local_host,
                port=db.local_port,
                unix_socket=str(settings.data_path(db.local_socket)) if db.local_socket else "",
                user=db.admin_user,
                password=admin_password,
            ),
            connect_timeout=min(1.0, db.check_timeout),
        )
        peer = ops.Server(
            reactor,
            self.pool,
            ops.ServerAddress(
                host=db.peer_host or "127.0.0.1",
                port=db.peer_port,
                unix_socket=str(settings.data_path(db.peer_socket)) if db.peer_socket else "",
                user=db.admin_user,
                password=admin_password,
            ),
            connect_timeout=min(1.0, db.fence_timeout),
        )
        account = ops.ReplicaAccount(
            db.replication_host or db.peer_host or "127.0.0.1",
            db.replication_port or db.peer_port,
            db.replication_user,
            repl_password,
        )
        self.gate: VipGate | None = None
        self.agent = DbAgent(
            reactor,
            agent_config(settings),
            local,
            peer,
            account,
            cluster,
            None,
            switchover=self._switchover,
        )
        self.agent.setServiceParent(self)
        self._alerted_promotions = 0
        self._watch = LoopingCall(self._tick)
        self._watch.clock = reactor

    # Hooks into the heartbeat engine (the node gives them to the cluster
    # service: see Engine(wrap_vip=, wrap_notifier=)).

    def wrap_vip(self, group: Any, inner: Any) -> Any:
        """The db group's VIP goes through the agent's gate; other groups' as they are."""
        if group.name != self.group_name:
            return inner
        self.gate = self.agent.vip = VipGate(inner)
        self.gate.drain = self.agent.drain_clients
        return self.gate

    def wrap_notifier(self, group: Any, inner: Any) -> Any:
        """The db group's state changes also reach the agent."""
        if group.name != self.group_name:
            return inner
        return _Follow(inner, self.agent)

    def _switchover(self) -> str:
        engine = self.cluster.engine
        if engine is None:
            raise ValueError("the heartbeat is not running")
        result: str = engine.switchover(self.group_name)
        return result

    # Lifecycle.

    def startService(self) -> None:
        self.pool.start()
        super().startService()
        self._watch.start(0.05, now=False)

    def stopService(self) -> Deferred[Any]:
        if self._watch.running:
            self._watch.stop()
        d: Deferred[Any] = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        await super().stopService()
        self.pool.stop()

    # Peer presence and alerts.

    def _tick(self) -> None:
        engine = self.cluster.engine
        group = engine.groups.get(self.group_name) if engine is not None else None
        if group is not None:
            now = self.reactor.seconds()
            heard = [
                view
                for view in group.peers.values()
                if now - view.heard_at <= DOWN_ADVERTS * view.interval
                and view.state in (State.BACKUP, State.MASTER)
                and view.health != Health.FAULT
            ]
            lease = float(group.settings.lease)
            self.agent.set_peer_present(
                bool(heard),
                master=any(view.state == State.MASTER for view in heard),
                vip_off=bool(group.peers)
                and all(peer_vip_off(view, now, lease) for view in group.peers.values()),
                server_down=bool(group.peers)
                and all(view.health == Health.FAULT for view in group.peers.values()),
                heard=any(
                    now - view.heard_at <= DOWN_ADVERTS * view.interval
                    for view in group.peers.values()
                ),
            )
        self._alerts()

    def _alerts(self) -> None:
        if self.alerts is None:
            return
        agent = self.agent
        node = self.settings.node.name
        promoted = agent.counters["promoted"]
        if promoted > self._alerted_promotions:
            self._alerted_promotions = promoted
            if agent.last_promotion == "automatic":
                self.alerts.raise_(
                    ALERT_FAILOVER,
                    f"database failover: {node} is now the primary",
                    {"node": node, "status": "acknowledge with clickpass-ctl db ack"},
                )
        if agent.role == Role.DEGRADED:
            self.alerts.raise_(
                ALERT_DEGRADED,
                f"database {node} is primary without a replica: writes are not replicated",
                {"node": node},
            )
        else:
            self.alerts.resolve(ALERT_DEGRADED)
        if agent.role == Role.QUARANTINED:
            self.alerts.raise_(
                ALERT_QUARANTINED,
                f"database {node} is quarantined (errant transactions); an operator decides",
                {"node": node, "problems": "; ".join(agent.problems)},
            )
        else:
            self.alerts.resolve(ALERT_QUARANTINED)

    # Commands.

    def register_commands(self, commands: CommandRegistry) -> None:
        commands.register("db.status", self._cmd_status, "database role, GTIDs, lag, semi-sync")
        commands.register("db.switchover", self._cmd_switchover, "hand the primary role over")
        commands.register("db.ack", self._cmd_ack, "allow automatic failover again")
        commands.register("db.rejoin", self._cmd_rejoin, "rejoin as replica (force: quarantined)")
        commands.register("db.reclone", self._cmd_reclone, "copy the primary's data anew")

    async def _cmd_status(self, args: Any) -> dict[str, Any]:
        return self.agent.status()

    async def _cmd_switchover(self, args: Any) -> Any:
        try:
            return await self.agent.switchover()
        except ValueError as e:
            raise CommandError(str(e)) from None
        except Exception as e:
            raise CommandError(f"switchover failed: {one_line(e)}") from None

    async def _cmd_ack(self, args: Any) -> Any:
        try:
            result = await self.agent.ack()
        except Exception as e:
            raise CommandError(f"ack failed: {one_line(e)}") from None
        if self.alerts is not None:
            self.alerts.resolve(ALERT_FAILOVER)
        return result

    async def _cmd_rejoin(self, args: Any) -> Any:
        force = bool(args.get("force", False)) if isinstance(args, dict) else False
        role = self.agent.role
        if role == Role.QUARANTINED:
            if not force:
                raise CommandError(
                    "quarantined (errant: "
                    + ("; ".join(self.agent.problems) or "unknown")
                    + "); 'db rejoin --force' keeps those transactions here, 'db reclone' "
                    "replaces this host's data with the primary's"
                )
            return self.agent.release()
        if role == Role.FENCED:
            self.agent.machine.retry()
            return {"role": self.agent.role.value}
        raise CommandError(f"this host is {role.value}; only a fenced or quarantined host rejoins")

    async def _cmd_reclone(self, args: Any) -> Any:
        try:
            return await self.agent.reclone()
        except ValueError as e:
            raise CommandError(f"db reclone: {e}") from None
        except Exception as e:
            raise CommandError(f"db reclone failed: {one_line(e)}") from None


__all__ = ["DbHost", "agent_config"]

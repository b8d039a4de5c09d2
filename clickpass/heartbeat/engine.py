"""
The heartbeat engine: one UDP socket, the node's groups, and the outbox
that signs and sends their messages.

It runs inside the heartbeat process (L{clickpass.heartbeat.child}) or, with
C{[cluster] process = "inline"}, inside the node. It must never block: the
socket is non-blocking UDP, and the VIP and hooks go through spawnProcess.
A packet that cannot be used is counted and dropped; it never raises.
"""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from clickpass.config import ConfigError, Settings, read_secret_file
from clickpass.heartbeat import wire
from clickpass.heartbeat.actions import (
    CommandRunner,
    HandoffBridge,
    HookRunner,
    IpCommand,
    NetlinkAddresses,
    VipManager,
    parked_settings,
)
from clickpass.heartbeat.group import Group, WitnessGroup
from clickpass.heartbeat.settings import ClusterGroupSettings, ClusterSettings, parse_address
from clickpass.heartbeat.wire import Health, Kind, Message, State

NODE_CHECK = "node"
MIN_SECRET = 16


def load_secret(settings: Settings) -> bytes:
    """The heartbeat secret from C{[cluster] secret_file}, or a one-line ConfigError."""
    key = "[cluster] secret_file"
    path = settings.data_path(settings.cluster.secret_file)
    text = read_secret_file(path, key)
    if len(text) < MIN_SECRET:
        raise ConfigError(f"{key}: {path} holds {len(text)} characters; at least 16 are needed")
    return text.encode("utf-8")


def _addresses(settings: Any, runner: CommandRunner) -> NetlinkAddresses | IpCommand:
    """rtnetlink where there is one (Linux), else iproute2's ip."""
    if hasattr(socket, "AF_NETLINK"):
        return NetlinkAddresses(settings)
    return IpCommand(settings, runner)


class UdpPort(Protocol):
    """What the engine uses of the UDP port C{listenUDP} gives (L{twisted.internet.udp.Port})."""

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram; raises OSError when the kernel refuses it."""

    def doRead(self) -> None:
        """Read and hand on every datagram waiting in the socket, without waiting."""

    def stopListening(self) -> object:
        """Close the socket."""


class HeartbeatProtocol(DatagramProtocol):
    """Hands every datagram to the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.engine.packet(datagram, addr)


class Engine:
    """All heartbeat groups of one node."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        node_id: str,
        cluster: ClusterSettings,
        secret: bytes,
        epoch: int,
        extra_checks: Sequence[tuple[str, int]] = (),
        vip_factory: Any = None,
        notifier_factory: Any = None,
        wrap_vip: Any = None,
        wrap_notifier: Any = None,
    ) -> None:
        self.reactor = reactor
        self.node_id = node_id
        self.cluster = cluster
        self.key = wire.derive_key(secret)
        self.sequencer = wire.Sequencer(epoch)
        self.receiver = wire.Receiver(self.key, node_id)
        self.counters: Counter[str] = Counter()
        self.port: UdpPort | None = None
        self.maintenance = False
        self.witness = (
            parse_address(cluster.witness, cluster.port)
            if cluster.witness and cluster.role == "member"
            else None
        )
        self.destinations: dict[str, list[tuple[str, int]]] = {}
        self.groups: dict[str, Group] = {}
        self.witness_groups: dict[str, WitnessGroup] = {}
        self.vips: dict[str, Any] = {}
        self.hooks: dict[str, Any] = {}
        # Told the details of every failover a group of this node makes.
        self.on_failover: Callable[[dict[str, Any]], None] | None = None
        # Told the node id of a peer that restarted (a new epoch), for the
        # process link; and the epoch last heard from each peer.
        self.on_peer_restart: Callable[[str], None] | None = None
        self.epochs: dict[str, int] = {}
        # Addresses whose last advert carried no hears list: a node from
        # before that field, which drops a message that has it. Our adverts
        # go to them without it (so mixed versions still hear each other
        # during a rolling upgrade); to everyone else, with it.
        self.without_hears: set[str] = set()
        runner = CommandRunner(reactor)
        for settings in cluster.group:
            self._add_group(
                settings,
                runner,
                extra_checks,
                vip_factory,
                notifier_factory,
                wrap_vip,
                wrap_notifier,
            )

    def _add_group(
        self,
        settings: ClusterGroupSettings,
        runner: CommandRunner,
        extra_checks: Sequence[tuple[str, int]],
        vip_factory: Any,
        notifier_factory: Any,
        wrap_vip: Any,
        wrap_notifier: Any,
    ) -> None:
        """
        One group: its destinations, and (on a member) its L{Group} with its
        VIP and hooks (from the factories given, or the real ones), wrapped
        by the other parts of the node that follow it.
        """
        peers = [parse_address(p, self.cluster.port) for p in settings.peers]
        if self.witness is not None:
            peers.append(self.witness)
        self.destinations[settings.name] = peers
        if self.cluster.role == "witness":
            self.witness_groups[settings.name] = WitnessGroup(
                settings, self.reactor, self, self.node_id
            )
            return
        vip = (
            vip_factory(settings)
            if vip_factory is not None
            else VipManager(
                settings,
                _addresses(settings, runner),
                self.reactor,
                parking=_addresses(parked_settings(settings), runner),
                bridge=HandoffBridge(settings, runner),
            )
        )
        hooks = (
            notifier_factory(settings)
            if notifier_factory is not None
            else HookRunner(settings.notify, settings.notify_timeout, runner)
        )
        # Hooks for other parts of the node (the database agent gates the
        # db group's VIP and follows its state): wrap(settings, inner).
        if wrap_vip is not None:
            vip = wrap_vip(settings, vip)
        if wrap_notifier is not None:
            hooks = wrap_notifier(settings, hooks)
        group = Group(
            settings,
            self.node_id,
            self.reactor,
            self,
            vip,
            hooks,
            witness_required=self.witness is not None,
        )
        for name, weight in extra_checks:
            group.checks.setdefault(name, (weight, True))
        group.on_failover = self._failover
        group.drain = self.drain
        self.groups[settings.name] = group
        self.vips[settings.name] = vip
        self.hooks[settings.name] = hooks

    def peer_process_gone(self, node: str) -> None:
        """A peer's heartbeat process is gone (its link closed): tell every group."""
        for group in self.groups.values():
            group.peer_process_gone(node)

    def link_peers(self) -> list[tuple[str, int]]:
        """The peers' heartbeat addresses (not the witness's), for the process link."""
        peers = [a for group in self.destinations.values() for a in group if a != self.witness]
        return list(dict.fromkeys(peers))

    def _failover(self, details: dict[str, Any]) -> None:
        if self.on_failover is not None:
            self.on_failover(details)

    # Lifecycle.

    def start(self) -> None:
        self.port = self.reactor.listenUDP(
            self.cluster.port,
            HeartbeatProtocol(self),
            interface=self.cluster.bind,
            maxPacketSize=wire.RECEIVE_LIMIT,
        )
        self.log.info(
            "cluster heartbeat {node} (epoch {epoch}) on udp {bind}:{port}, groups {groups}",
            node=self.node_id,
            epoch=self.sequencer.epoch,
            bind=self.cluster.bind,
            port=self.cluster.port,
            groups=",".join(self.destinations),
        )
        for witness in self.witness_groups.values():
            witness.start()
        for group in self.groups.values():
            group.start()

    def stop(self) -> Deferred[Any]:
        """Resign every group, release every VIP, wait for that, then close."""
        for group in self.groups.values():
            group.stop()
        for witness in self.witness_groups.values():
            witness.stop()
        waits = [v.idle() for v in self.vips.values() if hasattr(v, "idle")]
        waits += [h.idle() for h in self.hooks.values() if hasattr(h, "idle")]

        def close(_: object) -> None:
            for vip in self.vips.values():
                if hasattr(vip, "close"):
                    vip.close()
            if self.port is not None:
                self.port.stopListening()
                self.port = None

        return DeferredList(waits).addCallback(close)

    # Operations.

    def set_health(self, name: str, ok: bool) -> None:
        for group in self.groups.values():
            group.set_health(name, ok)

    def set_maintenance(self, on: bool) -> None:
        self.maintenance = on
        for group in self.groups.values():
            group.set_maintenance(on)

    def switchover(self, name: str) -> str:
        group = self.groups.get(name)
        if group is None:
            raise ValueError(f"no group {name!r} here (groups: {', '.join(self.groups) or '-'})")
        return group.switchover()

    def status(self) -> dict[str, Any]:
        groups = []
        for name, group in self.groups.items():
            status = group.status()
            vip = self.vips[name]
            if hasattr(vip, "status_counters"):
                status["counters"].update(vip.status_counters())
            hooks = self.hooks[name]
            if hasattr(hooks, "counters"):
                status["counters"].update(hooks.counters)
            groups.append(status)
        groups += [w.status() for w in self.witness_groups.values()]
        return {
            "node": self.node_id,
            "role": self.cluster.role,
            "epoch": self.sequencer.epoch,
            "maintenance": self.maintenance,
            "witness": self.cluster.witness or None,
            "groups": groups,
            "packets": dict(self.receiver.counters) | dict(self.counters),
        }

    # Packets.

    def packet(self, data: bytes, addr: Any) -> None:
        message = self.receiver.accept(data)
        if message is None:
            return
        if message.kind == Kind.ADVERT:
            if message.hears is None:
                self.without_hears.add(str(addr[0]))
            else:
                self.without_hears.discard(str(addr[0]))
        before = self.epochs.get(message.node)
        self.epochs[message.node] = message.epoch
        if before is not None and before != message.epoch and self.on_peer_restart is not None:
            self.on_peer_restart(message.node)
        if message.group in self.groups:
            self.groups[message.group].receive(message, str(addr[0]))
        elif message.group in self.witness_groups:
            self.witness_groups[message.group].receive(message, addr)
        else:
            self.counters["unknown_group"] += 1

    def drain(self) -> None:
        """Read (and handle) every datagram already waiting in the socket, without waiting."""
        if self.port is None:
            return
        try:
            self.port.doRead()
        except Exception:
            self.log.failure("cluster: reading waiting heartbeat packets failed")

    def _send(self, message: Message, addresses: Sequence[tuple[str, int]]) -> int:
        """Send to each address; how many sends the kernel took."""
        if self.port is None:
            return 0
        data = wire.encode(message, self.key)
        legacy: bytes | None = None
        sent = 0
        for address in addresses:
            payload = data
            if message.hears is not None and address[0] in self.without_hears:
                if legacy is None:
                    legacy = wire.encode(dataclasses.replace(message, hears=None), self.key)
                payload = legacy
            try:
                self.port.write(payload, address)
                self.counters["sent"] += 1
                sent += 1
            except OSError:
                # Unreachable peer or link down: adverts are periodic, so
                # the next one is the retry (the group steps down when none
                # goes out for long).
                self.counters["send_failed"] += 1
        return sent

    def _message(self, kind: Kind, group: str, state: State, priority: int, **kw: Any) -> Message:
        epoch, seq = self.sequencer.next()
        settings = self.groups[group].settings if group in self.groups else None
        interval = (
            settings.advert_interval
            if settings is not None
            else self.witness_groups[group].settings.advert_interval
        )
        return Message(
            kind=kind,
            group=group,
            node=self.node_id,
            state=state,
            priority=priority,
            interval_ms=max(1, round(interval * 1000)),
            epoch=epoch,
            seq=seq,
            **kw,
        )

    # Outbox, for the groups.

    def advert(
        self,
        group: str,
        state: State,
        priority: int,
        health: Health,
        failing: int,
        hears: tuple[str, ...] | None = None,
    ) -> bool:
        message = self._message(
            Kind.ADVERT, group, state, priority, health=health, failing=failing, hears=hears
        )
        return self._send(message, self.destinations[group]) > 0

    def vote_request(self, group: str) -> None:
        if self.witness is not None:
            message = self._message(Kind.VOTE_REQUEST, group, State.CANDIDATE, 0)
            self._send(message, [self.witness])

    def vote_answer(self, group: str, address: Any, granted: bool) -> None:
        kind = Kind.VOTE_GRANT if granted else Kind.VOTE_DENY
        self._send(self._message(kind, group, State.WITNESS, 0), [tuple(address)])


__all__ = ["NODE_CHECK", "Engine", "HeartbeatProtocol", "load_secret"]

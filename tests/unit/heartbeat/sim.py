"""A simulated network of heartbeat groups on one task.Clock, for unit tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from clickpass.heartbeat.group import Group, WitnessGroup
from clickpass.heartbeat.settings import ClusterGroupSettings, HealthCheckSettings
from clickpass.heartbeat.wire import Health, Kind, Message, State


@dataclass
class FakeVip:
    """Records VIP actions; `held` says whether the address is on this host."""

    name: str
    net: Net
    held: bool = False
    log: list[str] = field(default_factory=list)
    # The old holder's address while a hand-off bridge is asked for, and
    # when each bridge was asked for and ended (not in the net's events).
    bridged_to: str | None = None
    bridges: list[tuple[float, str]] = field(default_factory=list)

    def take(self, up: Callable[[], None]) -> None:
        self.held = True
        self.log.append("take")
        self.net.events.append((self.net.clock.seconds(), self.name, "take"))
        # Like `ip addr replace`: the address is up a few milliseconds later.
        self.net.clock.callLater(0.003, up)

    def renew(self) -> None:
        self.log.append("renew")

    def release(self) -> None:
        if self.held:
            self.net.events.append((self.net.clock.seconds(), self.name, "release"))
        self.held = False
        self.log.append("release")

    def hand_off(self) -> None:
        if self.held:
            self.net.events.append((self.net.clock.seconds(), self.name, "hand_off"))
        self.held = False
        self.log.append("hand_off")

    def bridge(self, address: str) -> None:
        self.bridged_to = address
        self.log.append(f"bridge {address}")
        self.bridges.append((self.net.clock.seconds(), f"bridge {address}"))

    def unbridge(self) -> None:
        # Asked at every release too (clearing a bridge a previous run left):
        # recorded only when one was asked for.
        if self.bridged_to is not None:
            self.bridges.append((self.net.clock.seconds(), "unbridge"))
            self.log.append("unbridge")
        self.bridged_to = None

    def announce(self) -> None:
        self.log.append("announce")

    def refresh(self) -> None:
        self.log.append("refresh")


@dataclass
class FakeNotifier:
    calls: list[tuple[str, State]] = field(default_factory=list)

    def notify(self, group: str, state: State) -> None:
        self.calls.append((group, state))


class Outbox:
    def __init__(self, net: Net, node: str) -> None:
        self.net = net
        self.node = node
        self.seq = 0

    def _message(
        self,
        kind: Kind,
        group: str,
        state: State,
        priority: int,
        health: Health = Health.OK,
        failing: int = 0,
        hears: tuple[str, ...] | None = None,
    ) -> Message:
        self.seq += 1
        interval = int(self.net.interval * 1000)
        return Message(
            kind, group, self.node, state, priority, interval, 1, self.seq, health, failing, hears
        )

    def advert(
        self,
        group: str,
        state: State,
        priority: int,
        health: Health,
        failing: int,
        hears: tuple[str, ...] | None = None,
    ) -> bool:
        message = self._message(Kind.ADVERT, group, state, priority, health, failing, hears)
        return self.net.deliver(self.node, message, None)

    def vote_request(self, group: str) -> None:
        message = self._message(Kind.VOTE_REQUEST, group, State.CANDIDATE, 0)
        self.net.deliver(self.node, message, "witness")

    def vote_answer(self, group: str, address: Any, granted: bool) -> None:
        kind = Kind.VOTE_GRANT if granted else Kind.VOTE_DENY
        self.net.deliver(self.node, self._message(kind, group, State.WITNESS, 0), address)


class Net:
    """Nodes on a simulated link: messages arrive at once unless a link is cut."""

    def __init__(self, interval: float = 0.1) -> None:
        self.clock = Clock()
        self.interval = interval
        self.nodes: dict[str, Any] = {}
        self.vips: dict[str, FakeVip] = {}
        self.notifiers: dict[str, FakeNotifier] = {}
        self.cut: set[frozenset[str]] = set()
        # One-way loss: (sender, receiver) pairs whose packets vanish on
        # the way, and pairs whose sends the sender's kernel refuses (a
        # blackhole route: the sender is told, the receiver hears nothing).
        self.lost: set[tuple[str, str]] = set()
        self.refused: set[tuple[str, str]] = set()
        self.dead: set[str] = set()
        self.events: list[tuple[float, str, str]] = []
        # Nodes whose process is not scheduled: what arrives for them waits
        # in their socket (inbox) until they read it (Group.drain).
        self.stalled: set[str] = set()
        self.inbox: dict[str, list[tuple[Message, str]]] = {}

    def add(
        self,
        name: str,
        priority: int,
        preempt: bool = True,
        preempt_delay: float = 0.0,
        checks: tuple[tuple[str, int], ...] = (),
        witness: bool = False,
        vip_drain: float = 5.0,
        vip_bridge: bool = True,
    ) -> Group:
        settings = ClusterGroupSettings(
            name="app",
            vip="10.77.0.100/24",
            interface="eth0",
            priority=priority,
            peers=["10.77.0.1"],
            advert_interval=self.interval,
            preempt=preempt,
            preempt_delay=preempt_delay,
            check=[HealthCheckSettings(n, w) for n, w in checks],
            vip_drain=vip_drain,
            vip_bridge=vip_bridge,
        )
        self.vips[name] = FakeVip(name, self)
        self.notifiers[name] = FakeNotifier()
        group = Group(
            settings,
            name,
            self.clock,
            Outbox(self, name),
            self.vips[name],
            self.notifiers[name],
            witness_required=witness,
        )
        group.drain = lambda: self.drain(name)
        self.nodes[name] = group
        return group

    def drain(self, name: str) -> None:
        """Hand node C{name} every message waiting in its socket, in order."""
        waiting, self.inbox[name] = self.inbox.get(name, []), []
        for message, sender in waiting:
            self.nodes[name].receive(message, sender)

    def add_witness(self) -> WitnessGroup:
        settings = ClusterGroupSettings(
            name="app", peers=["10.77.0.1"], advert_interval=self.interval
        )
        witness = WitnessGroup(settings, self.clock, Outbox(self, "witness"), "witness")
        self.nodes["witness"] = witness
        return witness

    def deliver(self, sender: str, message: Message, to: str | None) -> bool:
        """Send to every other node (or C{to}); False if the kernel refused every send."""
        if sender in self.dead:
            return False
        taken = 0
        destinations = [n for n in self.nodes if n != sender and (to is None or n == to)]
        for name in destinations:
            if (sender, name) in self.refused:
                continue
            taken += 1
            if name in self.dead or frozenset((sender, name)) in self.cut:
                continue
            # Half a millisecond on the wire, like a LAN; never re-entrant.
            self.clock.callLater(0.0005, self._arrive, name, message, sender)
        return taken > 0 or not destinations

    def _passes(self, sender: str, name: str) -> bool:
        return (
            frozenset((sender, name)) not in self.cut
            and (sender, name) not in self.lost
            and (sender, name) not in self.refused
        )

    def _arrive(self, name: str, message: Message, sender: str) -> None:
        if name not in self.dead and self._passes(sender, name):
            if name in self.stalled:
                self.inbox.setdefault(name, []).append((message, sender))
                return
            self.nodes[name].receive(message, sender)

    def partition(self, a: str, b: str) -> None:
        self.cut.add(frozenset((a, b)))

    def lose(self, sender: str, receivers: tuple[str, ...], refused: bool = False) -> None:
        """One-way loss: what C{sender} sends to C{receivers} never arrives; with
        C{refused}, the sender's kernel also refuses the send (a blackhole route)."""
        for receiver in receivers:
            (self.refused if refused else self.lost).add((sender, receiver))

    def heal(self) -> None:
        self.cut.clear()
        self.lost.clear()
        self.refused.clear()

    def run(self, seconds: float, step: float = 0.005) -> None:
        steps = round(seconds / step)
        for _ in range(steps):
            self.clock.advance(step)

    def masters(self) -> list[str]:
        return sorted(
            n for n, g in self.nodes.items() if isinstance(g, Group) and g.state == State.MASTER
        )

    def holders(self) -> list[str]:
        return sorted(n for n, v in self.vips.items() if v.held)

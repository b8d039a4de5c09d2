"""
One heartbeat group around its state machine: timers, priorities, health,
preemption, maintenance, switchover and the witness.

L{Group} decides which input to give the machine (L{clickpass.heartbeat.machine})
from the adverts it hears and the timers it runs on an injected clock; the
machine's outputs come back here and go to three small collaborators (an
L{Outbox} for packets, a L{VipControl} for the address, a L{Notifier} for
hooks). L{WitnessGroup} is the witness's side: it only answers votes.

This module must never do I/O itself or read the wall clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from clickpass.heartbeat import machine
from clickpass.heartbeat.settings import ClusterGroupSettings
from clickpass.heartbeat.wire import MAX_HEARS, Health, Kind, Message, State

DOWN_ADVERTS = 3
# A node counts as heard (and is listed in our adverts' hears) while its
# adverts come at most this many of its intervals apart: the witness's rule
# for a live master, so a backup that is granted a takeover is by then no
# longer listed as hearing the old master, nor the witness as hearing it.
HEARD_ADVERTS = DOWN_ADVERTS - 0.5


class Outbox(Protocol):
    """Sends this node's messages for a group."""

    def advert(
        self,
        group: str,
        state: State,
        priority: int,
        health: Health,
        failing: int,
        hears: tuple[str, ...] | None = None,
    ) -> bool:
        """
        Send an advert to the group's peers (and the witness), saying which
        nodes we hear. False when it could not be sent to any of them (the
        kernel refused every send: no route, a blackhole, a firewall).
        """

    def vote_request(self, group: str) -> None:
        """Ask the witness for its vote."""


class VipControl(Protocol):
    """The virtual IP of a group on this host."""

    def take(self, up: Callable[[], None]) -> None:
        """Add the address (with its lease), announce it with gratuitous ARP, then call C{up}."""

    def renew(self) -> None:
        """Extend the address's lease."""

    def release(self) -> None:
        """Remove the address (no error when it is not there)."""

    def hand_off(self) -> None:
        """
        Remove the address for a peer that now answers for it, letting this
        host's connections in flight finish (or remove it at once).
        """

    def bridge(self, address: str) -> None:
        """
        Send the packets of the VIP's TCP connections this host did not see
        start to the old holder at C{address}, which kept the VIP for its
        drain (a planned move), instead of resetting them. Never delays a take.
        """

    def unbridge(self) -> None:
        """End that (no error when there is none, or one left by a previous run)."""

    def announce(self) -> None:
        """Send a burst of gratuitous ARP."""

    def refresh(self) -> None:
        """Send one gratuitous ARP."""


class Notifier(Protocol):
    def notify(self, group: str, state: State) -> None:
        """Run the notify hooks for a state change (in order, asynchronously)."""


@dataclass
class PeerView:
    """What we last heard from a peer."""

    node: str
    state: State
    priority: int
    health: Health
    failing: int
    interval: float
    heard_at: float
    address: str = ""
    # The nodes it says it hears; None when its adverts do not say.
    hears: tuple[str, ...] | None = None


def heard(peers: Iterable[PeerView], now: float) -> tuple[str, ...]:
    """The nodes among C{peers} that we hear, for our adverts' hears list."""
    live = [p.node for p in peers if now - p.heard_at <= HEARD_ADVERTS * p.interval]
    return tuple(sorted(live)[:MAX_HEARS])


def skew(priority: int, interval: float) -> float:
    """RFC 5798 Skew_Time: higher priorities wait less."""
    return (256 - priority) * interval / 256.0


class Group:
    """The heartbeat for one VIP on this node."""

    log = Logger()

    def __init__(
        self,
        settings: ClusterGroupSettings,
        node_id: str,
        clock: IReactorTime,
        outbox: Outbox,
        vip: VipControl,
        notifier: Notifier,
        witness_required: bool = False,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.node_id = node_id
        self.clock = clock
        self.outbox = outbox
        self.vip = vip
        self.notifier = notifier
        self.witness_required = witness_required
        self.interval = settings.advert_interval
        self.peers: dict[str, PeerView] = {}
        self.witness_heard_at: float | None = None
        # The witness as we hear it (for our hears list), its last
        # advert's hears list, and when that advert came.
        self._witness: PeerView | None = None
        self.witness_hears: tuple[str, ...] | None = None
        self._witness_advert_at: float | None = None
        # When each peer (or the witness) last said it hears us (a sender
        # that does not say counts as hearing us), and since when a peer's
        # adverts have said it does not.
        self._heard_us_at: dict[str, float] = {}
        self._unheard_since: dict[str, float] = {}
        # When an advert of ours last went out to at least one destination.
        self._sent_at = 0.0
        self.checks: dict[str, tuple[int, bool]] = {
            c.name: (c.weight, True) for c in settings.check
        }
        self.maintenance = False
        self.counters: Counter[str] = Counter()
        self.master_interval = self.interval
        self.started_at = 0.0
        self.changed_at = 0.0
        # State changes (from, to) since the start, for /metrics.
        self.transitions: Counter[tuple[str, str]] = Counter()
        self._entered_last = State.INIT
        self._no_preempt = False
        self._down: IDelayedCall | None = None
        self._vote: IDelayedCall | None = None
        self._handover: IDelayedCall | None = None
        self._last_garp = 0.0
        self._vip_up = False
        # The last MASTER heard, and the master we are replacing when our
        # down timer fires on it: a failover to report, not an election.
        self._last_master: PeerView | None = None
        self._failed_master: tuple[PeerView, str] | None = None
        self._process_gone: str | None = None
        # The live master that hands us the VIP in a planned move (its
        # healthy resign, or our preempt), to bridge its connections to; and
        # the node we bridge to, until the drain ends or it falls silent.
        self._handing_master: PeerView | None = None
        self._bridged_to: str | None = None
        self._unbridge: IDelayedCall | None = None
        self.last_failover: dict[str, Any] | None = None
        # Called with the details of every failover this node makes (alerts).
        self.on_failover: Callable[[dict[str, Any]], None] | None = None
        # Reads every datagram already waiting for this process (the engine's
        # socket), handing each to receive(); see _down_fired.
        self.drain: Callable[[], None] | None = None
        self._adverts = LoopingCall(self._tick)
        self._adverts.clock = clock
        self.machine, self.core = machine.build(self)

    # Reading the group.

    @property
    def state(self) -> State:
        return self.core.state

    @property
    def faulted(self) -> bool:
        return any(not ok and weight == 0 for weight, ok in self.checks.values())

    @property
    def failing(self) -> int:
        return sum(1 for _, ok in self.checks.values() if not ok)

    @property
    def priority(self) -> int:
        """The priority we advertise: base plus failing negative weights, 1 at least."""
        if self.state == State.HANDOVER:
            return 0
        lowered = sum(weight for weight, ok in self.checks.values() if not ok and weight < 0)
        return max(1, min(254, self.settings.priority + lowered))

    @property
    def health(self) -> Health:
        if self.faulted:
            return Health.FAULT
        return Health.DEGRADED if self.failing else Health.OK

    def down_interval(self) -> float:
        return DOWN_ADVERTS * self.master_interval + skew(self.priority, self.master_interval)

    def status(self) -> dict[str, Any]:
        now = self.clock.seconds()
        return {
            "group": self.name,
            "state": self.state.name,
            "priority": self.priority,
            "base_priority": self.settings.priority,
            "vip": self.settings.vip,
            "interface": self.settings.interface,
            "advert_interval": self.interval,
            "preempt": self.settings.preempt,
            "maintenance": self.maintenance,
            "health": self.health.name,
            "checks": {n: ("ok" if ok else "failing") for n, (_, ok) in self.checks.items()},
            "in_state_seconds": round(now - self.changed_at, 3),
            "peers": [
                {
                    "node": p.node,
                    "state": p.state.name,
                    "priority": p.priority,
                    "health": p.health.name,
                    "address": p.address,
                    "last_heard_seconds": round(now - p.heard_at, 3),
                    "hears": None if p.hears is None else list(p.hears),
                }
                for p in sorted(self.peers.values(), key=lambda p: p.node)
            ],
            "witness_hears": None if self.witness_hears is None else list(self.witness_hears),
            "witness_last_heard_seconds": (
                None if self.witness_heard_at is None else round(now - self.witness_heard_at, 3)
            ),
            "last_failover": self.last_failover,
            "counters": dict(self.counters),
            "transitions": [
                {"from": a, "to": b, "count": n} for (a, b), n in sorted(self.transitions.items())
            ],
        }

    # Driving the group.

    def start(self) -> None:
        self.started_at = self.changed_at = self._sent_at = self.clock.seconds()
        self.machine.start()
        if self.faulted:
            self.machine.fault()
        self._adverts.start(self.interval, now=True)

    def stop(self) -> None:
        """Resign (when MASTER) and release the VIP; the caller sends before closing."""
        self.machine.shutdown()
        if self._adverts.running:
            self._adverts.stop()
        for call in (self._down, self._vote, self._handover, self._unbridge):
            if call is not None and call.active():
                call.cancel()

    def receive(self, message: Message, address: str = "") -> None:
        """Take in an authenticated, fresh message from a peer or the witness."""
        now = self.clock.seconds()
        if message.state == State.WITNESS:
            self.witness_heard_at = now
            self._witness = PeerView(
                message.node, State.WITNESS, 0, Health.OK, 0, message.interval, now, address
            )
            if message.kind == Kind.ADVERT:
                self.witness_hears = message.hears
                self._witness_advert_at = now
                self._note_hears(message.node, message.hears, now, None)
            else:
                # A vote answer: the witness heard our request.
                self._heard_us_at[message.node] = now
            if message.kind == Kind.VOTE_GRANT:
                self._vote_answer(True)
            elif message.kind == Kind.VOTE_DENY:
                self._vote_answer(False)
            return
        if message.kind != Kind.ADVERT:
            self.counters["unexpected_kind"] += 1
            return
        before = self.peers.get(message.node)
        view = self.peers[message.node] = PeerView(
            node=message.node,
            state=message.state,
            priority=message.priority,
            health=message.health,
            failing=message.failing,
            interval=message.interval,
            heard_at=now,
            address=address,
            hears=message.hears,
        )
        self._note_hears(message.node, message.hears, now, before)
        if message.state != State.MASTER:
            return
        self._last_master = view
        self._process_gone = None
        self.master_interval = message.interval
        if message.priority == 0:
            if self.state == State.BACKUP and message.health != Health.FAULT:
                # A switchover (or a clean stop): if we take over, the bridge
                # is loaded by then, before our ARP goes out.
                self._start_bridge(view)
            self.machine.heard_resign()
        elif self._outranked_by(view, now):
            if self.state in (State.BACKUP, State.CANDIDATE):
                self._end_bridge()  # it stays MASTER (or another is): no move to us
            self.machine.heard_stronger_master()
        elif self.state in (State.BACKUP, State.CANDIDATE) and self._may_preempt(now, view):
            if self._bridged_to != view.node and self._start_bridge(view):
                # Preempt at its next advert, the bridge loaded by then (nft
                # takes some 10-30 ms): not after our ARP has gone out.
                self.machine.heard_weaker_master()
            else:
                self._handing_master = view
                self.machine.preempt()
        else:
            self.machine.heard_weaker_master()

    def _note_hears(
        self, source: str, hears: tuple[str, ...] | None, now: float, before: PeerView | None
    ) -> None:
        if hears is None or self.node_id in hears:
            self._heard_us_at[source] = now
            self._unheard_since.pop(source, None)
            return
        # Unheard since this advert, unless its adverts already said so and
        # kept coming (after a silence, as when a partition heals, the
        # count starts again: the peer may not have had our advert yet).
        if (
            source not in self._unheard_since
            or before is None
            or now - before.heard_at > self._quorum_limit()
        ):
            self._unheard_since[source] = now

    def _witness_backs(self, node: str, now: float) -> bool | None:
        """Whether the witness's last advert (if recent and saying) lists C{node} as heard."""
        if (
            self.witness_hears is None
            or self._witness_advert_at is None
            or now - self._witness_advert_at > self._quorum_limit()
        ):
            return None
        return node in self.witness_hears

    def _outranked_by(self, master: PeerView, now: float) -> bool:
        """
        Whether C{master}'s claim beats ours. The witness decides first: of
        two masters, the one it hears wins whatever the priorities (the
        other is not heard, so its claim reaches nobody). Then a master we
        hold MASTER against, whose adverts have said for the quorum limit
        that it does not hear us, wins (it cannot learn that we outrank it,
        so one of us must yield, and only we can know it). Then priority,
        then node id.
        """
        ours = self._witness_backs(self.node_id, now)
        theirs = self._witness_backs(master.node, now)
        if ours is not None and theirs is not None and ours != theirs:
            if theirs and self.state == State.MASTER:
                self._yield_unheard(master, "the witness hears it and not us")
            return theirs
        if self.state == State.MASTER:
            since = self._unheard_since.get(master.node)
            if since is not None and now - since >= self._quorum_limit():
                self._yield_unheard(master, "its adverts say it does not hear us")
                return True
        return (master.priority, master.node) > (self.priority, self.node_id)

    def _yield_unheard(self, master: PeerView, why: str) -> None:
        self.counters["yielded_unheard"] += 1
        self.log.warn(
            "cluster group {group}: {master} is MASTER too and {why}; stepping down",
            group=self.name,
            master=master.node,
            why=why,
        )

    def peer_process_gone(self, node: str) -> None:
        """
        The peer's kernel closed our authenticated link to its heartbeat
        process (L{clickpass.heartbeat.link}): that process no longer exists
        and can neither advertise nor renew its VIP lease. If it is our live
        master, treat it as that master's resign (RFC 5798: Skew_Time);
        with a witness, the takeover still waits for the witness's vote.

        The adverts already waiting in our socket are read first: the
        master's last one, sent just before it died, can be read after the
        link's close (the two arrive on different sockets), and read later
        it would count as the master alive again (the takeover would then
        wait for the missed adverts).

        A backup that cannot take over now (FAULT: its own node is not
        ready yet; CANDIDATE: already asking the witness on missed adverts)
        still remembers it: the takeover it makes later, with no advert from
        that master in between, names the process gone, which it knew
        before it took over, not missed adverts.
        """
        if self.drain is not None:
            self.drain()
        last = self._last_master
        view = self.peers.get(node)
        if (
            self.state not in (State.BACKUP, State.FAULT, State.CANDIDATE)
            or last is None
            or last.node != node
            or view is None
            or view.state != State.MASTER
            or view.priority == 0
        ):
            return
        self.counters["master_process_gone"] += 1
        self._process_gone = node
        if self.state != State.BACKUP or self.witness_required:
            # The witness grants a vote only once it too misses the master's
            # adverts; asking earlier would be refused and re-arm the full
            # down timer, so wait for it as usual.
            return
        self.machine.heard_resign()

    def set_health(self, name: str, ok: bool) -> None:
        """Record a health input; unknown names are ignored (not tracked by this group)."""
        if name not in self.checks:
            return
        weight, before = self.checks[name]
        if before == ok:
            return
        was_faulted = self.faulted
        self.checks[name] = (weight, ok)
        self.log.info(
            "cluster group {group}: health check {check} is {result}",
            group=self.name,
            check=name,
            result="ok" if ok else "failing",
        )
        if self.faulted and not was_faulted:
            self.machine.fault()
        elif was_faulted and not self.faulted:
            self.machine.recovered()

    def set_maintenance(self, on: bool) -> None:
        """
        In maintenance the group stays BACKUP and never takes over. A MASTER
        with a healthy BACKUP peer hands the VIP over as in a switchover (no
        gap, its requests in flight answered, bridged to by the new holder);
        without one, or if nobody takes over, it steps aside (the address
        parked for the drain all the same).
        """
        self.maintenance = on
        if not on:
            return
        if self.state == State.MASTER and self._live_backups():
            self.machine.switchover()
        else:
            self.machine.step_aside()

    def _live_backups(self) -> list[PeerView]:
        now = self.clock.seconds()
        return [
            p
            for p in self.peers.values()
            if p.state == State.BACKUP and now - p.heard_at <= DOWN_ADVERTS * p.interval
        ]

    def _step_aside_in_maintenance(self) -> None:
        # A maintenance handover nobody took: the machine resumed MASTER.
        if self.maintenance and self.state == State.MASTER:
            self.machine.step_aside()

    def switchover(self) -> str:
        """
        Hand the VIP to the peer with no gap, and do not preempt it back
        afterwards. Raises ValueError (one line) when that cannot be done.
        """
        if self.state != State.MASTER:
            raise ValueError(f"group {self.name} is {self.state.name} here, not MASTER")
        alive = self._live_backups()
        if not alive:
            raise ValueError(f"group {self.name}: no healthy BACKUP peer is heard to take over")
        self._no_preempt = True
        self.machine.switchover()
        return f"group {self.name}: handing the VIP to {', '.join(p.node for p in alive)}"

    # Decisions.

    def _may_preempt(self, now: float, master: PeerView) -> bool:
        # Never preempt a master that does not hear us: it would not step
        # down, and both would hold the VIP.
        return (
            self.settings.preempt
            and not self.maintenance
            and not self._no_preempt
            and now - self.started_at >= self.settings.preempt_delay
            and (master.hears is None or self.node_id in master.hears)
        )

    def _tick(self) -> None:
        state = self.state
        if state == State.INIT:
            return
        advertised = {State.CANDIDATE: State.BACKUP, State.HANDOVER: State.MASTER}.get(state, state)
        if state == State.MASTER and not self._vip_up:
            advertised = State.BACKUP  # not yet answering for the VIP
        self._send(advertised)
        if state == State.MASTER and self._bridged_to is not None:
            self._check_bridge()
        if state in (State.MASTER, State.HANDOVER):
            self.vip.renew()
            refresh = self.settings.garp_refresh
            now = self.clock.seconds()
            if refresh and now - self._last_garp >= refresh:
                self._last_garp = now
                self.vip.refresh()
            if state != State.MASTER or not self.witness_required:
                return
            if self._lost_quorum(now) and not self._heard_after_drain(now):
                self.log.warn(
                    "cluster group {group}: neither peer nor witness hears us; stepping down",
                    group=self.name,
                )
                self.counters["lost_quorum"] += 1
                self.machine.step_down()
            elif self.state == State.MASTER and now - self._sent_at > self._quorum_limit():
                # Every send refused for that long (a blackhole route, a
                # firewall): nobody hears us, whatever we hear.
                self.log.warn(
                    "cluster group {group}: our adverts have not gone out for {seconds} s;"
                    " stepping down",
                    group=self.name,
                    seconds=round(now - self._sent_at, 3),
                )
                self.counters["adverts_unsent"] += 1
                self.machine.step_down()

    def _heard_after_drain(self, now: float) -> bool:
        """Whether reading the datagrams waiting for us (a late tick) brings quorum back."""
        if self.drain is None:
            return False
        self.drain()
        return self.state == State.MASTER and not self._lost_quorum(now)

    def _hears(self, now: float) -> tuple[str, ...]:
        """The peers and the witness we hear, for our adverts."""
        views = list(self.peers.values())
        if self._witness is not None:
            views.append(self._witness)
        return heard(views, now)

    def _quorum_limit(self) -> float:
        return DOWN_ADVERTS * self.interval + self.interval

    def _lost_quorum(self, now: float) -> bool:
        """Whether neither a peer nor the witness has said it hears us within the limit."""
        heard = self._heard_us_at.values()
        return not heard or now - max(heard) > self._quorum_limit()

    def _send(self, state: State, priority: int | None = None) -> None:
        now = self.clock.seconds()
        sent = self.outbox.advert(
            self.name,
            state,
            self.priority if priority is None else priority,
            self.health,
            self.failing,
            self._hears(now),
        )
        if sent:
            self._sent_at = now
        else:
            self.counters["adverts_refused"] += 1
        if priority is None:
            self.counters["adverts_sent"] += 1

    def _down_fired(self) -> None:
        self._down = None
        if self.drain is not None:
            # A timer that fires late (this process was not scheduled, or was
            # busy) runs before the datagrams that arrived meanwhile are read:
            # read them first, or the master's adverts waiting in our socket
            # would count as missed. One of them re-arms the timer.
            self.drain()
            if self._down is not None or self.state != State.BACKUP:
                self.counters["down_timer_saved_by_waiting_adverts"] += 1
                self.log.info(
                    "cluster group {group}: master-down timer fired late; "
                    "adverts were waiting to be read, no takeover",
                    group=self.name,
                )
                return
        self._failed_master = self._failed()
        self._handing_master = self._handing()
        if self.maintenance:
            self.arm_down_timer(False)
        elif self.witness_required:
            self.machine.seek_vote()
        else:
            self.machine.master_down()

    def _failed(self) -> tuple[PeerView, str] | None:
        """
        Why the master we last heard is gone, if it failed: it went silent
        (missed adverts), or it resigned because it is unhealthy. None for a
        first election, a clean stop or a switchover (planned, no alert).
        """
        last = self._last_master
        if last is None:
            return None
        if last.priority > 0:
            if self._process_gone == last.node:
                return last, "heartbeat process gone"
            return last, "missed adverts"
        if last.health == Health.FAULT:
            return last, "master fault"
        return None

    def _handing(self) -> PeerView | None:
        """
        The master we last heard if it is handing the VIP over in a planned
        move: it resigned healthy, so it keeps the address until we claim
        MASTER (a switchover), or it was stopping (it went silent after its
        resign: the bridge ends then, L{_check_bridge}). Not one that
        resigned as FAULT (it released the address at once), went silent or
        whose process is gone.
        """
        last = self._last_master
        if (
            last is None
            or last.priority != 0
            or last.health == Health.FAULT
            or self._process_gone == last.node
        ):
            return None
        return last

    def _start_bridge(self, old: PeerView) -> bool:
        """
        Bridge the connections the old holder C{old} started, for our drain
        (from now: asked for before the takeover, so that nft has loaded the
        table when our ARP goes out). Whether a new bridge was asked for.
        """
        old = self.peers.get(old.node, old)  # as last heard (a vote takes a while)
        if not self.settings.vip_bridge or self.settings.vip_drain <= 0 or not old.address:
            return False
        if self.clock.seconds() - old.heard_at > HEARD_ADVERTS * old.interval:
            return False  # not live: nothing there to answer
        if old.state != State.MASTER:
            # Its adverts say BACKUP since its resign: it stepped down on
            # lost quorum and released the address at once (a maintenance
            # handover advertises MASTER until we claim it, as a switchover).
            return False
        if self._bridged_to == old.node:
            return False  # asked for already (its resign, a preempt's first advert)
        self._end_bridge()
        self._bridged_to = old.node
        self.counters["bridges"] += 1
        self.vip.bridge(old.address)
        self._unbridge = self.clock.callLater(self.settings.vip_drain, self._bridge_drained)
        return True

    def _bridge_drained(self) -> None:
        self._unbridge = None
        self._end_bridge()

    def _check_bridge(self) -> None:
        """
        End the bridge early when the old holder is no longer heard: a node
        that stopped (its resign looked like a switchover's) has no address
        left, and bridged packets would vanish; a client gets a prompt reset
        from us instead of waiting.
        """
        if self._old_holder_heard():
            return
        if self.drain is not None:
            # A late tick: the old holder's adverts may be waiting in our socket.
            self.drain()
            if self._bridged_to is None or self._old_holder_heard():
                return
        self.counters["bridges_ended_silent"] += 1
        self.log.info(
            "cluster group {group}: {node} is no longer heard; ending the bridge to it",
            group=self.name,
            node=self._bridged_to,
        )
        self._end_bridge()

    def _old_holder_heard(self) -> bool:
        old = self.peers.get(self._bridged_to or "")
        now = self.clock.seconds()
        return old is not None and now - old.heard_at <= HEARD_ADVERTS * old.interval

    def _end_bridge(self) -> None:
        if self._unbridge is not None and self._unbridge.active():
            self._unbridge.cancel()
        self._unbridge = None
        self._bridged_to = None
        self.vip.unbridge()

    def _report_failover(self, master: PeerView, reason: str) -> None:
        now = self.clock.seconds()
        details = {
            "group": self.name,
            "vip": self.settings.vip,
            "node": self.node_id,
            "from": master.node,
            "reason": reason,
            "last_heard_seconds": round(now - master.heard_at, 3),
        }
        self.last_failover = {**details, "at": now}
        self.counters["failovers"] += 1
        self.log.warn(
            "cluster group {group}: failover, taking VIP {vip} over from {master} ({reason})",
            group=self.name,
            vip=self.settings.vip,
            master=master.node,
            reason=reason,
        )
        if self.on_failover is not None:
            try:
                self.on_failover(details)
            except Exception:
                self.log.failure("cluster group {group}: failover report failed", group=self.name)

    def _vote_answer(self, granted: bool) -> None:
        if self._vote is None:
            self.counters["late_votes"] += 1
            return
        if self._vote.active():
            self._vote.cancel()
        self._vote = None
        self.counters["votes_granted" if granted else "votes_refused"] += 1
        if granted:
            self.machine.vote_granted()
        else:
            self.machine.vote_refused()

    def _vote_timed_out(self) -> None:
        self._vote = None
        self.counters["votes_unanswered"] += 1
        self.machine.vote_refused()

    # GroupActions: the machine's outputs.

    def arm_down_timer(self, resign: bool) -> None:
        self.cancel_down_timer()
        self._failed_master = None
        self._handing_master = None
        delay = skew(self.priority, self.master_interval)
        if not resign:
            delay += DOWN_ADVERTS * self.master_interval
        self._down = self.clock.callLater(delay, self._down_fired)

    def cancel_down_timer(self) -> None:
        if self._down is not None and self._down.active():
            self._down.cancel()
        self._down = None

    def send_advert(self) -> None:
        self._send(State.MASTER)

    def send_resign(self) -> None:
        self._send(State.MASTER, 0)
        self.counters["resigns_sent"] += 1

    def take_vip(self) -> None:
        self._last_garp = self.clock.seconds()
        self._no_preempt = False
        self._vip_up = False
        self.counters["takeovers"] += 1
        failed, self._failed_master = self._failed_master, None
        handing, self._handing_master = self._handing_master, None
        if failed is not None and self._process_gone == failed[0].node:
            # Its link closed after our down timer fired (a process slow to
            # die), while we waited for the witness's vote.
            failed = (failed[0], "heartbeat process gone")
        if failed is None and handing is not None and self._process_gone != handing.node:
            # Asked for already when it resigned or we first could preempt
            # it; else now (the take does not wait for nft).
            self._start_bridge(handing)
        elif self._bridged_to is not None:
            self._end_bridge()  # a failover after all: nothing there to answer
        self.vip.take(self._vip_is_up)
        if failed is not None:
            self._report_failover(*failed)

    def _vip_is_up(self) -> None:
        # Claim MASTER to the peers only once the address answers and the
        # ARP burst has started: a peer that steps down on our advert must
        # not leave a moment when nobody answers (preempt, switchover).
        if self.state == State.MASTER and not self._vip_up:
            self._vip_up = True
            self._send(State.MASTER)

    def release_vip(self) -> None:
        # Also at start: a bridge a previous run left goes.
        self._end_bridge()
        self.vip.release()

    def hand_off_vip(self) -> None:
        self.counters["hand_offs"] += 1
        self._end_bridge()
        self.vip.hand_off()

    def announce(self) -> None:
        self.counters["split_brain_won"] += 1
        self._send(State.MASTER)
        self._last_garp = self.clock.seconds()
        self.vip.announce()

    def request_vote(self) -> None:
        if self._vote is not None and self._vote.active():
            self._vote.cancel()
        self._vote = self.clock.callLater(self.down_interval(), self._vote_timed_out)
        self.counters["votes_requested"] += 1
        self.outbox.vote_request(self.name)

    def arm_handover_timer(self) -> None:
        self.cancel_handover_timer()
        self._handover = self.clock.callLater(
            max(1.0, 2 * DOWN_ADVERTS * self.interval), self.machine.handover_timeout
        )

    def cancel_handover_timer(self) -> None:
        if self._handover is not None and self._handover.active():
            self._handover.cancel()
        self._handover = None

    def entered(self, state: State) -> None:
        self.changed_at = self.clock.seconds()
        if state != self._entered_last:
            self.transitions[(self._entered_last.name, state.name)] += 1
            self._entered_last = state
        self.counters[f"entered_{state.name.lower()}"] += 1
        self.log.info(
            "cluster group {group}: {state} (priority {priority})",
            group=self.name,
            state=state.name,
            priority=self.priority,
        )
        if state == State.MASTER and self.maintenance:
            # Not from inside the machine's transition: at once, after it.
            self.clock.callLater(0, self._step_aside_in_maintenance)
        if state in (State.MASTER, State.BACKUP, State.FAULT):
            self.notifier.notify(self.name, state)


class WitnessGroup:
    """
    The witness's side of a group: it grants a takeover only when it hears
    no other live MASTER and has not just granted one to another node.
    """

    log = Logger()

    def __init__(
        self,
        settings: ClusterGroupSettings,
        clock: IReactorTime,
        outbox: Any,
        node_id: str | None = None,
    ) -> None:
        self.settings = settings
        # Our node id, to tell whether a node that asks for a vote hears us.
        self.node_id = node_id
        self.name = settings.name
        self.clock = clock
        self.outbox = outbox
        self.interval = settings.advert_interval
        self.peers: dict[str, PeerView] = {}
        self.grant: tuple[str, float] | None = None
        self.counters: Counter[str] = Counter()
        self._adverts = LoopingCall(self._tick)
        self._adverts.clock = clock

    def start(self) -> None:
        self._adverts.start(self.interval, now=True)

    def stop(self) -> None:
        if self._adverts.running:
            self._adverts.stop()

    def _tick(self) -> None:
        now = self.clock.seconds()
        self.outbox.advert(
            self.name, State.WITNESS, 0, Health.OK, 0, heard(self.peers.values(), now)
        )

    def live_masters(self, now: float, excluding: str) -> list[str]:
        # A master is alive while its adverts keep coming, with half an
        # interval less slack than a backup's down timer, so that a real
        # death is agreed on by the time the backup asks.
        return [
            p.node
            for p in self.peers.values()
            if p.node != excluding
            and p.state == State.MASTER
            and p.priority > 0
            and now - p.heard_at <= (DOWN_ADVERTS - 0.5) * p.interval
        ]

    def receive(self, message: Message, address: Any) -> None:
        now = self.clock.seconds()
        if message.kind == Kind.ADVERT:
            self.peers[message.node] = PeerView(
                node=message.node,
                state=message.state,
                priority=message.priority,
                health=message.health,
                failing=message.failing,
                interval=message.interval,
                heard_at=now,
                address=str(address),
                hears=message.hears,
            )
            return
        if message.kind != Kind.VOTE_REQUEST:
            self.counters["unexpected_kind"] += 1
            return
        alive = self.live_masters(now, message.node)
        granted_to_other = (
            self.grant is not None and self.grant[0] != message.node and now < self.grant[1]
        )
        # A node whose adverts say it does not hear us would never read our
        # grant, and granting it would make the others wait for it.
        asker = self.peers.get(message.node)
        deaf = (
            self.node_id is not None
            and asker is not None
            and asker.hears is not None
            and self.node_id not in asker.hears
        )
        if deaf:
            self.counters["refused_deaf"] += 1
        granted = not alive and not granted_to_other and not deaf
        if granted:
            self.grant = (message.node, now + DOWN_ADVERTS * message.interval)
        self.counters["granted" if granted else "refused"] += 1
        self.log.info(
            "cluster witness {group}: {verdict} takeover by {node} (live masters: {alive})",
            group=self.name,
            verdict="granted" if granted else "refused",
            node=message.node,
            alive=",".join(alive) or "none",
        )
        self.outbox.vote_answer(self.name, address, granted)
        if granted:
            # Tell every member at once whom we hear: a master we no longer
            # hear learns it before the new master's first advert reaches it.
            self._tick()

    def status(self) -> dict[str, Any]:
        now = self.clock.seconds()
        return {
            "group": self.name,
            "state": "WITNESS",
            "priority": 0,
            "peers": [
                {
                    "node": p.node,
                    "state": p.state.name,
                    "priority": p.priority,
                    "health": p.health.name,
                    "address": p.address,
                    "last_heard_seconds": round(now - p.heard_at, 3),
                }
                for p in sorted(self.peers.values(), key=lambda p: p.node)
            ],
            "grant": None if self.grant is None else self.grant[0],
            "counters": dict(self.counters),
        }


__all__ = ["Group", "Notifier", "Outbox", "PeerView", "VipControl", "WitnessGroup", "skew"]

"""Tests for the heartbeat state machine and its timers, on a task.Clock."""

from __future__ import annotations

import pytest

from clickpass.heartbeat.group import Group, skew
from clickpass.heartbeat.wire import Kind, Message, State

from .sim import Net


def state(group: Group) -> State:
    """The group's state, read afresh (keeps mypy from narrowing across inputs)."""
    return group.state


def started(net: Net, *names: str) -> None:
    for name in names:
        net.nodes[name].start()


def test_lone_node_takes_over_after_three_adverts_and_skew() -> None:
    """A node that hears nobody becomes MASTER after 3 intervals plus its skew, not before."""
    net = Net(0.1)
    a = net.add("app1", 200)
    a.start()
    assert state(a) == State.BACKUP
    assert net.vips["app1"].log == ["release"]  # a stale VIP is cleared at start
    deadline = 3 * 0.1 + skew(200, 0.1)
    net.clock.advance(deadline - 0.001)
    assert state(a) == State.BACKUP
    net.clock.advance(0.002)
    assert state(a) == State.MASTER
    assert net.vips["app1"].held
    assert net.notifiers["app1"].calls == [("app", State.BACKUP), ("app", State.MASTER)]


def test_higher_priority_wins_and_backup_stays_backup() -> None:
    """With both up, the higher priority is MASTER and the other never takes over."""
    net = Net(0.1)
    net.add("app1", 200)
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(5)
    assert net.masters() == ["app1"]
    assert net.holders() == ["app1"]
    assert net.nodes["app2"].counters["takeovers"] == 0


def test_master_renews_its_lease_every_advert() -> None:
    """While MASTER, every advert tick renews the VIP lease."""
    net = Net(0.1)
    net.add("app1", 200)
    started(net, "app1")
    net.run(1)
    renewals = net.vips["app1"].log.count("renew")
    for _ in range(10):
        net.clock.advance(0.1)
    assert net.vips["app1"].log.count("renew") - renewals == 10


def test_backup_takes_over_when_master_goes_silent() -> None:
    """A dead master is declared down 3 intervals plus the backup's skew after its last advert."""
    net = Net(0.1)
    net.add("app1", 200)
    b = net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(2)
    net.dead.add("app1")
    killed = net.clock.seconds()
    net.run(1)
    took = [t for t, who, what in net.events if who == "app2" and what == "take"]
    assert state(b) == State.MASTER and len(took) == 1
    # The last advert was at most one interval before the kill.
    elapsed = took[0] - killed
    assert 3 * 0.1 + skew(100, 0.1) - 0.1 <= elapsed <= 3 * 0.1 + skew(100, 0.1) + 0.01


def test_late_down_timer_reads_waiting_adverts_before_declaring_the_master_down() -> None:
    """The backup's process is not scheduled for a second while the master keeps
    advertising (its adverts wait in the backup's socket): when its master-down timer
    finally runs, it reads them first and does not take over. Without reading them
    (no drain) the same stall is a false takeover."""
    for drain in (True, False):
        net = Net(0.1)
        net.add("app1", 200)
        b = net.add("app2", 100)
        started(net, "app1", "app2")
        net.run(2)
        if not drain:
            b.drain = None
        net.stalled.add("app2")
        net.run(1.0)
        net.stalled.discard("app2")
        net.drain("app2")
        net.run(2)
        takeovers = b.counters["takeovers"]
        if drain:
            assert takeovers == 0 and net.holders() == ["app1"]
            assert b.counters["down_timer_saved_by_waiting_adverts"] >= 1
            assert state(b) == State.BACKUP
        else:
            assert takeovers == 1


def test_late_down_timer_with_nothing_waiting_still_takes_over() -> None:
    """Reading waiting adverts does not hide a dead master: with nothing waiting, the
    backup takes over as usual."""
    net = Net(0.1)
    net.add("app1", 200)
    b = net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(2)
    net.dead.add("app1")
    net.stalled.add("app2")
    net.run(1.0)
    assert state(b) == State.MASTER
    assert b.counters["down_timer_saved_by_waiting_adverts"] == 0


def test_fifty_millisecond_adverts() -> None:
    """The timers follow an advert interval of 50 ms."""
    net = Net(0.05)
    net.add("app1", 200)
    b = net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    net.dead.add("app1")
    killed = net.clock.seconds()
    net.run(0.5)
    took = [t for t, who, what in net.events if who == "app2" and what == "take"]
    assert state(b) == State.MASTER
    assert took[0] - killed <= 3 * 0.05 + skew(100, 0.05) + 0.01


def test_clean_shutdown_resigns_and_peer_takes_over_at_once() -> None:
    """A master that stops cleanly sends priority 0; the backup takes over after its skew only."""
    net = Net(1.0)
    a = net.add("app1", 200)
    b = net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(10, step=0.01)
    assert state(a) == State.MASTER
    stopped = net.clock.seconds()
    a.stop()
    net.dead.add("app1")
    net.run(1, step=0.001)
    took = [t for t, who, what in net.events if who == "app2" and what == "take"]
    assert state(b) == State.MASTER
    assert took[0] - stopped == pytest.approx(skew(100, 1.0), abs=0.003)
    assert not net.vips["app1"].held


def test_preempt_takes_the_vip_back_with_no_gap() -> None:
    """A restarted higher-priority node preempts at once; the VIP is never unheld."""
    net = Net(0.1)
    net.add("app1", 200)
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    net.nodes["app1"].stop()
    net.dead.add("app1")
    net.run(1)
    assert net.masters() == ["app2"]
    a = net.add("app1", 200)
    net.dead.discard("app1")
    net.events.clear()
    a.start()
    net.run(1)
    assert net.masters() == ["app1"]
    # A planned move: the preempted node hands the address off (see hand_off).
    assert [(who, what) for _, who, what in net.events] == [("app1", "take"), ("app2", "hand_off")]
    # Preempted at the second advert heard (the first asks for the bridge of the
    # connections in flight: test_bridge.py), well before a down timer would fire.
    assert net.events[0][0] - net.clock.seconds() + 1 < 0.25


def test_nopreempt_restarted_node_stays_backup() -> None:
    """With nopreempt, a restarted higher-priority node stays BACKUP."""
    net = Net(0.1)
    net.add("app1", 200, preempt=False)
    net.add("app2", 100, preempt=False)
    started(net, "app1", "app2")
    net.run(1)
    net.nodes["app1"].stop()
    net.dead.add("app1")
    net.run(1)
    a = net.add("app1", 200, preempt=False)
    net.dead.discard("app1")
    a.start()
    net.run(5)
    assert net.masters() == ["app2"]
    assert state(a) == State.BACKUP


def test_preempt_delay_waits_before_taking_back() -> None:
    """With a preempt delay, the restarted node preempts only once the delay has passed."""
    net = Net(0.1)
    net.add("app2", 100)
    started(net, "app2")
    net.run(1)
    a = net.add("app1", 200, preempt_delay=3.0)
    a.start()
    net.run(2.9)
    assert net.masters() == ["app2"]
    net.run(0.3)
    assert net.masters() == ["app1"]


def test_fault_check_releases_and_peer_takes_over_quickly() -> None:
    """A failing weight-0 check puts the master in FAULT: it resigns and drops the VIP."""
    net = Net(0.1)
    a = net.add("app1", 200, checks=(("workers", 0),))
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    a.set_health("workers", False)
    assert state(a) == State.FAULT
    assert not net.vips["app1"].held
    net.run(0.1)  # resign: the backup needs only its skew
    assert net.masters() == ["app2"]
    net.run(2)
    assert state(a) == State.FAULT  # stays out while faulty
    a.set_health("workers", True)
    net.run(1)
    assert net.masters() == ["app1"]  # recovered, and preempts
    assert ("app", State.FAULT) in net.notifiers["app1"].calls


def test_negative_weight_lowers_priority_and_preempting_peer_takes_over() -> None:
    """A failing negative-weight check lowers the priority; a preempting peer then takes over."""
    net = Net(0.1)
    a = net.add("app1", 150, checks=(("database", -100),))
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    assert net.masters() == ["app1"]
    a.set_health("database", False)
    assert a.priority == 50
    net.run(0.5)
    assert net.masters() == ["app2"]
    assert a.status()["health"] == "DEGRADED"


def test_split_brain_heals_lower_priority_steps_down_and_winner_announces() -> None:
    """After a partition heals, the lower priority steps down; the winner re-sends GARP."""
    net = Net(0.1)
    net.add("app1", 200)
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    net.partition("app1", "app2")
    net.run(1)
    assert net.masters() == ["app1", "app2"]
    net.heal()
    net.run(0.5)
    assert net.masters() == ["app1"]
    assert net.holders() == ["app1"]
    assert "announce" in net.vips["app1"].log


def test_split_brain_equal_priority_lower_id_steps_down() -> None:
    """With equal priorities, the node with the lower id steps down."""
    net = Net(0.1)
    net.add("app1", 100)
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.partition("app1", "app2")
    net.run(1)
    assert net.masters() == ["app1", "app2"]
    net.heal()
    net.run(0.5)
    assert net.masters() == ["app2"]


def test_switchover_moves_the_vip_with_no_gap_and_does_not_preempt_back() -> None:
    """Switchover: the peer takes the VIP before the old master hands it off, and it stays."""
    net = Net(0.1)
    a = net.add("app1", 200)
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    net.events.clear()
    a.switchover()
    net.run(1)
    assert net.masters() == ["app2"]
    assert [(who, what) for _, who, what in net.events] == [("app2", "take"), ("app1", "hand_off")]
    net.run(3)
    assert net.masters() == ["app2"]


def test_switchover_refused_without_a_live_backup() -> None:
    """Switchover is refused, with a reason, when not MASTER or no backup is heard."""
    net = Net(0.1)
    a = net.add("app1", 200)
    started(net, "app1")
    with pytest.raises(ValueError, match="not MASTER"):
        a.switchover()
    net.run(1)
    with pytest.raises(ValueError, match="no healthy BACKUP"):
        a.switchover()
    assert state(a) == State.MASTER


def test_switchover_returns_to_master_when_nobody_takes_over() -> None:
    """A handover nobody answers times out and the node resumes MASTER."""
    net = Net(0.1)
    a = net.add("app1", 200)
    b = net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    b.set_maintenance(True)
    a.switchover()
    assert state(a) == State.HANDOVER
    net.run(2)
    assert state(a) == State.MASTER
    assert net.vips["app1"].held


def test_maintenance_steps_down_and_stays_backup() -> None:
    """In maintenance a node leaves MASTER and never takes over, even when the peer dies."""
    net = Net(0.1)
    a = net.add("app1", 200)
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    a.set_maintenance(True)
    net.run(0.2)
    assert net.masters() == ["app2"]
    net.dead.add("app2")
    net.run(2)
    assert state(a) == State.BACKUP
    a.set_maintenance(False)
    net.run(1)
    assert state(a) == State.MASTER


def test_witness_refuses_takeover_during_a_partition_between_peers() -> None:
    """With a witness, a partition between the two peers leaves exactly one MASTER."""
    net = Net(0.1)
    net.add_witness()
    net.add("app1", 200, witness=True)
    b = net.add("app2", 100, witness=True)
    started(net, "witness", "app1", "app2")
    net.run(2)
    assert net.masters() == ["app1"]
    net.partition("app1", "app2")
    net.run(5)
    assert net.masters() == ["app1"]
    assert b.counters["votes_refused"] >= 3


def test_witness_grants_takeover_when_master_is_dead() -> None:
    """With a witness, the backup takes over once the witness also stops hearing the master."""
    net = Net(0.1)
    net.add_witness()
    net.add("app1", 200, witness=True)
    net.add("app2", 100, witness=True)
    started(net, "witness", "app1", "app2")
    net.run(2)
    net.dead.add("app1")
    net.run(1)
    assert net.masters() == ["app2"]


def test_isolated_master_with_witness_steps_down() -> None:
    """A master that hears neither peer nor witness steps down; the other side takes over."""
    net = Net(0.1)
    net.add_witness()
    a = net.add("app1", 200, witness=True)
    net.add("app2", 100, witness=True)
    started(net, "witness", "app1", "app2")
    net.run(2)
    net.partition("app1", "app2")
    net.partition("app1", "witness")
    net.run(3)
    assert net.masters() == ["app2"]
    assert a.counters["lost_quorum"] >= 1


def test_late_master_reads_waiting_adverts_before_stepping_down_for_lost_quorum() -> None:
    """A master with a witness that does not read its socket for a second while its peer
    and the witness keep advertising (their adverts wait there) reads them before judging
    quorum lost, and stays MASTER; without reading them it steps down."""
    for drain in (True, False):
        net = Net(0.1)
        net.add_witness()
        a = net.add("app1", 200, witness=True)
        b = net.add("app2", 100, witness=True)
        started(net, "witness", "app1", "app2")
        net.run(2)
        if not drain:
            a.drain = None
        net.stalled.add("app1")
        net.run(1.0)
        net.stalled.discard("app1")
        assert (b.counters["takeovers"] == 0) is drain
        assert (a.counters["lost_quorum"] == 0) is drain
        assert (state(a) == State.MASTER) is drain


def test_no_witness_answer_means_no_takeover() -> None:
    """When the witness does not answer, a vote times out and the node stays BACKUP."""
    net = Net(0.1)
    a = net.add("app1", 200, witness=True)
    started(net, "app1")
    net.run(3)
    assert state(a) in (State.BACKUP, State.CANDIDATE)
    assert not net.vips["app1"].held
    assert a.counters["votes_unanswered"] >= 2


def test_backup_ignores_weaker_master_when_nopreempt_and_keeps_timer_fed() -> None:
    """A nopreempt backup that hears a weaker master keeps resetting its down timer."""
    net = Net(0.1)
    net.add("app2", 100)
    started(net, "app2")
    net.run(1)
    a = net.add("app1", 200, preempt=False)
    a.start()
    net.run(5)
    assert state(a) == State.BACKUP and net.masters() == ["app2"]


def test_non_advert_kinds_from_peers_are_counted_not_acted_on() -> None:
    """A vote request sent to a member (not a witness) is counted and ignored."""
    net = Net(0.1)
    a = net.add("app1", 200)
    a.start()
    a.receive(Message(Kind.VOTE_REQUEST, "app", "app2", State.CANDIDATE, 0, 100, 1, 1))
    assert a.counters["unexpected_kind"] == 1
    assert state(a) == State.BACKUP


def test_status_lists_peers_and_last_heard() -> None:
    """The status names each peer with its state, priority and seconds since heard."""
    net = Net(0.1)
    net.add("app1", 200)
    net.add("app2", 100)
    started(net, "app1", "app2")
    net.run(1)
    status = net.nodes["app2"].status()
    assert status["state"] == "BACKUP"
    (peer,) = status["peers"]
    assert peer["node"] == "app1" and peer["state"] == "MASTER" and peer["priority"] == 200
    assert peer["last_heard_seconds"] <= 0.1

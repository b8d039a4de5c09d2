"""
When a group bridges the connections of a planned move to the old holder
(L{clickpass.heartbeat.actions.HandoffBridge} does it): decided in the group,
on a simulated network and a task.Clock. The peers' addresses in the
simulation are their names.
"""

from __future__ import annotations

import pytest

from clickpass.heartbeat.group import Group
from clickpass.heartbeat.wire import State

from .sim import Net


def state(group: Group) -> State:
    return group.state


def pair(witness: bool = False, **settings: object) -> Net:
    """app1 (200) MASTER and app2 (100) BACKUP, settled; app2 with C{settings}."""
    net = Net(0.1)
    if witness:
        net.add_witness()
        net.nodes["witness"].start()
    net.add("app1", 200, witness=witness)
    net.add("app2", 100, witness=witness, **settings)  # type: ignore[arg-type]
    net.nodes["app1"].start()
    net.nodes["app2"].start()
    net.run(2)
    assert net.masters() == ["app1"]
    return net


def bridges(net: Net, node: str) -> list[str]:
    return [what for _, what in net.vips[node].bridges]


def took(net: Net, node: str) -> list[float]:
    return [t for t, who, what in net.events if who == node and what == "take"]


def test_switchover_bridges_to_the_old_holder_before_taking_and_for_the_drain() -> None:
    """After a switchover (the old master resigns healthy and keeps the VIP), the new
    holder asks for the bridge to it as soon as it hears the resign, its skew (61 ms)
    before it adds the address and sends ARP, so nft has loaded the table by then;
    and ends it vip_drain seconds later (the old holder, heard all along as BACKUP,
    keeps it parked that long)."""
    net = pair()
    b = net.nodes["app2"]
    net.nodes["app1"].switchover()
    net.run(0.5)
    assert net.masters() == ["app2"]
    started = net.vips["app2"].bridges[0][0]
    assert took(net, "app2")[0] - started >= 0.06
    net.run(4.4)
    assert bridges(net, "app2") == ["bridge app1"]
    net.run(0.2)
    assert bridges(net, "app2") == ["bridge app1", "unbridge"]
    # To the 5 ms step of net.run.
    assert net.vips["app2"].bridges[1][0] - started == pytest.approx(5.0, abs=0.006)
    assert b.counters["bridges"] == 1 and b.counters["bridges_ended_silent"] == 0


def test_switchover_with_a_witness_bridges_after_the_vote() -> None:
    """With a witness the new holder asks for its vote after the resign too; a healthy
    resign is still a planned move, so the vote's takeover bridges."""
    net = pair(witness=True)
    net.nodes["app1"].switchover()
    net.run(0.5)
    assert net.masters() == ["app2"]
    assert net.nodes["app2"].counters["votes_granted"] == 1
    assert bridges(net, "app2") == ["bridge app1"]


def test_preempting_a_live_master_bridges_to_it() -> None:
    """A node that takes its VIP back from a live lower-priority master bridges to it."""
    net = pair()
    net.nodes["app1"].stop()
    net.dead.add("app1")
    net.run(1)
    a = net.add("app1", 200)
    net.dead.discard("app1")
    a.start()
    net.run(1)
    assert net.masters() == ["app1"]
    assert bridges(net, "app1") == ["bridge app2"]
    # Asked for at the first advert that allows the preempt; the preempt comes at the
    # next one, an interval later, so nft has loaded the table before our ARP goes out.
    assert took(net, "app1")[-1] - net.vips["app1"].bridges[0][0] == pytest.approx(0.1, abs=0.01)
    net.run(5)
    assert bridges(net, "app1") == ["bridge app2", "unbridge"]


def test_without_the_bridge_the_preempt_comes_at_the_first_advert() -> None:
    """With vip_bridge false nothing is asked for and nothing waits: the returning node
    preempts at the first advert it may."""
    net = pair()
    net.nodes["app1"].stop()
    net.dead.add("app1")
    net.run(1)
    a = net.add("app1", 200, vip_bridge=False)
    net.dead.discard("app1")
    started = net.clock.seconds()
    a.start()
    net.run(1)
    assert net.masters() == ["app1"] and bridges(net, "app1") == []
    assert took(net, "app1")[-1] - started < 0.11


def test_a_bridge_asked_for_at_a_resign_ends_when_the_master_stays() -> None:
    """A resign whose switchover nobody completes (the backup is in maintenance): the
    master resumes MASTER, and the bridge the backup asked for at the resign ends."""
    net = pair()
    net.nodes["app2"].set_maintenance(True)
    net.nodes["app1"].switchover()
    net.run(0.05)
    assert bridges(net, "app2") == ["bridge app1"]
    net.run(2)
    assert net.masters() == ["app1"]
    assert bridges(net, "app2") == ["bridge app1", "unbridge"]
    assert net.vips["app2"].bridges[1][0] < 1.5 + net.vips["app2"].bridges[0][0]


def test_no_bridge_after_missed_adverts_or_a_vote_on_them() -> None:
    """A master that went silent is not handing anything over: no bridge, with or
    without a witness's vote."""
    for witness in (False, True):
        net = pair(witness=witness)
        net.dead.add("app1")
        net.run(1)
        assert state(net.nodes["app2"]) == State.MASTER, witness
        assert net.nodes["app2"].counters["failovers"] == 1
        assert bridges(net, "app2") == [], witness


def test_no_bridge_after_a_fault_resign() -> None:
    """A master that resigns as FAULT released the address at once: no bridge."""
    net = Net(0.1)
    a = net.add("app1", 200, checks=(("workers", 0),))
    net.add("app2", 100)
    a.start()
    net.nodes["app2"].start()
    # Just after one of app1's adverts: app2 takes over (its skew, 61 ms) before
    # app1's next one says FAULT, so only the resign's health tells.
    net.run(2.02)
    a.set_health("workers", False)
    net.run(0.5)
    assert net.masters() == ["app2"]
    assert bridges(net, "app2") == []


def test_no_bridge_with_no_drain_or_turned_off() -> None:
    """vip_drain 0 (the old holder keeps nothing) or vip_bridge false: no bridge."""
    for settings in ({"vip_drain": 0.0}, {"vip_bridge": False}):
        net = pair(**settings)
        net.nodes["app1"].switchover()
        net.run(0.5)
        assert net.masters() == ["app2"], settings
        assert bridges(net, "app2") == [], settings


def test_bridge_ends_early_when_the_old_holder_falls_silent() -> None:
    """A clean stop sends a resign like a switchover's, then nothing: its address is
    gone, so the bridge ends once it is no longer heard (2.5 intervals), not after the
    drain, and a client gets a prompt reset instead of waiting."""
    net = pair()
    net.nodes["app1"].stop()
    net.dead.add("app1")
    stopped = net.clock.seconds()
    net.run(1)
    assert net.masters() == ["app2"]
    assert bridges(net, "app2") == ["bridge app1", "unbridge"]
    ended = net.vips["app2"].bridges[1][0]
    assert ended - stopped <= 2.5 * 0.1 + 0.1 + 0.01
    assert net.nodes["app2"].counters["bridges_ended_silent"] == 1


def test_bridge_ends_when_the_new_holder_lets_the_vip_go() -> None:
    """The bridge ends with the address: on a fault of the new holder (release), and
    when it hands the VIP back in a switchover of its own (hand-off)."""
    net = pair(checks=(("workers", 0),))
    net.nodes["app1"].switchover()
    net.run(0.5)
    net.nodes["app2"].set_health("workers", False)
    assert state(net.nodes["app2"]) == State.FAULT
    assert bridges(net, "app2") == ["bridge app1", "unbridge"]
    assert net.vips["app2"].bridged_to is None

    net = pair()
    net.nodes["app1"].switchover()
    net.run(0.5)
    net.nodes["app2"].switchover()
    net.run(0.5)
    assert net.masters() == ["app1"]
    assert bridges(net, "app2") == ["bridge app1", "unbridge"]
    assert bridges(net, "app1") == ["bridge app2"]


def test_stopping_cancels_the_bridge_timer() -> None:
    """A group that stops ends its bridge with the address and leaves no timer behind."""
    net = pair()
    net.nodes["app1"].switchover()
    net.run(0.5)
    net.nodes["app2"].stop()
    assert bridges(net, "app2") == ["bridge app1", "unbridge"]
    assert net.nodes["app2"]._unbridge is None


def test_a_late_tick_reads_the_old_holders_waiting_adverts_before_ending_the_bridge() -> None:
    """The new holder's process is not scheduled for a while as the old holder keeps
    advertising (its adverts wait in our socket): the tick reads them first and keeps
    the bridge. Without reading them (no drain) the same stall ends it."""
    for drain in (True, False):
        net = pair()
        b = net.nodes["app2"]
        net.nodes["app1"].switchover()
        net.run(0.5)
        if not drain:
            b.drain = None
        net.stalled.add("app2")
        net.run(1.0)
        net.stalled.discard("app2")
        net.drain("app2")
        assert (net.vips["app2"].bridged_to == "app1") is drain
        assert b.counters["bridges_ended_silent"] == (0 if drain else 1)


def test_maintenance_hands_the_vip_over_as_a_switchover_and_is_bridged() -> None:
    """A master put in maintenance hands its VIP over as in a switchover (resigned
    healthy, holding the address until the peer claims MASTER, then parking it for
    the drain) rather than dropping it, and the peer that takes it over bridges to it,
    with a witness's vote too."""
    for witness in (False, True):
        net = pair(witness=witness)
        net.nodes["app1"].set_maintenance(True)
        assert state(net.nodes["app1"]) == State.HANDOVER
        net.run(0.5)
        assert net.masters() == ["app2"], witness
        moves = [what for _, who, what in net.events if who == "app1" and what != "take"]
        assert moves == ["hand_off"], witness
        assert bridges(net, "app2") == ["bridge app1"], witness
        net.run(3)
        assert state(net.nodes["app1"]) == State.BACKUP, witness


def test_maintenance_nobody_takes_over_steps_aside() -> None:
    """A maintenance handover that no peer takes (the peer is in maintenance too) ends
    as the switchover's timeout says, and then the master steps aside all the same."""
    net = pair()
    net.nodes["app2"].set_maintenance(True)
    net.nodes["app1"].set_maintenance(True)
    net.run(3)
    assert net.masters() == []
    assert state(net.nodes["app1"]) == State.BACKUP
    assert [what for _, who, what in net.events if who == "app1" and what != "take"] == ["hand_off"]

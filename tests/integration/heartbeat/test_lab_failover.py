"""
VIP failover in the lab: real nodes in network namespaces, a client that
requests through the app VIP, and faults done to the master.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from clickpass.heartbeat import wire
from clickpass.heartbeat.wire import Kind, Message, State

from .conftest import labmod
from .probe import GapProbe, VipWatch

pytestmark = [pytest.mark.integration, pytest.mark.root]

RECOVER = 5.0


def settle(lab: Any, holders: list[str], timeout: float = 10.0) -> None:
    lab.wait_for(lambda: lab.vip_holders() == holders, timeout, f"VIP held by {holders}")


def state(lab: Any, host: str) -> str:
    """The host's group state, or "" while its node is not answering (starting)."""
    try:
        return str(lab.cluster_status(host)["groups"][0]["state"])
    except labmod.LabError:
        return ""


def assert_client_recovers(lab: Any, probe: Any, fault_at: float) -> None:
    deadline = time.monotonic() + RECOVER
    while time.monotonic() < deadline and not lab.http_ok(timeout=0.5):
        time.sleep(0.05)
    time.sleep(0.3)
    probe.stop()
    took = probe.first_success_after(fault_at + 0.05)
    assert took is not None and took < RECOVER


def test_kill9_master_backup_takes_over_and_old_host_stops_answering(make_lab: Any) -> None:
    """kill -9 of the master's node (node and heartbeat): the backup takes the VIP, the
    client succeeds again, and the killed host's lease lapses so it no longer holds it."""
    lab = make_lab()
    settle(lab, ["app1"])
    probe = labmod.Probe(lab)
    time.sleep(0.5)
    fault_at = time.monotonic()
    lab.signal_node("app1", signal.SIGKILL, whole_group=True)
    assert_client_recovers(lab, probe, fault_at)
    settle(lab, ["app2"], timeout=4.0)  # lease of 2 s, checked by the kernel
    assert labmod.neighbour_mac(lab, "client", labmod.APP_VIP) == labmod.interface_mac(lab, "app2")


def test_kill9_of_the_node_process_alone_resigns_at_once(make_lab: Any) -> None:
    """When only the node's main process dies, its heartbeat sees stdin close, resigns and
    releases the VIP, so the backup takes over after its skew, not 3 intervals."""
    lab = make_lab()
    settle(lab, ["app1"])
    fault_at = time.monotonic()
    lab.signal_node("app1", signal.SIGKILL, whole_group=False)
    settle(lab, ["app2"], timeout=2.0)
    assert time.monotonic() - fault_at < 1.0
    lab.wait_for(lab.http_ok, 3.0, "the client to succeed")


def test_sigstop_of_the_whole_node_moves_the_vip_and_lease_lapses(make_lab: Any) -> None:
    """A frozen master (SIGSTOP of node and heartbeat) loses the VIP: the backup takes it and
    the frozen host's address lapses; after SIGCONT the split brain resolves to one holder."""
    lab = make_lab()
    settle(lab, ["app1"])
    probe = labmod.Probe(lab)
    time.sleep(0.3)
    fault_at = time.monotonic()
    lab.signal_node("app1", signal.SIGSTOP, whole_group=True)
    try:
        assert_client_recovers(lab, probe, fault_at)
        settle(lab, ["app2"], timeout=4.0)
    finally:
        lab.signal_node("app1", signal.SIGCONT, whole_group=True)
    settle(lab, ["app1"], timeout=10.0)  # preempt: app1 outranks app2
    lab.wait_for(lab.http_ok, 3.0, "the client to succeed")


def test_sigstop_of_the_node_process_faults_its_heartbeat(make_lab: Any) -> None:
    """A frozen node whose heartbeat still runs goes to FAULT when the node's pings stop."""
    lab = make_lab()
    settle(lab, ["app1"])
    lab.signal_node("app1", signal.SIGSTOP, whole_group=False)
    try:
        settle(lab, ["app2"], timeout=5.0)
        lab.wait_for(lab.http_ok, 3.0, "the client to succeed")
    finally:
        lab.signal_node("app1", signal.SIGCONT, whole_group=False)
    settle(lab, ["app1"], timeout=10.0)


def test_link_down_backup_takes_over(make_lab: Any) -> None:
    """Pulling the master's cable: the backup takes over and the client succeeds again."""
    lab = make_lab()
    settle(lab, ["app1"])
    probe = labmod.Probe(lab)
    time.sleep(0.3)
    fault_at = time.monotonic()
    lab.link("app1", up=False)
    assert_client_recovers(lab, probe, fault_at)
    assert state(lab, "app2") == "MASTER"
    # Behind a dead link app1 cannot reach the witness or its peer: it steps down.
    lab.wait_for(lambda: state(lab, "app1") != "MASTER", 5.0, "app1 to lose quorum")
    lab.link("app1", up=True)
    settle(lab, ["app1"], timeout=10.0)


def test_gratuitous_arp_is_what_updates_the_client(make_lab: Any) -> None:
    """With gratuitous ARP off the client keeps the dead master's MAC after a takeover;
    with it on the client's neighbour entry moves to the new master at once."""
    for garp_count, expected in ((0, "app1"), (5, "app2")):
        lab = make_lab(overrides={"garp_count": str(garp_count)})
        settle(lab, ["app1"])
        # If app2 won the first election (app1 slow to start) and app1 then
        # preempted without ARP, the client still has app2's MAC: start clean.
        lab.exec("client", "ip", "neigh", "flush", "dev", "eth0")
        lab.wait_for(lab.http_ok, 3.0, "the client to succeed")
        assert labmod.neighbour_mac(lab, "client", labmod.APP_VIP) == labmod.interface_mac(
            lab, "app1"
        )
        lab.signal_node("app1", signal.SIGKILL, whole_group=True)
        lab.wait_for(lambda lab=lab: "app2" in lab.vip_holders(), 3.0, "app2 to take the VIP")
        time.sleep(0.5)  # the burst; the client sends nothing meanwhile
        mac = labmod.neighbour_mac(lab, "client", labmod.APP_VIP)
        assert mac == labmod.interface_mac(lab, expected), f"garp_count={garp_count}"
        lab.down()


def test_nopreempt_restarted_master_stays_backup(make_lab: Any) -> None:
    """With nopreempt the old master, restarted, stays BACKUP and the VIP stays put."""
    lab = make_lab(preempt=False)
    # Without preemption whichever node was ready first is MASTER.
    lab.wait_for(lambda: len(lab.vip_holders()) == 1, 10.0, "one VIP holder")
    (first,) = lab.vip_holders()
    (other,) = {"app1", "app2"} - {first}
    lab.signal_node(first, signal.SIGKILL, whole_group=True)
    settle(lab, [other], timeout=5.0)
    lab.start_node(first)
    lab.wait_for(lambda: state(lab, first) == "BACKUP", 20.0, f"{first} to start as BACKUP")
    time.sleep(2.0)
    assert lab.vip_holders() == [other]
    assert state(lab, first) == "BACKUP"


def assert_no_gap(
    watch: VipWatch, holders: list[str], probe: GapProbe, started: float, ended: float
) -> None:
    """The VIP was held by some host at every moment (the kernel's order of address events),
    and every new connection made meanwhile was answered at once (see probe.py: a connection
    in flight when the client's ARP entry moved may be cut; that is no gap)."""
    events = watch.stop()
    assert ("app2" if holders == ["app1"] else "app1", "add") in events
    empty = watch.moments_without_holder(holders)
    assert empty == [], f"nobody held the VIP after event {empty[0]} of {events}"
    attempts = probe.between(started, ended)
    gaps = [a for a in attempts if a.gap]
    assert gaps == [], f"nobody answered the VIP for {len(gaps)} new connections: {gaps[:5]}"
    assert sum(a.ok for a in attempts) >= 10


def test_preempt_restarted_master_takes_back_with_no_gap(make_lab: Any) -> None:
    """With preempt the restarted master takes the VIP back, and the VIP answers every new
    connection meanwhile: the new master has the address up and has sent gratuitous ARP
    before the old one lets it go."""
    lab = make_lab()
    settle(lab, ["app1"])
    lab.signal_node("app1", signal.SIGKILL, whole_group=True)
    settle(lab, ["app2"], timeout=10.0)
    lab.stop_node("app1")  # reap
    lab.wait_for(lab.http_ok, 10.0, "the client to succeed through app2")
    watch = VipWatch(lab, labmod.APP_VIP)
    probe = GapProbe(lab, labmod.APP_VIP, labmod.HTTP_PORT)
    time.sleep(0.5)
    started = time.monotonic()
    lab.start_node("app1")
    settle(lab, ["app1"], timeout=60.0)
    time.sleep(1.0)
    ended = time.monotonic()
    probe.stop()
    assert_no_gap(watch, ["app2"], probe, started, ended)


def _send_from_client(lab: Any, packets: list[bytes], port: int = 5405) -> None:
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for h in sys.argv[2:]:\n"
        f"    s.sendto(bytes.fromhex(h), (sys.argv[1], {port}))\n"
    )
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("client"),
            sys.executable,
            "-c",
            code,
            labmod.HOSTS["app2"],
            *[p.hex() for p in packets],
        ],
        check=True,
    )


def test_forged_and_replayed_heartbeats_do_not_move_the_vip(make_lab: Any) -> None:
    """Forged adverts (wrong key, garbage, oversized) and a correctly signed resign that
    reuses an (epoch, seq) already seen, which is what a replay is, are dropped and counted;
    the VIP stays with the master."""
    lab = make_lab()
    settle(lab, ["app1"])
    key = wire.derive_key(lab.secret.encode())
    # Signed with the lab's real key, but with app1's first (epoch, seq): a replay.
    epoch = lab.cluster_status("app1")["epoch"]
    resign = wire.encode(Message(Kind.ADVERT, "app", "app1", State.MASTER, 0, 100, epoch, 1), key)
    wrong_key = wire.derive_key(b"not the lab secret at all")
    forged = wire.encode(
        Message(Kind.ADVERT, "app", "app1", State.MASTER, 0, 100, epoch + 1, 1), wrong_key
    )
    _send_from_client(lab, [resign, forged, b"\x00" * 40, b"CPHB" + b"\xff" * 3000])
    time.sleep(1.5)
    assert lab.vip_holders() == ["app1"]
    assert state(lab, "app2") == "BACKUP"
    packets = lab.cluster_status("app2")["packets"]
    assert packets.get("replayed", 0) >= 1
    assert packets.get("bad_mac", 0) >= 1
    assert packets.get("malformed", 0) >= 1
    assert packets.get("oversized", 0) >= 1


def test_partition_with_witness_leaves_exactly_one_master(make_lab: Any) -> None:
    """Cutting app1 from app2 while both reach the witness: the witness refuses app2's
    takeover, so app1 stays the only MASTER."""
    lab = make_lab()
    settle(lab, ["app1"])
    lab.partition("app1", "app2")
    # app2 misses app1's adverts and asks the witness, which refuses: wait
    # for two refusals (what a fixed pause of three seconds waited for).
    lab.wait_for(
        lambda: lab.cluster_status("witness")["groups"][0]["counters"].get("refused", 0) >= 2,
        15.0,
        "the witness to refuse app2's takeover twice",
    )
    assert lab.vip_holders() == ["app1"]
    assert [state(lab, h) for h in ("app1", "app2")] == ["MASTER", "BACKUP"]
    lab.partition("app1", "app2", on=False)
    time.sleep(1.0)
    assert lab.vip_holders() == ["app1"]


def test_ctl_switchover_and_maintenance(make_lab: Any) -> None:
    """clickpass-ctl cluster shows peers; switchover moves the VIP with no gap (every new
    connection answered at once); maintenance keeps a node BACKUP."""
    lab = make_lab()
    settle(lab, ["app1"])
    text = lab.ctl("app1", "cluster")
    assert "MASTER" in text and "app2" in text and "ms ago" in text
    watch = VipWatch(lab, labmod.APP_VIP)
    probe = GapProbe(lab, labmod.APP_VIP, labmod.HTTP_PORT)
    time.sleep(0.5)
    started = time.monotonic()
    assert "handing the VIP" in lab.ctl("app1", "cluster", "switchover", "app")
    settle(lab, ["app2"], timeout=10.0)
    time.sleep(0.5)
    ended = time.monotonic()
    probe.stop()
    assert_no_gap(watch, ["app1"], probe, started, ended)
    lab.ctl("app2", "cluster", "maintenance", "on")
    settle(lab, ["app1"], timeout=10.0)
    lab.signal_node("app1", signal.SIGKILL, whole_group=True)
    time.sleep(3.0)
    assert state(lab, "app2") == "BACKUP"

"""Tests for the VIP, gratuitous ARP and notify hook actions, with a fake program runner
and the rtnetlink messages the heartbeat sends itself."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from clickpass.heartbeat.actions import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    RTM_DELADDR,
    RTM_NEWADDR,
    CommandRunner,
    HandoffBridge,
    HookRunner,
    IpCommand,
    Result,
    VipManager,
    ack_error,
    address_message,
    arp_quiet,
    bridge_ruleset,
    bridge_table,
    garp_frame,
    parked_settings,
)
from clickpass.heartbeat.settings import ClusterGroupSettings
from clickpass.heartbeat.wire import State

SETTINGS = ClusterGroupSettings(
    name="app",
    vip="10.77.0.100/24",
    interface="eth0",
    peers=["10.77.0.12"],
    lease=3,
    garp_count=3,
    garp_interval=0.05,
)


class FakeRunner:
    """Records every program started; the test ends each one by hand."""

    def __init__(self) -> None:
        self.started: list[tuple[list[str], Deferred[Result]]] = []
        self.stdin: list[bytes] = []

    def run(self, argv: Any, timeout: float, stdin: bytes = b"") -> Deferred[Result]:
        d: Deferred[Result] = Deferred()
        self.started.append((list(argv), d))
        self.stdin.append(stdin)
        return d

    def finish(self, index: int, code: int = 0, output: str = "") -> None:
        self.started[index][1].callback(Result(code, output))


class FakeGarp:
    def __init__(self) -> None:
        self.sent = 0
        self.counters: dict[str, int] = {}

    def send(self) -> None:
        self.sent += 1

    def close(self) -> None:
        pass


def manager() -> tuple[VipManager, FakeRunner, FakeGarp, Clock]:
    runner, garp, clock = FakeRunner(), FakeGarp(), Clock()
    vip = VipManager(SETTINGS, IpCommand(SETTINGS, runner), clock, garp)  # type: ignore[arg-type]
    return vip, runner, garp, clock


def test_take_adds_a_lease_then_sends_garp_after_the_address_is_up() -> None:
    """Taking the VIP runs ip addr replace with lifetimes; ARP only once that succeeded."""
    vip, runner, garp, clock = manager()
    vip.take()
    assert runner.started[0][0] == [
        "ip",
        "-4",
        "addr",
        "replace",
        "10.77.0.100/24",
        "dev",
        "eth0",
        "valid_lft",
        "3",
        "preferred_lft",
        "3",
    ]
    assert garp.sent == 0
    runner.finish(0)
    assert garp.sent == 1
    clock.advance(0.05)
    clock.advance(0.05)
    clock.advance(1)
    assert garp.sent == 3  # garp_count


def test_failed_take_sends_no_arp_and_is_counted() -> None:
    """When ip fails, no ARP announces an address we do not have; the failure is counted."""
    vip, runner, garp, _ = manager()
    vip.take()
    runner.finish(0, code=2, output="RTNETLINK answers: Operation not permitted")
    assert garp.sent == 0
    assert vip.counters["take_failed"] == 1


def test_actions_run_in_order() -> None:
    """A release queued behind a take waits for it; each program starts after the previous ends."""
    vip, runner, _, _ = manager()
    vip.take()
    vip.release()
    assert len(runner.started) == 1
    runner.finish(0)
    assert runner.started[1][0][3] == "del"


def test_renewals_do_not_pile_up() -> None:
    """Only one renewal is queued at a time, and none when the VIP is not held."""
    vip, runner, _, _ = manager()
    vip.renew()
    assert runner.started == []
    vip.take()
    runner.finish(0)
    vip.renew()
    vip.renew()
    vip.renew()
    assert len(runner.started) == 2
    runner.finish(1)
    vip.renew()
    assert len(runner.started) == 3


def test_release_of_an_absent_address_is_not_an_error() -> None:
    """Releasing a VIP that is not there is counted as absent, not as a failure."""
    vip, runner, _, _ = manager()
    vip.release()
    runner.finish(0, code=2, output="RTNETLINK answers: Cannot assign requested address")
    assert vip.counters["release_absent"] == 1
    assert vip.counters["release_failed"] == 0


def test_release_stops_a_garp_burst() -> None:
    """No gratuitous ARP goes out for an address after it was released."""
    vip, runner, garp, clock = manager()
    vip.take()
    runner.finish(0)
    vip.release()
    clock.advance(1)
    assert garp.sent == 1


QUIET = {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2}


def parking_manager(
    sysctls: dict[str, int], drain: float = 5.0
) -> tuple[VipManager, FakeRunner, FakeRunner, Clock]:
    """A manager whose eth0 and lo addresses are changed by two fake runners."""
    settings = dataclasses.replace(SETTINGS, vip_drain=drain)
    runner, parking, clock = FakeRunner(), FakeRunner(), Clock()
    vip = VipManager(
        settings,
        IpCommand(settings, runner),  # type: ignore[arg-type]
        clock,
        FakeGarp(),  # type: ignore[arg-type]
        parking=IpCommand(parked_settings(settings), parking),  # type: ignore[arg-type]
        sysctl=sysctls.get,
    )
    vip.take()
    runner.finish(0)
    return vip, runner, parking, clock


def test_hand_off_keeps_the_address_on_lo_for_the_drain_then_removes_it() -> None:
    """A planned move puts the VIP on lo as a /32 (with a lease past the drain) before
    it leaves eth0, so replies in flight can still be sent; after vip_drain it goes."""
    vip, runner, parking, clock = parking_manager(QUIET, drain=2.5)
    vip.hand_off()
    assert parking.started[0][0] == [
        "ip", "-4", "addr", "replace", "10.77.0.100/32", "dev", "lo",
        "valid_lft", "4", "preferred_lft", "4",
    ]  # fmt: skip
    assert len(runner.started) == 1  # eth0 not touched until lo has it
    parking.finish(0)
    assert runner.started[1][0] == ["ip", "-4", "addr", "del", "10.77.0.100/24", "dev", "eth0"]
    runner.finish(1)
    clock.advance(2.4)
    assert len(parking.started) == 1
    clock.advance(0.1)
    assert parking.started[1][0] == ["ip", "-4", "addr", "del", "10.77.0.100/32", "dev", "lo"]
    parking.finish(1)
    assert (vip.counters["parked"], vip.counters["release"], vip.counters["unparked"]) == (1, 1, 1)


def test_hand_off_releases_at_once_when_the_host_would_still_answer_arp() -> None:
    """Without arp_ignore/arp_announce the address on lo would still be claimed on the
    network: it is released at once, and that is counted."""
    for sysctls in (
        {},
        {"net.ipv4.conf.eth0.arp_ignore": 1},
        {**QUIET, "net.ipv4.conf.all.arp_ignore": 8},
    ):
        vip, runner, parking, _ = parking_manager(sysctls)
        vip.hand_off()
        assert parking.started == [], sysctls
        assert runner.started[1][0][3] == "del"
        assert vip.counters["hand_off_unparked"] == 1


def test_hand_off_with_no_drain_or_not_held_is_a_release() -> None:
    """vip_drain 0, or an address not held, hands off as a plain release."""
    vip, runner, parking, _ = parking_manager(QUIET, drain=0.0)
    vip.hand_off()
    assert parking.started == [] and runner.started[1][0][3] == "del"
    vip, runner, parking, _ = parking_manager(QUIET)
    vip.release()
    runner.finish(1)
    vip.hand_off()
    assert parking.started == [] and runner.started[2][0][3] == "del"


def test_taking_back_during_the_drain_removes_the_parked_copy_after_eth0_has_it() -> None:
    """Taken back before the drain ends: eth0 gets the address first, then lo loses it,
    and no timer removes anything later."""
    vip, runner, parking, clock = parking_manager(QUIET)
    vip.hand_off()
    parking.finish(0)
    runner.finish(1)
    vip.take()
    runner.finish(2)
    assert runner.started[2][0][3] == "replace"
    assert parking.started[1][0][3] == "del"
    parking.finish(1)
    clock.advance(10)
    assert len(parking.started) == 2 and vip.held


def test_arp_quiet_takes_the_larger_of_all_and_the_interface() -> None:
    """The kernel uses the larger of conf.all and conf.IFACE for both settings."""
    assert arp_quiet("eth0", QUIET.get)
    assert arp_quiet(
        "eth0", {"net.ipv4.conf.eth0.arp_ignore": 2, "net.ipv4.conf.eth0.arp_announce": 2}.get
    )
    assert not arp_quiet("eth0", {"net.ipv4.conf.eth0.arp_announce": 2}.get)
    assert not arp_quiet("eth0", {"net.ipv4.conf.all.arp_ignore": 1}.get)


def test_garp_frame_layout() -> None:
    """The frame is a broadcast ARP request whose sender and target IP are both the VIP."""
    mac = bytes.fromhex("020000000001")
    frame = garp_frame(mac, "10.77.0.100")
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac
    assert struct.unpack("!H", frame[12:14])[0] == 0x0806
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == mac
    assert frame[28:32] == frame[38:42] == bytes([10, 77, 0, 100])


def test_netlink_replace_carries_the_address_and_its_lease() -> None:
    """RTM_NEWADDR asks for an ack, creates or replaces, and carries the address (local and
    address attributes), its prefix, the interface and the lease as both lifetimes."""
    message = address_message(
        RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK, 7, 3, "10.77.0.100/24", 2
    )
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", message)
    assert (length, kind, seq) == (len(message), RTM_NEWADDR, 7)
    assert flags == 0x1 | NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK
    family, prefix, _, scope, index = struct.unpack_from("=BBBBI", message, 16)
    assert (family, prefix, scope, index) == (2, 24, 0, 3)
    attributes = {}
    offset = 24
    while offset < len(message):
        size, kind = struct.unpack_from("=HH", message, offset)
        attributes[kind] = message[offset + 4 : offset + size]
        offset += (size + 3) & ~3
    assert attributes[1] == attributes[2] == bytes([10, 77, 0, 100])
    assert struct.unpack("=IIII", attributes[6]) == (2, 2, 0, 0)


def test_netlink_delete_has_no_lease() -> None:
    """RTM_DELADDR names the address and carries no lifetimes."""
    message = address_message(RTM_DELADDR, NLM_F_ACK, 8, 3, "fd00::100/64", None)
    assert struct.unpack_from("=H", message, 4)[0] == RTM_DELADDR
    assert struct.unpack_from("=BB", message, 16) == (10, 64)
    assert len(message) == 16 + 8 + 2 * (4 + 16)


def test_netlink_ack_is_matched_by_sequence_number() -> None:
    """The errno of the NLMSG_ERROR answering our request; others are skipped."""

    def error(seq: int, errno: int) -> bytes:
        return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", -errno) + b"\0" * 16

    assert ack_error(error(4, 99) + error(5, 0), 5) == 0
    assert ack_error(error(4, 99) + error(5, 0), 4) == 99
    assert ack_error(error(4, 99), 6) is None
    assert ack_error(b"\0" * 8, 1) is None


def test_hooks_run_in_order_and_skip_repeats() -> None:
    """Each change runs every program in order; a repeated state is not re-notified."""
    runner = FakeRunner()
    hooks = HookRunner(["/bin/first --x", "/bin/second"], 5.0, runner)  # type: ignore[arg-type]
    hooks.notify("app", State.MASTER)
    hooks.notify("app", State.MASTER)
    hooks.notify("app", State.BACKUP)
    assert [argv for argv, _ in runner.started] == [["/bin/first", "--x", "app", "MASTER"]]
    runner.finish(0, code=1, output="boom")
    assert runner.started[1][0] == ["/bin/second", "app", "MASTER"]
    runner.finish(1)
    runner.finish(2)
    runner.finish(3)
    assert [argv[-1] for argv, _ in runner.started] == ["MASTER", "MASTER", "BACKUP", "BACKUP"]
    assert hooks.counters["hooks_failed"] == 1
    assert hooks.counters["hooks_ok"] == 3


def test_bridge_table_is_named_after_the_group_and_safe_for_nft() -> None:
    """A plain group name is kept; any other is made of letters, digits and _ and told
    apart from its look-alikes by a hash of the real name."""
    assert bridge_table("app1") == "clickpass_handoff_app1"
    odd = [bridge_table(name) for name in ("db-1", "db_1", "db 1", 'x"; flush ruleset', "é")]
    assert odd[1] == "clickpass_handoff_db_1"
    assert len(set(odd)) == len(odd)
    assert all(name.isascii() and name.replace("_", "").isalnum() for name in odd)


def test_bridge_ruleset_replaces_or_removes_the_table_in_one_transaction() -> None:
    """The table is declared then deleted (so it works whether or not it was there),
    then, to bridge, loaded afresh: non-SYN packets unknown to conntrack mark their
    connection, and a marked connection's packets are copied to the old holder and
    dropped here."""
    assert bridge_ruleset("t", "10.77.0.100", None, "eth0") == ("table ip t\ndelete table ip t\n")
    assert bridge_ruleset("t", "10.77.0.100", "10.77.0.11", "eth0").splitlines() == [
        "table ip t",
        "delete table ip t",
        "table ip t {",
        "\tchain pre {",
        "\t\ttype filter hook prerouting priority -150; policy accept;",
        "\t\tip daddr 10.77.0.100 tcp flags & syn == 0 ct state new ct mark set 0x1",
        '\t\tip daddr 10.77.0.100 ct mark 0x1 dup to 10.77.0.11 device "eth0" drop',
        "\t}",
        "}",
    ]


def test_bridge_installs_and_removes_its_table_with_nft() -> None:
    """install loads the group's table through nft -f - (the ruleset on stdin); remove
    deletes it, once: a second removal runs nothing."""
    runner = FakeRunner()
    bridge = HandoffBridge(SETTINGS, runner)  # type: ignore[arg-type]
    bridge.install("10.77.0.11")
    assert runner.started[0][0] == ["nft", "-f", "-"]
    assert (
        runner.stdin[0]
        == bridge_ruleset("clickpass_handoff_app", "10.77.0.100", "10.77.0.11", "eth0").encode()
    )
    runner.finish(0)
    assert bridge.bridged_to == "10.77.0.11"
    bridge.remove()
    runner.finish(1)
    assert (
        runner.stdin[1] == bridge_ruleset("clickpass_handoff_app", "10.77.0.100", None, "").encode()
    )
    bridge.remove()
    assert len(runner.started) == 2
    assert bridge.bridged_to is None
    assert (bridge.counters["bridged"], bridge.counters["unbridged"]) == (1, 1)


def test_first_removal_clears_a_table_a_previous_run_left() -> None:
    """The group releases its VIP at start, and that first removal runs nft even though
    this process installed nothing: a table left by a previous run of the node goes."""
    runner = FakeRunner()
    bridge = HandoffBridge(SETTINGS, runner)  # type: ignore[arg-type]
    bridge.remove()
    assert runner.stdin[0].endswith(b"delete table ip clickpass_handoff_app\n")
    runner.finish(0)
    assert bridge.counters["unbridged"] == 0  # nothing of ours was there
    bridge.remove()
    assert len(runner.started) == 1


def test_nft_missing_warns_once_and_the_move_goes_on() -> None:
    """When nft cannot run, one warning says so (not one per move), each failure is
    counted, and the VIP is taken all the same, without waiting for nft."""
    runner, nft, clock = FakeRunner(), FakeRunner(), Clock()
    vip = VipManager(
        SETTINGS,
        IpCommand(SETTINGS, runner),  # type: ignore[arg-type]
        clock,
        FakeGarp(),  # type: ignore[arg-type]
        bridge=HandoffBridge(SETTINGS, nft),  # type: ignore[arg-type]
    )
    with capturedLogs() as events:
        vip.unbridge()  # at start
        vip.bridge("10.77.0.11")
        vip.take()
        assert runner.started[0][0][3] == "replace"  # not behind nft
        runner.finish(0)
        assert vip.held
        for i in range(3):
            nft.finish(i, code=1, output="cannot start nft: No such file or directory")
            vip.unbridge()
            vip.bridge("10.77.0.11")
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert len(warnings) == 1
    assert "without a bridge" in warnings[0]["log_format"]
    assert "No such file or directory" in warnings[0]["why"]
    counters = vip.status_counters()
    assert counters["bridge_failed"] >= 1 and counters["unbridge_failed"] >= 1


def test_bridge_refuses_an_address_off_the_vips_network_with_one_warning() -> None:
    """dup sends on the VIP's link: an old holder's address outside the VIP's network
    (or not IPv4) is not bridged to; nft is not run, and one warning says why."""
    runner = FakeRunner()
    bridge = HandoffBridge(SETTINGS, runner)  # type: ignore[arg-type]
    with capturedLogs() as events:
        bridge.install("192.168.1.5")
        bridge.install("fd00::5")
    assert runner.started == []
    assert bridge.counters["bridge_skipped"] == 2
    assert len([e for e in events if e["log_level"].name == "warn"]) == 1


def test_ipv6_vips_are_never_bridged() -> None:
    """The parking is IPv4 only, so is the bridge: an IPv6 group runs no nft."""
    settings = dataclasses.replace(SETTINGS, vip="fd00::100/64")
    runner, nft = FakeRunner(), FakeRunner()
    vip = VipManager(
        settings,
        IpCommand(settings, runner),  # type: ignore[arg-type]
        Clock(),
        FakeGarp(),  # type: ignore[arg-type]
        bridge=HandoffBridge(settings, nft),  # type: ignore[arg-type]
    )
    vip.unbridge()
    vip.bridge("fd00::11")
    assert nft.started == []


class SpawningClock(Clock):
    """A reactor that records each process started and what was written to its stdin."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes | str] = []

    def spawnProcess(self, protocol: Any, executable: str, args: Any, **kwargs: Any) -> None:
        writes = self.writes

        class Transport:
            def write(self, data: bytes) -> None:
                writes.append(data)

            def closeStdin(self) -> None:
                writes.append("closed")

        protocol.makeConnection(Transport())


def test_command_runner_writes_stdin_then_closes_it() -> None:
    """What is given as stdin is written to the program, and then its stdin is closed
    (nft -f - reads to the end); with none, stdin is only closed."""
    reactor = SpawningClock()
    CommandRunner(reactor).run(["nft", "-f", "-"], 2.0, stdin=b"table ip t\n")
    CommandRunner(reactor).run(["ip", "addr"], 2.0)
    assert reactor.writes == [b"table ip t\n", "closed", "closed"]


def test_with_the_bridge_off_a_missing_nft_is_no_news() -> None:
    """With vip_bridge = false the removal at start is nft's only use: when it cannot
    run, nothing is warned (the bridge is off anyway), only counted."""
    runner = FakeRunner()
    bridge = HandoffBridge(dataclasses.replace(SETTINGS, vip_bridge=False), runner)  # type: ignore[arg-type]
    with capturedLogs() as events:
        bridge.remove()
        runner.finish(0, code=1, output="cannot start nft: No such file or directory")
    assert [e for e in events if e["log_level"].name == "warn"] == []
    assert bridge.counters["unbridge_failed"] == 1

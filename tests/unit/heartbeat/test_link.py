"""
The process link: two heartbeat processes authenticate each other over TCP,
and the outgoing end reports its peer gone when the far end closes; nothing
is reported for unauthenticated links, for our own stop, or for the incoming
end. And a group treats "my master's process is gone" like its resign.
"""

from __future__ import annotations

from typing import Any

import pytest

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from clickpass.heartbeat.group import skew
from clickpass.heartbeat.link import AUTH_TIMEOUT, LinkProtocol, ProcessLink, proof
from clickpass.heartbeat.wire import State

from .sim import Net

KEY = b"k" * 32


def make_link(node: str, key: bytes = KEY) -> tuple[ProcessLink, list[str]]:
    gone: list[str] = []
    link = ProcessLink(Clock(), key, node, "127.0.0.1", 5405, [], gone.append)
    return link, gone


def pump(a: LinkProtocol, ta: StringTransport, b: LinkProtocol, tb: StringTransport) -> None:
    for _ in range(4):
        da, db = ta.value(), tb.value()
        ta.clear()
        tb.clear()
        if da:
            b.dataReceived(da)
        if db:
            a.dataReceived(db)


def connected(
    key_a: bytes = KEY, key_b: bytes = KEY
) -> tuple[LinkProtocol, StringTransport, ProcessLink, list[str], LinkProtocol, StringTransport]:
    """app2's outgoing link to app1 (a), and app1's incoming end (b)."""
    link_a, gone_a = make_link("app2", key_a)
    link_b, _ = make_link("app1", key_b)
    a, b = LinkProtocol(link_a, outgoing=True), LinkProtocol(link_b, outgoing=False)
    ta, tb = StringTransport(), StringTransport()
    a.makeConnection(ta)
    b.makeConnection(tb)
    pump(a, ta, b, tb)
    return a, ta, link_a, gone_a, b, tb


def closed() -> Failure:
    return Failure(ConnectionError("closed by the peer"))


def test_both_ends_authenticate_and_the_far_end_closing_reports_the_peer_gone() -> None:
    """Each end proves the key on the other's nonce; when the far end's process dies (its
    kernel closes the connection), the outgoing end reports that peer gone, once."""
    a, _, link_a, gone, b, _ = connected()
    assert (a.peer, b.peer) == ("app1", "app2")
    a.connectionLost(closed())
    assert gone == ["app1"]
    assert link_a.counters["peer_gone"] == 1


def test_incoming_end_and_our_own_stop_report_nothing() -> None:
    """Only the outgoing end reports; a link we close ourselves (stop) reports nothing."""
    a, _, link_a, gone, b, _ = connected()
    b.connectionLost(closed())
    link_a.stop()
    a.connectionLost(closed())
    assert gone == []


@pytest.mark.parametrize("key_b", [b"x" * 32])
def test_wrong_key_is_refused_and_its_closing_reports_nothing(key_b: bytes) -> None:
    """A far end without the key is refused (closed); losing it is not a peer gone."""
    a, ta, link_a, gone, b, _ = connected(key_b=key_b)
    assert a.peer is None and b.peer is None
    assert ta.disconnecting
    assert link_a.counters["bad_auth"] == 1
    a.connectionLost(closed())
    assert gone == []


def test_an_answer_to_another_nonce_is_refused() -> None:
    """A proof made for another nonce (a replayed answer) does not authenticate."""
    link, gone = make_link("app2")
    protocol, transport = LinkProtocol(link, outgoing=True), StringTransport()
    protocol.makeConnection(transport)
    stale = proof(KEY, b"\x00" * 16, "app1")
    protocol.dataReceived(b"AUTH " + stale.encode() + b" app1\n")
    assert protocol.peer is None and transport.disconnecting
    protocol.connectionLost(closed())
    assert gone == []


def test_silent_connection_is_closed_after_the_auth_timeout() -> None:
    """A connection that never proves the key is closed after AUTH_TIMEOUT."""
    link, _ = make_link("app2")
    protocol, transport = LinkProtocol(link, outgoing=False), StringTransport()
    protocol.makeConnection(transport)
    assert isinstance(link.clock, Clock)
    link.clock.advance(AUTH_TIMEOUT - 0.1)
    assert not transport.disconnecting
    link.clock.advance(0.2)
    assert transport.disconnecting
    protocol.dataReceived(b"garbage that is not a line of the protocol\n")
    assert link.counters["auth_timeout"] == 1


def _pair(net: Net) -> Any:
    a = net.add("app1", 200)
    b = net.add("app2", 100)
    a.start()
    b.start()
    net.run(1)
    assert net.masters() == ["app1"]
    return a, b


def test_masters_process_gone_is_a_resign_takeover_after_skew_only() -> None:
    """The master's process link closes (and it sends nothing more): the backup takes over
    after its skew alone, and reports the failover as the master's process being gone."""
    net = Net(0.1)
    _, b = _pair(net)
    reports: list[dict[str, Any]] = []
    b.on_failover = reports.append
    net.dead.add("app1")
    net.run(0.002, step=0.001)  # its last advert, already on the wire, arrives first
    gone_at = net.clock.seconds()
    b.peer_process_gone("app1")
    net.run(0.5, step=0.001)
    took = [t for t, who, what in net.events if who == "app2" and what == "take"]
    assert b.state == State.MASTER
    assert took[0] - gone_at == pytest.approx(skew(100, 0.1), abs=0.002)
    assert [r["reason"] for r in reports] == ["heartbeat process gone"]


def test_the_masters_last_advert_read_after_its_link_closed_does_not_undo_it() -> None:
    """
    The master's last advert, sent just before it died, is still waiting in
    the backup's socket when the backup reads the link's close (two sockets,
    no order between them): it is read first, so the takeover still comes
    after the skew alone and names the process gone, not missed adverts.
    """
    net = Net(0.1)
    _, b = _pair(net)
    reports: list[dict[str, Any]] = []
    b.on_failover = reports.append
    net.stalled.add("app2")
    net.run(0.1, step=0.001)  # an advert from app1 waits in app2's socket
    assert net.inbox["app2"]
    net.dead.add("app1")
    net.stalled.discard("app2")  # app2 runs again and reads the link's close first
    gone_at = net.clock.seconds()
    b.peer_process_gone("app1")
    net.run(0.5, step=0.001)
    took = [t for t, who, what in net.events if who == "app2" and what == "take"]
    assert took and took[0] - gone_at == pytest.approx(skew(100, 0.1), abs=0.002)
    assert [r["reason"] for r in reports] == ["heartbeat process gone"]


@pytest.mark.parametrize("witness", [False, True])
def test_a_faulted_backup_remembers_its_masters_process_gone_for_its_later_takeover(
    witness: bool,
) -> None:
    """
    The order a lab run saw: the backup's own node is not ready yet (FAULT)
    when its master's process link closes. It cannot take over then, but it
    knows why the master is gone: when it recovers and takes over (after the
    down interval, no advert having come), it names the process gone, not
    missed adverts, and counts the closed link once.
    """
    net = Net(0.1)
    if witness:
        net.add_witness()
    net.add("app1", 200, witness=witness)
    b = net.add("app2", 100, checks=(("node", 0),), witness=witness)
    for node in net.nodes.values():
        node.start()
    net.run(1)
    assert net.masters() == ["app1"]
    reports: list[dict[str, Any]] = []
    b.on_failover = reports.append
    b.set_health("node", False)
    assert b.state == State.FAULT
    net.dead.add("app1")
    net.run(0.002, step=0.001)
    b.peer_process_gone("app1")
    net.run(0.2, step=0.001)
    assert b.state == State.FAULT
    b.set_health("node", True)
    net.run(1, step=0.001)
    assert "app2" in net.holders()
    assert [(r["from"], r["reason"]) for r in reports] == [("app1", "heartbeat process gone")]
    assert b.counters["master_process_gone"] == 1


def test_a_link_closing_while_the_witness_is_asked_names_the_takeover() -> None:
    """
    The master's process dies slowly (its kernel closes the link only after
    the backup's down timer fired): the backup asks the witness on missed
    adverts, the link closes before the vote comes back, and the takeover
    names what the backup knows when it takes the VIP: the process gone.
    """
    net = Net(0.1)
    net.add_witness()
    net.add("app1", 200, witness=True)
    b = net.add("app2", 100, witness=True)
    for node in net.nodes.values():
        node.start()
    net.run(1)
    assert net.masters() == ["app1"]
    reports: list[dict[str, Any]] = []
    b.on_failover = reports.append
    net.dead.add("app1")
    while b.state != State.CANDIDATE:
        net.run(0.0001, step=0.0001)
    b.peer_process_gone("app1")
    net.run(0.5, step=0.001)
    assert "app2" in net.holders()
    assert [(r["from"], r["reason"]) for r in reports] == [("app1", "heartbeat process gone")]
    assert b.counters["master_process_gone"] == 1


def test_process_gone_of_a_non_master_or_seen_as_master_is_ignored() -> None:
    """The link closing for a peer that is not our live master changes nothing."""
    net = Net(0.1)
    a, b = _pair(net)
    a.peer_process_gone("app2")  # app1 is MASTER: its backup's process does not matter
    b.peer_process_gone("app3")  # not our master
    net.run(2)
    assert net.masters() == ["app1"]
    assert a.counters["master_process_gone"] == b.counters["master_process_gone"] == 0


def test_with_a_witness_process_gone_only_names_the_reason() -> None:
    """With a witness the backup still waits for the missed adverts (the witness would refuse
    an earlier vote), and the failover is reported as the master's process being gone."""
    net = Net(0.1)
    net.add_witness()
    a = net.add("app1", 200, witness=True)
    b = net.add("app2", 100, witness=True)
    a.start()
    b.start()
    net.nodes["witness"].start()
    net.run(2)
    assert net.masters() == ["app1"]
    reports: list[dict[str, Any]] = []
    b.on_failover = reports.append
    net.dead.add("app1")
    net.run(0.002, step=0.001)
    gone_at = net.clock.seconds()
    b.peer_process_gone("app1")
    net.run(1, step=0.001)
    took = [t for t, who, what in net.events if who == "app2" and what == "take"]
    assert took and took[0] - gone_at > 0.2
    assert b.counters.get("votes_refused", 0) == 0
    assert [r["reason"] for r in reports] == ["heartbeat process gone"]


def test_a_restarted_peer_gets_a_new_link_and_the_old_one_reports_nothing() -> None:
    """A peer that comes back with a new epoch may sit on a rebooted host that would never
    close our old connection: we close it ourselves (no "gone") and connect again."""
    a, ta, link_a, gone, _, _ = connected()
    link_a.peer_restarted("app1")
    assert ta.disconnecting
    assert link_a.counters["superseded"] == 1
    a.connectionLost(closed())
    assert gone == []


def test_engine_tells_the_link_when_a_peer_advertises_a_new_epoch() -> None:
    """The engine notices a peer's new epoch (a restart) and says so, once per change."""
    from clickpass import config as configmod
    from clickpass.heartbeat import wire
    from clickpass.heartbeat.engine import Engine
    from clickpass.heartbeat.wire import Kind, Message

    settings = configmod.parse(
        {
            "node": {"name": "app2"},
            "cluster": {
                "enabled": True,
                "secret_file": "cluster.key",
                "bind": "127.0.0.1",
                "group": [
                    {
                        "name": "app",
                        "vip": "10.77.0.100/24",
                        "interface": "eth0",
                        "peers": ["127.0.0.2"],
                    }
                ],
            },
        }
    )
    secret = b"s" * 32
    engine = Engine(Clock(), "app2", settings.cluster, secret, epoch=1)
    restarted: list[str] = []
    engine.on_peer_restart = restarted.append
    key = wire.derive_key(secret)

    def advert(epoch: int, seq: int) -> bytes:
        message = Message(Kind.ADVERT, "app", "app1", State.BACKUP, 150, 100, epoch, seq)
        return wire.encode(message, key)

    for epoch, seq in ((5, 1), (5, 2), (6, 1), (6, 2)):
        engine.packet(advert(epoch, seq), ("127.0.0.2", 5405))
    assert restarted == ["app1"]
    assert engine.epochs == {"app1": 6}

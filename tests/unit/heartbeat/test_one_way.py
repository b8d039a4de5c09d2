"""
One-way loss on the simulated network: a node that hears its peers but is
not heard (its sends vanish, or its kernel refuses them), and a node that is
heard but hears nobody. In every case one node holds the VIP within the
failover time and the group does not flap afterwards; a node that is not
heard never keeps or takes the VIP.
"""

from __future__ import annotations

import pytest

from clickpass.heartbeat.group import Group, skew
from clickpass.heartbeat.wire import Kind, Message, State

from .sim import Net

INTERVAL = 0.1
# The backup's takeover (3 adverts + skew, then the witness's vote), with a
# few milliseconds of slack for the VIP's own delay.
FAILOVER = 3 * INTERVAL + skew(100, INTERVAL) + 0.02


def trio(net: Net) -> tuple[Group, Group]:
    """db1 (200) MASTER and db2 (100) BACKUP with a witness, settled."""
    net.add_witness().start()
    a = net.add("db1", 200, witness=True)
    b = net.add("db2", 100, witness=True)
    a.start()
    b.start()
    net.run(2)
    assert net.masters() == ["db1"] and net.holders() == ["db1"]
    return a, b


def watch(net: Net, seconds: float, step: float = 0.001) -> list[tuple[float, list[str]]]:
    """Run for C{seconds}, noting (time, VIP holders) at every change."""
    seen: list[tuple[float, list[str]]] = []
    for _ in range(round(seconds / step)):
        net.clock.advance(step)
        holders = net.holders()
        if not seen or seen[-1][1] != holders:
            seen.append((net.clock.seconds(), holders))
    return seen


def single_holder_after(seen: list[tuple[float, list[str]]], start: float) -> float:
    """Seconds from C{start} until the VIP had exactly one holder for good."""
    assert seen and len(seen[-1][1]) == 1, seen
    return seen[-1][0] - start if seen[-1][0] > start else 0.0


@pytest.mark.parametrize("refused", [False, True], ids=["lost", "refused"])
def test_master_not_heard_steps_down_and_backup_takes_over(refused: bool) -> None:
    """db1, the master, still hears db2 and the witness but nothing it sends reaches them
    (dropped on the way, or refused by its own kernel like a blackhole route): db2 takes
    over with the witness's vote and db1 steps down, so exactly one MASTER (db2) holds the
    VIP within the failover time, and nothing moves in the next 10 s."""
    net = Net(INTERVAL)
    a, b = trio(net)
    fault_at = net.clock.seconds()
    net.lose("db1", ("db2", "witness"), refused=refused)
    seen = watch(net, 2.0)
    assert net.masters() == ["db2"] and net.holders() == ["db2"], seen
    assert single_holder_after(seen, fault_at) <= FAILOVER, seen
    # db2 alone after the change: at most a few milliseconds with both.
    both = [t for t, holders in seen if len(holders) == 2]
    for t in both:
        after = [u for u, holders in seen if u > t]
        assert after and after[0] - t <= 0.01, seen
    assert a.counters["yielded_unheard"] + a.counters["adverts_unsent"] >= 1
    takeovers = (a.counters["takeovers"], b.counters["takeovers"])
    events = len(net.events)
    net.run(10)
    assert net.masters() == ["db2"] and net.holders() == ["db2"]
    assert (a.counters["takeovers"], b.counters["takeovers"]) == takeovers
    assert len(net.events) == events  # no VIP moves: no flapping
    assert a.state == State.BACKUP


def test_master_that_hears_nobody_steps_down_and_backup_takes_over() -> None:
    """The other direction: db2 and the witness hear db1, but db1 hears neither (their
    sends to it are lost). db1 loses quorum and resigns, db2 takes over with the witness's
    vote; one holder within the failover time plus db1's quorum limit, and no flapping."""
    net = Net(INTERVAL)
    a, _ = trio(net)
    fault_at = net.clock.seconds()
    net.lose("db2", ("db1",))
    net.lose("witness", ("db1",))
    seen = watch(net, 2.0)
    assert net.masters() == ["db2"] and net.holders() == ["db2"], seen
    # db1 leaves once nobody was heard for 4 intervals; db2 follows its resign at once.
    assert single_holder_after(seen, fault_at) <= 4 * INTERVAL + FAILOVER, seen
    assert all(len(holders) <= 1 for _, holders in seen), seen  # never two holders
    assert a.counters["lost_quorum"] == 1
    events = len(net.events)
    net.run(10)
    assert net.masters() == ["db2"] and len(net.events) == events
    assert a.state in (State.BACKUP, State.CANDIDATE)
    # db1 keeps asking for the witness's vote; its adverts say it does not hear the
    # witness, so it is refused (a grant would only hold db2 back).
    assert net.nodes["witness"].counters["refused_deaf"] >= 5


def test_witness_refuses_a_node_that_does_not_hear_it() -> None:
    """The witness grants a vote to a node whose adverts list the witness, or say nothing
    (older nodes), and refuses one whose adverts say it does not hear the witness."""
    net = Net(INTERVAL)
    witness = net.add_witness()
    answers: list[tuple[str, bool]] = []
    witness.outbox.vote_answer = lambda group, address, granted: answers.append((address, granted))
    for seq, (node, hears) in enumerate(
        [("db1", ("db2",)), ("db2", ("witness",)), ("db3", None)], start=1
    ):
        witness.receive(
            Message(Kind.ADVERT, "app", node, State.BACKUP, 100, 100, 1, seq, hears=hears), node
        )
        witness.grant = None
        witness.receive(
            Message(Kind.VOTE_REQUEST, "app", node, State.CANDIDATE, 0, 100, 1, seq + 10), node
        )
    assert answers == [("db1", False), ("db2", True), ("db3", True)]
    assert witness.counters["refused_deaf"] == 1


def test_backup_that_is_not_heard_stays_backup() -> None:
    """One-way loss on the backup's side: db2's sends vanish. db1 stays the only MASTER
    (db2 hears it), and db2 never takes the VIP."""
    net = Net(INTERVAL)
    a, b = trio(net)
    net.lose("db2", ("db1", "witness"))
    net.run(5)
    assert net.masters() == ["db1"] and net.holders() == ["db1"]
    assert b.counters["takeovers"] == 0 and a.counters["lost_quorum"] == 0


def test_heals_without_a_second_holder_and_preempts_only_once_heard() -> None:
    """After db1 (preempting, the higher priority) stepped down for not being heard, it does
    not take the VIP back while db2 still does not hear it; once the loss ends it preempts
    back with no moment of two holders."""
    net = Net(INTERVAL)
    a, _ = trio(net)
    net.lose("db1", ("db2", "witness"))
    net.run(3)
    assert net.masters() == ["db2"]
    assert a.settings.preempt
    net.heal()
    seen = watch(net, 2.0)
    assert net.masters() == ["db1"] and net.holders() == ["db1"], seen


def test_without_witness_the_master_that_is_not_heard_yields() -> None:
    """With no witness, db1's sends vanish: db2 takes over after its down timer, and db1,
    which hears db2's adverts say that it does not hear db1, yields after the quorum
    limit; one holder from then on, no flapping."""
    net = Net(INTERVAL)
    a = net.add("db1", 200)
    b = net.add("db2", 100)
    a.start()
    b.start()
    net.run(2)
    fault_at = net.clock.seconds()
    net.lose("db1", ("db2",))
    seen = watch(net, 2.0)
    assert net.masters() == ["db2"] and net.holders() == ["db2"], seen
    assert single_holder_after(seen, fault_at) <= FAILOVER + 4 * INTERVAL + 0.11, seen
    assert a.counters["yielded_unheard"] == 1
    events = len(net.events)
    net.run(10)
    assert net.masters() == ["db2"] and len(net.events) == events
    assert b.counters["takeovers"] == 1


def test_split_brain_heal_still_goes_to_the_higher_priority() -> None:
    """A symmetric partition without a witness makes two masters; when it heals, the first
    advert each hears may not list it yet, but the higher priority still wins (no yield)."""
    net = Net(INTERVAL)
    a = net.add("db1", 200)
    b = net.add("db2", 100)
    a.start()
    b.start()
    net.run(2)
    net.partition("db1", "db2")
    net.run(2)
    assert net.masters() == ["db1", "db2"]
    net.heal()
    net.run(2)
    assert net.masters() == ["db1"]
    assert a.counters["yielded_unheard"] == 0


class CapturingPort:
    """A UDP port that keeps what is written to it."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.written.append((data, address))


def test_engine_sends_hears_only_to_nodes_that_read_it() -> None:
    """Adverts carry the hears list, except to an address whose own last advert had none
    (a node from before the field would drop ours as malformed): so during a rolling
    upgrade old and new nodes still hear each other. An advert with the list switches back."""
    from clickpass import config as configmod
    from clickpass.heartbeat import wire
    from clickpass.heartbeat.engine import Engine
    from clickpass.heartbeat.wire import Health

    settings = configmod.parse(
        {
            "node": {"name": "app2"},
            "cluster": {
                "enabled": True,
                "secret_file": "cluster.key",
                "bind": "127.0.0.1",
                "witness": "127.0.0.3",
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
    key = wire.derive_key(secret)
    engine = Engine(Net().clock, "app2", settings.cluster, secret, epoch=1)
    port = CapturingPort()
    engine.port = port  # type: ignore[assignment]  # only write() is used here

    def sent() -> dict[str, tuple[str, ...] | None]:
        decoded = {a[0]: wire.decode(d, key).hears for d, a in port.written}
        port.written.clear()
        return decoded

    def advert_from(address: str, seq: int, hears: tuple[str, ...] | None) -> None:
        message = Message(Kind.ADVERT, "app", "app1", State.BACKUP, 150, 100, 1, seq, hears=hears)
        engine.packet(wire.encode(message, key), (address, 5405))

    assert engine.advert("app", State.MASTER, 100, Health.OK, 0, ("app1",))
    assert sent() == {"127.0.0.2": ("app1",), "127.0.0.3": ("app1",)}
    advert_from("127.0.0.2", 1, None)  # an older peer
    engine.advert("app", State.MASTER, 100, Health.OK, 0, ("app1",))
    assert sent() == {"127.0.0.2": None, "127.0.0.3": ("app1",)}
    advert_from("127.0.0.2", 2, ("app2",))  # upgraded
    engine.advert("app", State.MASTER, 100, Health.OK, 0, ("app1",))
    assert sent() == {"127.0.0.2": ("app1",), "127.0.0.3": ("app1",)}


def test_ctl_cluster_shows_whether_each_peer_hears_us() -> None:
    """clickpass-ctl cluster has a "hears us" column from the peers' own adverts: yes, no
    (one-way loss), or - for a peer whose adverts do not say."""
    from clickpass.heartbeat.ctl import format_status

    net = Net(INTERVAL)
    a = net.add("app1", 200)
    b = net.add("app2", 100)
    a.start()
    b.start()
    net.run(1)
    net.lose("app1", ("app2",))
    net.run(0.3)  # app2 stops listing app1 after 2.5 intervals
    group = a.status()
    group["peers"].append({**group["peers"][0], "node": "old", "hears": None})
    status = {"node": "app1", "role": "member", "epoch": 1, "groups": [group]}
    table = format_status(status)
    assert "hears us" in table
    rows = {
        line.split()[1]: line.split()[-1]
        for line in table.splitlines()
        if line.startswith("app ") and "ago" in line
    }
    assert rows == {"app2": "no", "old": "-"}
    net.heal()
    net.run(0.3)
    table = format_status({**status, "groups": [a.status()]})
    assert [line.split()[-1] for line in table.splitlines() if "app2" in line] == ["yes"]

"""Tests for the heartbeat wire format: encoding, authentication, replay protection."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clickpass.heartbeat import wire
from clickpass.heartbeat.wire import Health, Kind, Message, Receiver, State

KEY = wire.derive_key(b"s" * 32)


def advert(node: str = "app2", epoch: int = 7, seq: int = 1, **kw: object) -> Message:
    fields: dict[str, object] = dict(
        kind=Kind.ADVERT,
        group="app",
        node=node,
        state=State.MASTER,
        priority=150,
        interval_ms=100,
        epoch=epoch,
        seq=seq,
        health=Health.DEGRADED,
        failing=2,
    )
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    """A message encoded and decoded under the same key comes back unchanged."""
    message = advert()
    assert wire.decode(wire.encode(message, KEY), KEY) == message


def test_size_is_bounded() -> None:
    """The largest legal message fits the declared maximum and long names are refused."""
    name = "n" * wire.MAX_NAME
    big = advert(node=name, group="g" * wire.MAX_NAME, hears=(name,) * wire.MAX_HEARS)
    assert len(wire.encode(big, KEY)) == wire.MAX_SIZE
    with pytest.raises(ValueError):
        wire.encode(advert(node="n" * (wire.MAX_NAME + 1)), KEY)
    with pytest.raises(ValueError):
        wire.encode(advert(hears=("db1",) * (wire.MAX_HEARS + 1)), KEY)
    with pytest.raises(ValueError):
        wire.encode(advert(hears=("",)), KEY)


def test_hears_round_trips_and_old_messages_say_nothing() -> None:
    """The list of nodes the sender hears comes back as sent (empty included); a message
    without it (the format before the field, which is still accepted) decodes as None."""
    for hears in (("db1", "db2"), (), ("wïtness",), None):
        message = advert(hears=hears)
        assert wire.decode(wire.encode(message, KEY), KEY).hears == hears
    # The format before the field is byte for byte what encode writes without it.
    old = wire.encode(advert(), KEY)
    assert len(old) == wire.MIN_SIZE - 2 + len("app") + len("app2")
    assert wire.decode(old, KEY).hears is None


def _signed(body: bytes) -> bytes:
    import hashlib
    import hmac

    return body + hmac.new(KEY, body, hashlib.sha256).digest()


def test_malformed_hears_lists_are_counted_never_raised() -> None:
    """Correctly signed packets whose hears list is cut short, too long, holds an empty or
    oversized or non-UTF-8 name, or has bytes after it, are counted as malformed."""
    base = wire.encode(advert(hears=None), KEY)[: -wire.MAC_SIZE]
    bodies = [
        base + b"\x01",  # one name announced, none there
        base + b"\x02\x03db1",  # two announced, one there
        base + b"\x01\x05db1",  # name shorter than its length
        base + b"\x01\x00",  # empty name
        base + bytes([wire.MAX_HEARS + 1]) + b"\x03db1" * (wire.MAX_HEARS + 1),
        base + b"\x01\x02\xff\xfe",  # not UTF-8
        base + b"\x01\x03db1" + b"x",  # trailing byte
        base + b"\x00\x00",  # empty list, then a stray byte
        base + b"\x01\x41" + b"n" * 0x41,  # a name over MAX_NAME
    ]
    receiver = Receiver(KEY, "app1")
    for seq, body in enumerate(bodies):
        packet = _signed(body)
        with pytest.raises(wire.WireError, match=r"malformed|oversized"):
            wire.decode(packet, KEY)
        assert receiver.accept(packet) is None, seq
    counted = receiver.counters["malformed"] + receiver.counters["oversized"]
    assert counted == len(bodies)
    assert receiver.counters["accepted"] == 0


def test_wrong_key_is_rejected() -> None:
    """A packet signed under another secret is counted as bad_mac and dropped."""
    receiver = Receiver(KEY, "app1")
    other = wire.derive_key(b"t" * 32)
    assert receiver.accept(wire.encode(advert(), other)) is None
    assert receiver.counters["bad_mac"] == 1
    assert receiver.counters["accepted"] == 0


def test_every_flipped_bit_is_rejected() -> None:
    """Changing any single bit of a packet makes it fail authentication or parsing."""
    packet = wire.encode(advert(), KEY)
    for i in range(len(packet) * 8):
        damaged = bytearray(packet)
        damaged[i // 8] ^= 1 << (i % 8)
        with pytest.raises(wire.WireError):
            wire.decode(bytes(damaged), KEY)


def test_oversized_and_truncated_are_counted() -> None:
    """Oversized and truncated packets are dropped under their own counters."""
    receiver = Receiver(KEY, "app1")
    packet = wire.encode(advert(), KEY)
    assert receiver.accept(packet + b"x" * wire.MAX_SIZE) is None
    assert receiver.accept(packet[:10]) is None
    assert receiver.counters["oversized"] == 1
    assert receiver.counters["malformed"] == 1


def test_replayed_and_stale_sequence_numbers_are_dropped() -> None:
    """Only a strictly higher (epoch, seq) from a sender is accepted."""
    receiver = Receiver(KEY, "app1")
    first = wire.encode(advert(seq=5), KEY)
    assert receiver.accept(first) is not None
    assert receiver.accept(first) is None  # the same packet again
    assert receiver.accept(wire.encode(advert(seq=4), KEY)) is None  # older
    assert receiver.accept(wire.encode(advert(seq=6), KEY)) is not None
    # A restart (higher epoch) starts the sequence again.
    assert receiver.accept(wire.encode(advert(epoch=8, seq=1), KEY)) is not None
    assert receiver.accept(wire.encode(advert(epoch=7, seq=99), KEY)) is None
    assert receiver.counters["replayed"] == 3
    assert receiver.counters["accepted"] == 3


def test_replay_state_is_per_sender() -> None:
    """One sender's sequence does not affect another's."""
    receiver = Receiver(KEY, "app1")
    assert receiver.accept(wire.encode(advert(node="app2", seq=9), KEY)) is not None
    assert receiver.accept(wire.encode(advert(node="witness", seq=1), KEY)) is not None


def test_own_messages_are_ignored() -> None:
    """A node's own message reflected back is not treated as a peer's."""
    receiver = Receiver(KEY, "app1")
    assert receiver.accept(wire.encode(advert(node="app1"), KEY)) is None
    assert receiver.counters["own"] == 1


def test_random_bytes_never_raise() -> None:
    """Random packets of any length are dropped and counted, never raised."""
    rng = random.Random(4)
    receiver = Receiver(KEY, "app1")
    packet = wire.encode(advert(hears=("db1", "witness")), KEY)
    for _ in range(3000):
        n = rng.randrange(0, 400)
        data = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.3:
            data = packet[: rng.randrange(len(packet))] + data  # plausible prefixes
        assert receiver.accept(data) is None
    assert receiver.counters["accepted"] == 0
    assert receiver.counters["received"] == 3000


def test_malformed_but_authenticated_fields_are_rejected() -> None:
    """A correctly signed packet with an unknown kind or bad lengths is malformed."""
    import hashlib
    import hmac

    body = bytearray(wire.encode(advert(), KEY)[: -wire.MAC_SIZE])
    body[5] = 99  # kind
    signed = bytes(body) + hmac.new(KEY, bytes(body), hashlib.sha256).digest()
    with pytest.raises(wire.WireError, match="malformed"):
        wire.decode(signed, KEY)
    body = bytearray(wire.encode(advert(), KEY)[: -wire.MAC_SIZE]) + b"extra"
    signed = bytes(body) + hmac.new(KEY, bytes(body), hashlib.sha256).digest()
    with pytest.raises(wire.WireError, match="malformed"):
        wire.decode(signed, KEY)


def test_epoch_grows_across_restarts_and_survives_loss(tmp_path: Path) -> None:
    """The epoch file makes each start's epoch larger; the clock floors a lost file."""
    path = tmp_path / "cluster.epoch"
    first = wire.next_epoch(path, now=1000)
    second = wire.next_epoch(path, now=1000)
    assert (first, second) == (1000, 1001)
    path.unlink()
    assert wire.next_epoch(path, now=5000) == 5000
    path.write_text("garbage")
    assert wire.next_epoch(path, now=6000) == 6000


def test_sequencer_only_grows() -> None:
    """The sequencer hands out strictly increasing pairs within its epoch."""
    seq = wire.Sequencer(3)
    pairs = [seq.next() for _ in range(5)]
    assert pairs == sorted(set(pairs)) and pairs[0] == (3, 1)

"""
The heartbeat wire format: small, versioned, authenticated UDP messages.

Layout (network byte order), then a 32-byte HMAC-SHA256 over all of it::

    magic "CPHB" | version u8 | kind u8 | state u8 | priority u8
    interval_ms u16 | health u8 | failing u8 | epoch u32 | seq u64
    group_len u8 | group | node_len u8 | node
    [hears_count u8 | (name_len u8 | name) x hears_count]

The last part is optional: the nodes the sender hears (adverts it received
lately), so that a node learns whether it is heard. A message without it
(from a node that predates it) decodes with C{hears=None}, "not said",
which receivers must treat as "hears you"; the version stays 1. A node
that predates the field drops a message that carries it (malformed): the
engine sends such a node its adverts without it.

C{epoch} grows on every start of a node (persisted under its data
directory, floored by the wall clock) and C{seq} grows with every message a
node sends, so C{(epoch, seq)} only ever grows per sender; a receiver keeps
the highest pair seen from each sender and drops anything not above it.

This module must never raise on bad input from the network: L{Receiver}
turns every malformed, oversized, unauthenticated or replayed packet into a
counted drop. It does no I/O except reading and writing the epoch file.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"CPHB"
VERSION = 1
MAC_SIZE = 32
MAX_NAME = 64
# Names in the hears list at most: a group has a few peers, the witness
# hears the members of one group.
MAX_HEARS = 8
_HEADER = struct.Struct("!4sBBBBHBBIQ")
MIN_SIZE = _HEADER.size + 2 + 2 + MAC_SIZE
MAX_SIZE = _HEADER.size + 2 + 2 * MAX_NAME + 1 + MAX_HEARS * (1 + MAX_NAME) + MAC_SIZE
# What a receiver reads at most; anything longer is oversized.
RECEIVE_LIMIT = 2048
_KEY_LABEL = b"clickpass heartbeat v1"


class Kind(enum.IntEnum):
    ADVERT = 1
    VOTE_REQUEST = 2
    VOTE_GRANT = 3
    VOTE_DENY = 4


class State(enum.IntEnum):
    INIT = 0
    BACKUP = 1
    MASTER = 2
    FAULT = 3
    WITNESS = 4
    CANDIDATE = 5
    HANDOVER = 6


class Health(enum.IntEnum):
    OK = 0
    DEGRADED = 1
    FAULT = 2


class WireError(Exception):
    """A packet cannot be used; the message is a short counter name."""


@dataclass(frozen=True)
class Message:
    """One heartbeat message, decoded and authenticated."""

    kind: Kind
    group: str
    node: str
    state: State
    priority: int
    interval_ms: int
    epoch: int
    seq: int
    health: Health = Health.OK
    failing: int = 0
    # The nodes the sender hears; None when the message does not say.
    hears: tuple[str, ...] | None = None

    @property
    def interval(self) -> float:
        return self.interval_ms / 1000.0


def derive_key(secret: bytes) -> bytes:
    """The HMAC key for heartbeats, separated from other uses of the secret."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def _name(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if not 1 <= len(raw) <= MAX_NAME:
        raise ValueError(f"{what} {value!r} must be 1 to {MAX_NAME} bytes")
    return raw


def encode(message: Message, key: bytes) -> bytes:
    """Serialise and sign C{message}. Raises ValueError for a field out of range."""
    if not 0 <= message.priority <= 255:
        raise ValueError("priority out of range")
    if not 1 <= message.interval_ms <= 65535:
        raise ValueError("interval out of range")
    body = _HEADER.pack(
        MAGIC,
        VERSION,
        int(message.kind),
        int(message.state),
        message.priority,
        message.interval_ms,
        int(message.health),
        min(message.failing, 255),
        message.epoch,
        message.seq,
    )
    group = _name(message.group, "group")
    node = _name(message.node, "node")
    body += bytes([len(group)]) + group + bytes([len(node)]) + node
    if message.hears is not None:
        if len(message.hears) > MAX_HEARS:
            raise ValueError(f"hears lists at most {MAX_HEARS} nodes")
        body += bytes([len(message.hears)])
        for name in message.hears:
            raw = _name(name, "heard node")
            body += bytes([len(raw)]) + raw
    return body + hmac.new(key, body, hashlib.sha256).digest()


def _read_name(body: bytes, offset: int, into: list[str]) -> int:
    """Read one length-prefixed name at C{offset} into C{into}; the offset after it."""
    if offset >= len(body):
        raise WireError("malformed")
    length = body[offset]
    offset += 1
    raw = body[offset : offset + length]
    if not 1 <= length <= MAX_NAME or len(raw) != length:
        raise WireError("malformed")
    try:
        into.append(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise WireError("malformed") from None
    return offset + length


def decode(data: bytes, key: bytes) -> Message:
    """Parse and authenticate one packet, or raise L{WireError}."""
    if len(data) > MAX_SIZE:
        raise WireError("oversized")
    if len(data) < MIN_SIZE:
        raise WireError("malformed")
    if data[:4] != MAGIC:
        raise WireError("malformed")
    body, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
    # Authenticate before believing any field (version included).
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac):
        raise WireError("bad_mac")
    (_, version, kind, state, priority, interval_ms, health, failing, epoch, seq) = (
        _HEADER.unpack_from(body)
    )
    if version != VERSION:
        raise WireError("bad_version")
    offset = _HEADER.size
    names: list[str] = []
    for _ in range(2):
        offset = _read_name(body, offset, names)
    hears: tuple[str, ...] | None = None
    if offset < len(body):
        count = body[offset]
        offset += 1
        if count > MAX_HEARS:
            raise WireError("malformed")
        heard: list[str] = []
        for _ in range(count):
            offset = _read_name(body, offset, heard)
        hears = tuple(heard)
    if offset != len(body):
        raise WireError("malformed")
    try:
        return Message(
            kind=Kind(kind),
            group=names[0],
            node=names[1],
            state=State(state),
            priority=priority,
            interval_ms=interval_ms,
            epoch=epoch,
            seq=seq,
            health=Health(health),
            failing=failing,
            hears=hears,
        )
    except ValueError:
        raise WireError("malformed") from None


class Receiver:
    """
    Turns packets into messages: authenticates, drops replays and counts
    everything. L{accept} never raises.
    """

    def __init__(self, key: bytes, own_node: str) -> None:
        self._key = key
        self._own = own_node
        self._highest: dict[str, tuple[int, int]] = {}
        self.counters: Counter[str] = Counter()

    def accept(self, data: bytes) -> Message | None:
        self.counters["received"] += 1
        try:
            message = decode(data, self._key)
        except WireError as e:
            self.counters[str(e)] += 1
            return None
        except Exception:  # pragma: no cover - decode is meant to raise only WireError
            self.counters["malformed"] += 1
            return None
        if message.node == self._own:
            self.counters["own"] += 1
            return None
        stamp = (message.epoch, message.seq)
        if stamp <= self._highest.get(message.node, (-1, -1)):
            self.counters["replayed"] += 1
            return None
        self._highest[message.node] = stamp
        self.counters["accepted"] += 1
        return message

    def highest(self, node: str) -> tuple[int, int] | None:
        return self._highest.get(node)


class Sequencer:
    """This node's (epoch, seq) source: seq grows with every message sent."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._seq = 0

    def next(self) -> tuple[int, int]:
        self._seq += 1
        return self.epoch, self._seq


def next_epoch(path: Path, now: float | None = None) -> int:
    """
    Read, increment and persist the epoch in C{path} (written atomically and
    synced). The wall clock is a floor, so a lost file does not reuse old
    epochs. Raises OSError when the file cannot be written.
    """
    stored = 0
    try:
        stored = int(path.read_text().strip() or "0")
    except FileNotFoundError:
        pass
    except ValueError:
        stored = 0
    wall = int(time.time() if now is None else now)
    epoch = max(stored + 1, wall) & 0xFFFFFFFF
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{epoch}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return epoch


__all__ = [
    "MAX_SIZE",
    "RECEIVE_LIMIT",
    "Health",
    "Kind",
    "Message",
    "Receiver",
    "Sequencer",
    "State",
    "WireError",
    "decode",
    "derive_key",
    "encode",
    "next_epoch",
]

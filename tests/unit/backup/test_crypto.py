"""The chunked AEAD format: round trips, and every kind of damage refused."""

from __future__ import annotations

import io
import os
import struct

import pytest

from clickpass.backup import crypto
from clickpass.backup.crypto import BackupCorrupt, BackupKeyError

KEY = bytes(range(32))
CHUNK = 64


def encrypt(data: bytes, name: str = "n/b/db", pieces: int = 7) -> bytes:
    out = io.BytesIO()
    parts = [data[i : i + pieces] for i in range(0, len(data), pieces)] or [b""]
    crypto.encrypt_stream(KEY, name, iter(parts), out, chunk_size=CHUNK)
    return out.getvalue()


def decrypt(blob: bytes, name: str = "n/b/db", key: bytes = KEY) -> bytes:
    return b"".join(crypto.decrypt_stream(key, name, io.BytesIO(blob)))


def chunk_offsets(blob: bytes) -> list[int]:
    """Offsets where each sealed chunk's length word starts."""
    offsets = []
    at = struct.calcsize(">8sB16sI")
    while at < len(blob):
        offsets.append(at)
        (word,) = struct.unpack(">I", blob[at : at + 4])
        at += 4 + (word & 0x7FFFFFFF)
    return offsets


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 17])
def test_round_trip(size: int) -> None:
    """Any length, including empty and exact multiples of the chunk size, comes back intact."""
    data = os.urandom(size)
    assert decrypt(encrypt(data)) == data


def test_ciphertext_hides_plaintext_and_differs_each_time() -> None:
    """A fresh salt per object: the same data never encrypts the same way."""
    data = b"secret row " * 40
    one, two = encrypt(data), encrypt(data)
    assert one != two
    assert b"secret row" not in one


def test_every_flipped_byte_is_refused() -> None:
    """Flipping any single byte anywhere (header, length words, chunks) is detected."""
    blob = encrypt(os.urandom(2 * CHUNK + 5))
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x01
        with pytest.raises(BackupCorrupt):
            decrypt(bytes(damaged))


def test_truncation_anywhere_is_refused() -> None:
    """Cutting the object short at any byte, chunk boundaries included, is detected."""
    blob = encrypt(os.urandom(3 * CHUNK))
    for cut in range(len(blob)):
        with pytest.raises(BackupCorrupt):
            decrypt(blob[:cut])


def test_dropped_or_reordered_chunks_are_refused() -> None:
    """Chunks carry their position: a missing middle chunk or a swap fails."""
    blob = encrypt(os.urandom(3 * CHUNK + 1))
    offsets = [*chunk_offsets(blob), len(blob)]
    header = blob[: offsets[0]]
    chunks = [blob[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    assert len(chunks) == 4
    with pytest.raises(BackupCorrupt):
        decrypt(header + chunks[0] + chunks[2] + chunks[3])
    with pytest.raises(BackupCorrupt):
        decrypt(header + chunks[1] + chunks[0] + chunks[2] + chunks[3])


def test_appended_data_is_refused() -> None:
    """Bytes after the final chunk mean the object is not what was written."""
    with pytest.raises(BackupCorrupt, match="after the final chunk"):
        decrypt(encrypt(b"abc") + b"x")


def test_object_bound_to_its_name_and_key() -> None:
    """An object renamed (swapped with another) or read with another key is refused."""
    blob = encrypt(b"config")
    with pytest.raises(BackupCorrupt):
        decrypt(blob, name="n/b/other")
    with pytest.raises(BackupCorrupt, match="another key"):
        decrypt(blob, key=bytes(32))


def test_not_a_backup_object() -> None:
    """Foreign files get one clear line."""
    with pytest.raises(BackupCorrupt, match="not a Clickpass backup object"):
        decrypt(b"PK\x03\x04" + bytes(40))
    with pytest.raises(BackupCorrupt, match="too short"):
        decrypt(b"CPB")


def test_load_key(tmp_path) -> None:
    """The key file holds 64 hex digits; anything else is one clear error naming the file."""
    good = tmp_path / "k"
    good.write_text("ab" * 32 + "\n")
    assert crypto.load_key(good) == bytes([0xAB]) * 32
    short = tmp_path / "short"
    short.write_text("ab" * 16)
    with pytest.raises(BackupKeyError, match="16 bytes"):
        crypto.load_key(short)
    bad = tmp_path / "bad"
    bad.write_text("zz" * 32)
    with pytest.raises(BackupKeyError, match="hex digits"):
        crypto.load_key(bad)
    with pytest.raises(BackupKeyError, match="not found"):
        crypto.load_key(tmp_path / "missing")

"""
Authenticated, chunked encryption for backup files.

A stored object is a header and a sequence of chunks, each sealed with
AES-256-GCM under a key derived (HKDF-SHA256) from the backup key and a
random per-object salt. Every chunk's nonce carries its position and a
"last chunk" flag, and every chunk is bound (as associated data) to the
header and to the object's name inside its backup, so a flipped bit, a
reordered, dropped or swapped chunk, an object swapped with another one,
and a file cut short anywhere (even on a chunk boundary) all fail to
decrypt. Files of any size stream through in constant memory.

Layout::

    magic "CPBACKUP" | version 1 (1 byte) | salt (16) | chunk size (4, big-endian)
    then per chunk: flags and length (4, big-endian: top bit set on the last
    chunk, the rest the sealed chunk's length) | sealed chunk

The flag in the length word is not secret: the nonce carries it too, so a
flipped flag makes the chunk fail authentication.

This module must never write plaintext anywhere its caller did not ask
for, and never return plaintext from a chunk that did not authenticate.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"CPBACKUP"
VERSION = 1
SALT_BYTES = 16
KEY_BYTES = 32
TAG_BYTES = 16
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 16 << 20
_HEADER = struct.Struct(">8sB16sI")
_LENGTH = struct.Struct(">I")
_LAST_FLAG = 0x80000000


class BackupCorrupt(Exception):
    """A stored backup object is damaged, truncated or not ours; the message says which."""


class BackupUnauthentic(BackupCorrupt):
    """
    A chunk failed authentication: the object is damaged or was encrypted
    with another key, which this module cannot tell apart; C{where} names the
    place without guessing which (a caller that checked the key id knows).
    """

    def __init__(self, where: str) -> None:
        super().__init__(f"{where} (damaged, or encrypted with another key)")
        self.where = where


class BackupKeyError(Exception):
    """The backup key file cannot be used; the message names the file."""


def load_key(path: Path) -> bytes:
    """Read a backup key: 64 hex digits (32 bytes) on the first line of C{path}."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BackupKeyError(f"backup key file {path} not found") from None
    except PermissionError:
        raise BackupKeyError(f"backup key file {path} not readable (permission denied)") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise BackupKeyError(f"backup key file {path} is not a text file") from None
    line = text.splitlines()[0].strip() if text else ""
    try:
        key = bytes.fromhex(line)
    except ValueError:
        raise BackupKeyError(f"backup key file {path} must hold 64 hex digits") from None
    if len(key) != KEY_BYTES:
        raise BackupKeyError(
            f"backup key file {path} holds {len(key)} bytes; it must hold 64 hex digits (32 bytes)"
        )
    return key


def key_id(key: bytes) -> str:
    """
    A public fingerprint of a backup key (16 hex digits, HKDF-SHA256 with
    its own label, so it reveals nothing of the key and of the file keys).
    Stored next to each backup, it tells "wrong key" apart from "damaged".
    """
    return (
        HKDF(algorithm=hashes.SHA256(), length=8, salt=None, info=b"clickpass backup key id v1")
        .derive(key)
        .hex()
    )


def _derive(key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=b"clickpass backup v1"
    ).derive(key)
    return AESGCM(derived)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def encrypt_stream(
    key: bytes,
    name: str,
    chunks: Iterator[bytes],
    out: BinaryIO,
    chunk_size: int = DEFAULT_CHUNK,
) -> None:
    """
    Encrypt the bytes yielded by C{chunks} (any sizes) into C{out}, bound to
    C{name} (the object's name within its backup).
    """
    salt = os.urandom(SALT_BYTES)
    header = _HEADER.pack(MAGIC, VERSION, salt, chunk_size)
    aead = _derive(key, salt)
    aad = header + name.encode("utf-8")
    out.write(header)
    index = 0
    pending = bytearray()
    held: bytes | None = None

    def seal(piece: bytes, last: bool) -> None:
        nonlocal index
        sealed = aead.encrypt(_nonce(index, last), piece, aad)
        out.write(_LENGTH.pack(len(sealed) | (_LAST_FLAG if last else 0)))
        out.write(sealed)
        index += 1

    for data in chunks:
        pending += data
        while len(pending) >= chunk_size:
            # Hold one full chunk back: only at the end do we know which is last.
            if held is not None:
                seal(held, last=False)
            held = bytes(pending[:chunk_size])
            del pending[:chunk_size]
    if held is not None:
        if pending:
            seal(held, last=False)
            seal(bytes(pending), last=True)
        else:
            seal(held, last=True)
    else:
        seal(bytes(pending), last=True)


def decrypt_stream(key: bytes, name: str, source: BinaryIO) -> Iterator[bytes]:
    """
    Yield the plaintext of an object written by L{encrypt_stream}, one
    authenticated chunk at a time. Raise L{BackupCorrupt} at the first
    chunk that does not authenticate, when chunks are missing at the end,
    or when bytes follow the last chunk.
    """
    header = source.read(_HEADER.size)
    if len(header) != _HEADER.size:
        raise BackupCorrupt(f"{name}: too short to be a Clickpass backup object")
    magic, version, salt, chunk_size = _HEADER.unpack(header)
    if magic != MAGIC:
        raise BackupCorrupt(f"{name}: not a Clickpass backup object")
    if version != VERSION:
        raise BackupCorrupt(f"{name}: backup format version {version} is not supported")
    if not 0 < chunk_size <= MAX_CHUNK:
        raise BackupCorrupt(f"{name}: damaged header (chunk size {chunk_size})")
    aead = _derive(key, salt)
    aad = header + name.encode("utf-8")
    index = 0
    while True:
        length_bytes = source.read(_LENGTH.size)
        if not length_bytes:
            raise BackupCorrupt(f"{name}: truncated after chunk {index} (no final chunk)")
        if len(length_bytes) != _LENGTH.size:
            raise BackupCorrupt(f"{name}: truncated inside chunk {index}")
        (word,) = _LENGTH.unpack(length_bytes)
        last = bool(word & _LAST_FLAG)
        length = word & ~_LAST_FLAG
        if not TAG_BYTES <= length <= chunk_size + TAG_BYTES:
            raise BackupCorrupt(f"{name}: damaged at chunk {index} (bad length {length})")
        sealed = source.read(length)
        if len(sealed) != length:
            raise BackupCorrupt(f"{name}: truncated inside chunk {index}")
        try:
            plain = aead.decrypt(_nonce(index, last), sealed, aad)
        except InvalidTag:
            raise BackupUnauthentic(f"{name}: chunk {index} fails authentication") from None
        yield plain
        index += 1
        if last:
            if source.read(1):
                raise BackupCorrupt(f"{name}: unexpected data after the final chunk")
            return


def encrypt_bytes(key: bytes, name: str, data: bytes) -> bytes:
    """Encrypt a small object held in memory (the manifest)."""
    import io

    out = io.BytesIO()
    encrypt_stream(key, name, iter([data]), out)
    return out.getvalue()


def decrypt_bytes(key: bytes, name: str, data: bytes) -> bytes:
    """Decrypt a small object held in memory; L{BackupCorrupt} if it does not authenticate."""
    import io

    return b"".join(decrypt_stream(key, name, io.BytesIO(data)))


__all__ = [
    "BackupCorrupt",
    "BackupKeyError",
    "BackupUnauthentic",
    "decrypt_bytes",
    "decrypt_stream",
    "encrypt_bytes",
    "encrypt_stream",
    "key_id",
    "load_key",
]

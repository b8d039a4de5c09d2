"""
Sealing TOTP secrets and hashing recovery codes under keys derived
(HKDF-SHA256) from the cluster's master secret, so that a copy of the
database alone yields no person's second factor.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEAL_VERSION = b"\x01"
NONCE_BYTES = 12
# Recovery codes: ten groups of letters and digits nobody confuses
# (no 0/o, 1/l/i), two groups of five: about 49 bits each.
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
RECOVERY_CODES = 10


class SealError(Exception):
    """A sealed secret cannot be opened (another master secret, or damaged)."""


def _derive(master_secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master_secret)


class SecretBox:
    """
    Seals TOTP secrets with AES-256-GCM, each bound to its account (the
    associated data), so a row copied onto another account does not open;
    and keys the hashes of recovery codes.
    """

    def __init__(self, master_secret: bytes) -> None:
        self._aead = AESGCM(_derive(master_secret, b"clickpass mfa totp secrets"))
        self._code_key = _derive(master_secret, b"clickpass mfa recovery codes")

    @staticmethod
    def _bound_to(account_id: int) -> bytes:
        return b"clickpass totp secret\0" + str(account_id).encode("ascii")

    def seal(self, account_id: int, secret: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        body = self._aead.encrypt(nonce, secret.encode("ascii"), self._bound_to(account_id))
        return SEAL_VERSION + nonce + body

    def unseal(self, account_id: int, sealed: bytes) -> str:
        sealed = bytes(sealed)
        if sealed[:1] != SEAL_VERSION or len(sealed) < 1 + NONCE_BYTES + 16:
            raise SealError(f"the stored TOTP secret of account {account_id} is malformed")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, body, self._bound_to(account_id))
        except InvalidTag:
            raise SealError(
                f"the stored TOTP secret of account {account_id} does not open with this "
                "master secret"
            ) from None
        return plain.decode("ascii")

    def code_hash(self, code: str) -> str:
        """The stored form of a recovery code (keyed: a guess needs the master secret)."""
        return hmac.new(self._code_key, code.encode("ascii"), hashlib.sha256).hexdigest()


def new_recovery_codes() -> list[str]:
    """Ten fresh recovery codes, as shown to the person (C{abcde-fghjk})."""
    return [
        "-".join("".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(5)) for _ in range(2))
        for _ in range(RECOVERY_CODES)
    ]


def normalise_recovery_code(text: str) -> str | None:
    """A recovery code as typed (any case, spaces, with or without the dash), or L{None}."""
    letters = "".join(c for c in text.lower() if c not in " -\t")
    if len(letters) != 10 or any(c not in RECOVERY_ALPHABET for c in letters):
        return None
    return letters[:5] + "-" + letters[5:]

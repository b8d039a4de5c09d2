"""
A software WebAuthn authenticator and browser, for the server side's
tests: what a CTAP2 authenticator signs (authenticator data, a "none"
attestation, ES256 assertions with a signature counter) and what a
browser adds (clientDataJSON with the page's origin), written from the
WebAuthn Level 2 specification with cryptography and cbor2, independent
of the py_webauthn code under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftKey:
    """One credential an authenticator holds: its key, ID, user handle and counter."""

    private_key: ec.EllipticCurvePrivateKey
    credential_id: bytes
    user_handle: bytes
    counter: int = 0


@dataclass
class SoftAuthenticator:
    """Makes credentials and signs assertions; C{origin} is the page's, as a browser says."""

    origin: str
    rp_id: str
    keys: list[SoftKey] = field(default_factory=list)
    user_verified: bool = True
    # An authenticator with no counter keeps 0.
    counts: bool = True
    # A synced passkey's authenticator: backup eligible (BE) and backed up (BS).
    synced: bool = False

    def _auth_data(self, key: SoftKey, attested: bool) -> bytes:
        flags = UP | (UV if self.user_verified else 0) | (AT if attested else 0)
        flags |= (BE | BS) if self.synced else 0
        if self.counts:
            key.counter += 1
        data = hashlib.sha256(self.rp_id.encode()).digest() + bytes([flags])
        data += struct.pack(">I", key.counter if self.counts else 0)
        if attested:
            numbers = key.private_key.public_key().public_numbers()
            cose = cbor2.dumps(
                {
                    1: 2,
                    3: -7,
                    -1: 1,
                    -2: numbers.x.to_bytes(32, "big"),
                    -3: numbers.y.to_bytes(32, "big"),
                }
            )
            data += bytes(16) + struct.pack(">H", len(key.credential_id)) + key.credential_id
            data += cose
        return data

    def _client_data(self, kind: str, challenge: str) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": False}
        ).encode()

    def create(self, options: dict[str, Any]) -> str:
        """C{navigator.credentials.create()}: the answer as the page posts it (JSON text)."""
        key = SoftKey(
            ec.generate_private_key(ec.SECP256R1()),
            os.urandom(16),
            unb64url(options["user"]["id"]),
        )
        self.keys.append(key)
        client_data = self._client_data("webauthn.create", options["challenge"])
        attestation = cbor2.dumps(
            {"fmt": "none", "attStmt": {}, "authData": self._auth_data(key, attested=True)}
        )
        return json.dumps(
            {
                "id": b64url(key.credential_id),
                "rawId": b64url(key.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "attestationObject": b64url(attestation),
                    "transports": ["usb", "carrier-pigeon"],
                },
                "clientExtensionResults": {},
            }
        )

    def get(self, options: dict[str, Any], key: SoftKey | None = None) -> str:
        """C{navigator.credentials.get()} with C{key} (by default the first one allowed)."""
        if key is None:
            allowed = {unb64url(c["id"]) for c in options.get("allowCredentials", [])}
            key = next(k for k in self.keys if not allowed or k.credential_id in allowed)
        auth_data = self._auth_data(key, attested=False)
        client_data = self._client_data("webauthn.get", options["challenge"])
        signature = key.private_key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        return json.dumps(
            {
                "id": b64url(key.credential_id),
                "rawId": b64url(key.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "authenticatorData": b64url(auth_data),
                    "signature": b64url(signature),
                    "userHandle": b64url(key.user_handle),
                },
                "clientExtensionResults": {},
            }
        )

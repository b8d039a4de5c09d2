"""
WebAuthn ceremonies, judged with the C{webauthn} package (py_webauthn):
the options a browser's C{navigator.credentials.create()} and C{get()}
are given, and the checks of what comes back (origin, RP ID, challenge,
signature, user presence and verification, the signature counter).

The relying party is this node's public URL: the RP ID is its host, the
one origin accepted is its scheme, host and port, compared exactly.

Pure: no storage, no clock, no network. Every refusal is a
L{CeremonyRefused} with one line for the person and a short reason for
the log; nothing an authenticator or a browser sends makes it raise
anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    options_to_json_dict,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from clickpass.i18n import N_

# What a browser's answer may weigh, as JSON text (a "none" attestation is
# well under 2 KiB; certificates of other formats fit too).
MAX_ANSWER = 16384
# The longest credential ID WebAuthn allows.
MAX_CREDENTIAL_ID = 1023
KNOWN_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)

UNREADABLE = N_(
    "Your browser's answer could not be read. Try again, or use another way to sign in."
)
NOT_VERIFIED = N_(
    "Your passkey or security key was not accepted. Try again, or use another way to sign in."
)


class CeremonyRefused(Exception):
    """
    A ceremony's answer refused: C{message} for the person (marked for
    translation, translated where shown), C{reason} for the log.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class RelyingParty:
    """Who the credentials are for: the RP ID, the one origin accepted, the name shown."""

    rp_id: str
    origin: str
    name: str

    @classmethod
    def from_base_url(cls, base_url: str, name: str) -> RelyingParty:
        """
        The relying party of a node whose public URL is C{base_url}: its
        host is the RP ID; the origin is the URL's scheme, host and port as
        a browser writes it (no default port, lower case).
        """
        parts = urlsplit(base_url)
        host = (parts.hostname or "").lower()
        if not host or parts.scheme not in ("http", "https"):
            raise ValueError(f"{base_url!r} is no http(s) URL with a host")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port
        shown = f"[{host}]" if ":" in host else host
        origin = f"{parts.scheme}://{shown}" + (f":{port}" if port and port != default else "")
        return cls(host, origin, name)


@dataclass(frozen=True)
class NewCredential:
    """A credential an authenticator made, checked: what is stored of it."""

    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    user_verified: bool
    backup_eligible: bool
    backed_up: bool


@dataclass(frozen=True)
class Assertion:
    """The parts of a C{get()} answer read before the credential is looked up."""

    credential_id: bytes
    user_handle: bytes | None
    challenge: bytes
    raw: dict[str, Any]


@dataclass(frozen=True)
class VerifiedAssertion:
    """An assertion whose signature and origin checked out."""

    sign_count: int
    user_verified: bool
    backup_eligible: bool
    backed_up: bool


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Base64url without padding, strictly; C{ValueError} for anything else."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError("not base64url") from e


def registration_options(
    rp: RelyingParty,
    *,
    user_handle: bytes,
    user_name: str,
    challenge: bytes,
    existing: list[bytes],
    passkey: bool,
    timeout_ms: int,
) -> dict[str, Any]:
    """
    The options of C{navigator.credentials.create()}, as JSON: a passkey
    (a discoverable credential, user verification required) or a security
    key (a second factor: neither asked). C{existing} credentials are
    excluded, so one authenticator is not registered twice.
    """
    if passkey:
        selection = AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        )
    else:
        selection = AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.DISCOURAGED,
            user_verification=UserVerificationRequirement.DISCOURAGED,
        )
    options = generate_registration_options(
        rp_id=rp.rp_id,
        rp_name=rp.name,
        user_id=user_handle,
        user_name=user_name,
        user_display_name=user_name,
        challenge=challenge,
        timeout=timeout_ms,
        authenticator_selection=selection,
        exclude_credentials=[PublicKeyCredentialDescriptor(id=c) for c in existing],
    )
    result: dict[str, Any] = options_to_json_dict(options)
    return result


def authentication_options(
    rp: RelyingParty,
    *,
    challenge: bytes,
    allow: list[tuple[bytes, tuple[str, ...]]],
    user_verification: bool,
    timeout_ms: int,
) -> dict[str, Any]:
    """
    The options of C{navigator.credentials.get()}, as JSON: the person's
    own credentials (C{allow}: id and transports) for a second factor, or
    none at all for a passkey sign-in (the authenticator offers its
    discoverable ones), with user verification required or discouraged.
    """
    options = generate_authentication_options(
        rp_id=rp.rp_id,
        challenge=challenge,
        timeout=timeout_ms,
        allow_credentials=[
            PublicKeyCredentialDescriptor(
                id=cid, transports=[AuthenticatorTransport(t) for t in ts if t in KNOWN_TRANSPORTS]
            )
            for cid, ts in allow
        ],
        user_verification=(
            UserVerificationRequirement.REQUIRED
            if user_verification
            else UserVerificationRequirement.DISCOURAGED
        ),
    )
    result: dict[str, Any] = options_to_json_dict(options)
    return result


def _answer(text: str) -> dict[str, Any]:
    if not text or len(text) > MAX_ANSWER:
        raise CeremonyRefused(UNREADABLE, "answer missing or too long")
    try:
        value = json.loads(text)
    except ValueError:
        raise CeremonyRefused(UNREADABLE, "answer is not JSON") from None
    if not isinstance(value, dict):
        raise CeremonyRefused(UNREADABLE, "answer is not a JSON object")
    return value


def _client_challenge(client_data_json: bytes) -> bytes:
    try:
        client_data = json.loads(client_data_json)
        challenge = unb64url(client_data["challenge"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CeremonyRefused(UNREADABLE, "clientDataJSON malformed") from None
    if not challenge:
        raise CeremonyRefused(UNREADABLE, "clientDataJSON has no challenge")
    return challenge


def read_registration(text: str) -> tuple[bytes, dict[str, Any]]:
    """The challenge a C{create()} answer (JSON text) signed, and the answer parsed."""
    raw = _answer(text)
    try:
        parsed = parse_registration_credential_json(raw)
    except (WebAuthnException, ValueError, TypeError, KeyError) as e:
        raise CeremonyRefused(UNREADABLE, f"registration answer malformed: {e}") from None
    return _client_challenge(bytes(parsed.response.client_data_json)), raw


def verify_registration(
    rp: RelyingParty, raw: dict[str, Any], challenge: bytes, require_user_verification: bool
) -> NewCredential:
    """
    Check a C{create()} answer against C{challenge}, the RP ID and the
    origin; the new credential, or L{CeremonyRefused}.
    """
    try:
        verified = verify_registration_response(
            credential=raw,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            require_user_verification=require_user_verification,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as e:
        raise CeremonyRefused(NOT_VERIFIED, f"registration refused: {e}") from None
    if len(verified.credential_id) > MAX_CREDENTIAL_ID:
        raise CeremonyRefused(NOT_VERIFIED, "credential id too long")
    response = raw.get("response")
    transports = response.get("transports") if isinstance(response, dict) else None
    kept = tuple(
        sorted({t for t in transports if isinstance(t, str) and t in KNOWN_TRANSPORTS})
        if isinstance(transports, list)
        else ()
    )
    return NewCredential(
        credential_id=bytes(verified.credential_id),
        public_key=bytes(verified.credential_public_key),
        sign_count=int(verified.sign_count),
        transports=kept,
        user_verified=bool(verified.user_verified),
        backup_eligible=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
        backed_up=bool(verified.credential_backed_up),
    )


def read_assertion(text: str) -> Assertion:
    """The credential, user handle and challenge of a C{get()} answer (JSON text)."""
    raw = _answer(text)
    try:
        parsed = parse_authentication_credential_json(raw)
    except (WebAuthnException, ValueError, TypeError, KeyError) as e:
        raise CeremonyRefused(UNREADABLE, f"assertion malformed: {e}") from None
    credential_id = bytes(parsed.raw_id)
    if not credential_id or len(credential_id) > MAX_CREDENTIAL_ID:
        raise CeremonyRefused(UNREADABLE, "assertion credential id empty or too long")
    handle = bytes(parsed.response.user_handle) if parsed.response.user_handle else None
    challenge = _client_challenge(bytes(parsed.response.client_data_json))
    return Assertion(credential_id, handle, challenge, raw)


def verify_assertion(
    rp: RelyingParty,
    assertion: Assertion,
    public_key: bytes,
    require_user_verification: bool,
) -> VerifiedAssertion:
    """
    Check a C{get()} answer: its challenge (the one the caller found
    unspent), origin, RP ID, user presence (and verification when
    required) and its signature under C{public_key}. The signature counter
    is the caller's to judge (L{counter_ok}): a counter going back is told
    apart from a forged answer only once the signature checked out.
    """
    try:
        verified = verify_authentication_response(
            credential=assertion.raw,
            expected_challenge=assertion.challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            credential_public_key=public_key,
            # 0: py_webauthn's own counter check off; counter_ok judges it.
            credential_current_sign_count=0,
            require_user_verification=require_user_verification,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as e:
        raise CeremonyRefused(NOT_VERIFIED, f"assertion refused: {e}") from None
    return VerifiedAssertion(
        int(verified.new_sign_count),
        bool(verified.user_verified),
        verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
        bool(verified.credential_backed_up),
    )


def counter_ok(stored: int, given: int) -> bool:
    """
    Whether an authenticator's signature counter may follow C{stored}: it
    must go up, unless the authenticator keeps none (both 0). A counter
    that stays or goes back means the key was copied (or a replay).
    """
    if stored == 0 and given == 0:
        return True
    return given > stored

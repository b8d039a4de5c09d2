"""
TOTP (RFC 6238 on HOTP, RFC 4226): secrets, codes, and the check of a
code against a window of one time step either side of now, with replay
refused (a code is good once: its step must be later than the last step
accepted for that secret).

Pure functions of their arguments (the time is one of them): no I/O, no
clock, no Twisted. The enrolment QR code is rendered here, as SVG text,
on the server (no script sent to the browser).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import struct
from urllib.parse import quote, urlencode

import segno

# The parameters every authenticator app understands (and the only ones
# several of them honour): SHA-1, 6 digits, 30-second steps.
DIGITS = 6
STEP = 30
SECRET_BYTES = 20
# Steps either side of now a code may be from (clock drift, slow typing).
WINDOW = 1


def new_secret() -> str:
    """A random 160-bit secret, in base32 without padding (as apps take it)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    padded = secret.upper() + "=" * (-len(secret) % 8)
    return base64.b32decode(padded)


def time_step(now: float) -> int:
    """The TOTP time step (counter) of a Unix time."""
    return int(now // STEP)


def hotp(secret: str, counter: int) -> str:
    """The RFC 4226 code of C{secret} (base32) for C{counter}."""
    digest = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def code_at(secret: str, now: float) -> str:
    """The code an authenticator app shows at time C{now}."""
    return hotp(secret, time_step(now))


def normalise_code(text: str) -> str | None:
    """
    A code as a person typed it (spaces and dashes allowed), as six
    digits; L{None} when it cannot be one.
    """
    digits = "".join(c for c in text if c not in " -\t")
    if len(digits) != DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return digits


def matching_step(secret: str, code: str, now: float, last_step: int) -> int | None:
    """
    The time step within L{WINDOW} steps of C{now} whose code is C{code}
    and that is later than C{last_step} (the last one accepted: a code is
    good once), or L{None}. Every candidate is compared in constant time.
    """
    found: int | None = None
    current = time_step(now)
    for step in range(current - WINDOW, current + WINDOW + 1):
        if hmac.compare_digest(hotp(secret, step), code) and step > last_step:
            found = step
    return found


def provisioning_uri(secret: str, account_name: str, issuer: str) -> str:
    """The otpauth:// URI an authenticator app scans (Key Uri Format)."""
    label = quote(f"{issuer}:{account_name}", safe="@:")
    query = urlencode(
        {"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP}
    )
    return f"otpauth://totp/{label}?{query}"


def qr_svg(uri: str) -> str:
    """The QR code of C{uri} as an inline SVG element (no XML declaration)."""
    out = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(
        out, kind="svg", scale=4, border=2, xmldecl=False, svgns=True, title="QR code"
    )
    return out.getvalue().decode("utf-8")


def grouped(secret: str) -> str:
    """The secret in groups of four, easier to type into an app by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))

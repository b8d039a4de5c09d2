"""TOTP codes (RFC 6238 vectors, pyotp agreeing), the ±1 step window, replay, QR SVG."""

from __future__ import annotations

import base64

import pyotp
import pytest

from clickpass.mfa import totp

# RFC 6238 appendix B: the SHA-1 secret "12345678901234567890", 8-digit codes;
# the last six digits are the 6-digit codes.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode("ascii")
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("when", "eight_digits"), RFC_VECTORS)
def test_rfc_6238_vectors(when: int, eight_digits: str) -> None:
    """The codes are RFC 6238's (SHA-1, 30 s steps), truncated to six digits."""
    assert totp.code_at(RFC_SECRET, when) == eight_digits[-6:]


def test_agrees_with_pyotp() -> None:
    """An independent implementation (pyotp, as apps compute) gives the same codes."""
    secret = totp.new_secret()
    for when in (0, 29, 30, 1_700_000_000, 1_700_000_015.9):
        assert totp.code_at(secret, when) == pyotp.TOTP(secret).at(when)


def test_new_secrets_are_160_bits_and_random() -> None:
    """A secret is 32 base32 characters (20 bytes), different every time."""
    one, two = totp.new_secret(), totp.new_secret()
    assert len(one) == 32 and one != two
    assert len(base64.b32decode(one)) == 20


def test_window_is_one_step_either_side() -> None:
    """Codes of the previous, current and next step match; two steps away does not."""
    secret = totp.new_secret()
    now = 1_700_000_010
    step = totp.time_step(now)
    for offset in (-1, 0, 1):
        code = totp.hotp(secret, step + offset)
        assert totp.matching_step(secret, code, now, 0) == step + offset
    for offset in (-2, 2):
        assert totp.matching_step(secret, totp.hotp(secret, step + offset), now, 0) is None


def test_a_code_is_good_once() -> None:
    """A step at or before the last one accepted does not match again (replay)."""
    secret = totp.new_secret()
    now = 1_700_000_010
    step = totp.time_step(now)
    code = totp.hotp(secret, step)
    assert totp.matching_step(secret, code, now, step - 1) == step
    assert totp.matching_step(secret, code, now, step) is None
    # An older code after a newer one was used: refused too.
    assert totp.matching_step(secret, totp.hotp(secret, step - 1), now, step) is None


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("123456", "123456"),
        (" 123 456 ", "123456"),
        ("123-456", "123456"),
        ("12345", None),
        ("1234567", None),
        ("12345a", None),
        ("١٢٣٤٥٦", None),
        ("", None),
    ],
)
def test_normalise_code(typed: str, expected: str | None) -> None:
    """Spaces and dashes are forgiven; anything else than six ASCII digits is no code."""
    assert totp.normalise_code(typed) == expected


def test_provisioning_uri_and_qr() -> None:
    """The otpauth URI names issuer and account; the QR code is inline SVG, no script."""
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "ann@example.com", "Clickpass")
    assert uri.startswith(f"otpauth://totp/Clickpass:ann@example.com?secret={secret}&")
    assert "issuer=Clickpass" in uri
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.secret == secret and parsed.at(1_700_000_000) == totp.code_at(
        secret, 1_700_000_000
    )
    svg = totp.qr_svg(uri)
    assert svg.startswith("<svg") and "<script" not in svg
    assert totp.grouped("ABCDEFGHIJ") == "ABCD EFGH IJ"

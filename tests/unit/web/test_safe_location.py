"""Redirect targets go out as visible ASCII (clickpass.web.routing.safe_location)."""

from __future__ import annotations

import pytest

from clickpass.web.routing import safe_location


@pytest.mark.parametrize(
    ("target", "sent"),
    [
        ("/account", b"/account"),
        ("/openid?x=1&y=%2F", b"/openid?x=1&y=%2F"),
        ("/\x7f/x", b"/%7F/x"),
        ("/a b\tc", b"/a%20b%09c"),
        ("/a\r\nSet-Cookie: x=1", b"/a%0D%0ASet-Cookie:%20x=1"),
        ("/café", b"/caf%C3%A9"),
        ("https://rp.example/ret?ü=1", b"https://rp.example/ret?%C3%BC=1"),
    ],
)
def test_targets_are_percent_encoded_outside_visible_ascii(target: str, sent: bytes) -> None:
    """Controls, space, DEL and non-ASCII are percent-encoded (UTF-8); the rest is kept."""
    assert safe_location(target.encode("utf-8")) == sent

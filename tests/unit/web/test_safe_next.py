"""Where a person goes after signing in: only somewhere on this site."""

from __future__ import annotations

import pytest

from clickpass.web.app import safe_next


@pytest.mark.parametrize(
    "value", ["", "account", "//evil.example/", "/\\evil.example", "https://evil.example/", "/a\nb"]
)
def test_elsewhere_is_refused(value: str) -> None:
    """Other hosts, scheme-relative URLs, backslashes and control characters go to the default."""
    assert safe_next(value) == "/account"


@pytest.mark.parametrize("value", ["/", "/account", "/openid?x=1&y=%2F"])
def test_paths_here_are_kept(value: str) -> None:
    """A path on this site is kept as it is."""
    assert safe_next(value) == value

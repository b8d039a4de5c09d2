"""Which listeners serve a node's public_url, for the warning a node logs at start."""

from __future__ import annotations

import pytest

from clickpass.config import public_url_problem


@pytest.mark.parametrize(
    ("public_url", "listeners"),
    [
        ("", ["tcp:8080"]),
        ("http://127.0.0.1:8080/", ["tcp:8080:interface=127.0.0.1"]),
        ("http://login.example.com:8080/", ["tcp:8080:interface=127.0.0.1"]),
        ("http://192.0.2.7:8080/", ["tcp:8080"]),
        ("http://192.0.2.7:8080/", ["tcp:8080:interface=0.0.0.0"]),
        ("https://login.example.com/", ["tcp:80", "ssl:443"]),
        ("http://login.example.com/", ["tcp:80"]),
        ("http://[::1]:8080/", ["tcp6:8080:interface=\\:\\:1"]),
        ("https://login.example.com/", ["unix:/run/clickpass/web.sock"]),
    ],
)
def test_served_public_urls_give_no_warning(public_url: str, listeners: list[str]) -> None:
    """A listener with the URL's scheme and port (on its address, if it names one) serves it."""
    assert public_url_problem(public_url, listeners) is None


@pytest.mark.parametrize(
    ("public_url", "listeners"),
    [
        ("http://127.0.0.1:9000/", ["tcp:8080:interface=127.0.0.1"]),
        ("https://login.example.com/", ["tcp:443"]),
        ("http://login.example.com/", ["ssl:80"]),
        ("https://login.example.com/", ["tcp:8080", "ssl:8443"]),
        ("http://192.0.2.7:8080/", ["tcp:8080:interface=127.0.0.1"]),
    ],
)
def test_unserved_public_urls_warn_naming_both(public_url: str, listeners: list[str]) -> None:
    """The warning is one line naming the public_url and every listener."""
    problem = public_url_problem(public_url, listeners)
    assert problem is not None
    assert "\n" not in problem
    assert problem.startswith(f"[node] public_url {public_url} is served by none")
    assert all(listener in problem for listener in listeners)

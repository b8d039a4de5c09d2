"""
The sign-in limits against a burst of parallel guesses, through a real node
(front, workers, database) on SQLite and on MariaDB: every attempt is
counted before its password is checked, so sending guesses in parallel
gets no more checks than sending them one by one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.browser import Browser, csrf_token
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
PER_ACCOUNT = 5
PER_ADDRESS = 20


@pytest.fixture(
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeProcess]:
    """A node with the default limits (5 per account, 20 per address), on either backend."""
    server = request.getfixturevalue("mariadb_server") if request.param == "mysql" else None
    extra = (
        f"\n[accounts]\nthrottle_per_account = {PER_ACCOUNT}\n"
        f"throttle_per_address = {PER_ADDRESS}\n"
    )
    with running_node(tmp_path, extra, server, "limits") as proc:
        yield proc


def _burst(node: NodeProcess, attempts: list[tuple[str, str]]) -> list[int]:
    """
    Post every (email, password) sign-in at once, each from its own browser
    holding a CSRF token fetched beforehand; return the status codes.
    """
    prepared = []
    for _ in attempts:
        browser = Browser(node.url)
        prepared.append((browser, csrf_token(browser.get("/signin").text)))
    start = threading.Barrier(len(attempts))

    def post(i: int) -> int:
        browser, token = prepared[i]
        email, password = attempts[i]
        start.wait(30)
        response = browser.post(
            "/signin",
            {"email": email, "password": password, "csrf_token": token},
            allow_redirects=False,
            timeout=120,
        )
        return response.status_code

    with ThreadPoolExecutor(len(attempts)) as pool:
        return list(pool.map(post, range(len(attempts))))


def test_parallel_guesses_get_no_more_checks_than_the_limits(node: NodeProcess) -> None:
    """
    Thirty sign-ins for one account sent at once get at most the account's
    limit (5) of answers other than 429; the right password sent with them
    does not get in once the limit is spent. Thirty more for thirty other
    emails from the same address bring the address's failed attempts to at
    most its limit (20), as /metrics counts them too.
    """
    node.ctl("user", "add", "burst@example.com", "--password-stdin", input=PASSWORD + "\n")
    guesses = [("burst@example.com", f"wrong guess {i:02d}") for i in range(29)]
    guesses.append(("burst@example.com", PASSWORD))
    first = _burst(node, guesses)
    assert set(first) <= {401, 429, 303}, first
    assert len([s for s in first if s != 429]) <= PER_ACCOUNT, first
    assert first.count(429) >= len(first) - PER_ACCOUNT
    retry = Browser(node.url).sign_in("burst@example.com", PASSWORD)
    assert retry.status_code == 429 or 303 in first, first

    second = _burst(node, [(f"other{i}@example.com", "wrong guess!") for i in range(30)])
    assert set(second) <= {401, 429}, second
    # A sign-in that succeeded is not a failure: it gives its address back
    # the attempt it was charged.
    assert (first + second).count(401) <= PER_ADDRESS, (first, second)
    metrics = Browser(node.url).get("/metrics").text
    refused = [
        line
        for line in metrics.splitlines()
        if line.startswith('clickpass_signins_total{outcome="refused"}')
    ]
    assert refused and int(float(refused[0].split()[-1])) <= PER_ADDRESS, refused

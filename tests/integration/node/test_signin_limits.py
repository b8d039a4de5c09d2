"""
The sign-in limits, through a real node (front, workers, database):

- against a burst of parallel guesses, on SQLite and on MariaDB: every
  attempt is counted before its password is checked, so sending guesses in
  parallel gets no more checks than sending them one by one;
- against a flood of sign-ins from everywhere: each worker checks only so
  many passwords at once and answers the rest 503 with Retry-After at
  once, so the flood neither waits nor takes the node down for people
  already signed in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.browser import Browser, csrf_token
from tests.support.node import METRICS_AUTH, NodeProcess, running_node

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
PER_ACCOUNT = 5
PER_ADDRESS = 20


@pytest.fixture(
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeProcess]:
    """A node with the default throttle limits (5 per account, 20 per address), either backend."""
    server = request.getfixturevalue("mariadb_server") if request.param == "mysql" else None
    # Room in the hashing queues for every attempt: only the throttle decides.
    # The product's hash cost, not the test nodes' cheap one: a right password
    # among the first checks would otherwise finish (and start the account's
    # count afresh, as a sign-in does) before the burst's later attempts are
    # counted, and those would be checked too.
    extra = (
        f"\n[accounts]\nthrottle_per_account = {PER_ACCOUNT}\n"
        f"throttle_per_address = {PER_ADDRESS}\nhash_queue = 64\n"
        "hash_memory = 65536\nhash_passes = 3\n"
    )
    # Two workers: the limits hold across workers, not only within one.
    with running_node(tmp_path, extra, server, "limits", workers=2) as proc:
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
    metrics = Browser(node.url).get("/metrics", headers=METRICS_AUTH).text
    refused = [
        line
        for line in metrics.splitlines()
        if line.startswith('clickpass_signins_total{outcome="refused"}')
    ]
    assert refused and int(float(refused[0].split()[-1])) <= PER_ADDRESS, refused


FLOOD_SECONDS = 10.0
FLOOD_CLIENTS = 40


def test_a_flood_of_sign_ins_is_answered_busy_and_signed_in_pages_still_answer(
    tmp_path: Path,
) -> None:
    """
    Forty clients sending bad-password sign-ins without pause for ten
    seconds (throttling set out of the way, as for a flood from many
    addresses) against workers that check one password at a time and hold
    two more: every sign-in is answered promptly, 401 or 503 with
    Retry-After (none waits behind the whole flood, none fails otherwise),
    a signed-in person's account page answers 200 all along, no worker is
    replaced, and the person can sign in once the flood stops.
    """
    # The product's own hashing cost: the queue fills only behind hashes
    # that take their time.
    extra = (
        "\n[accounts]\nthrottle_per_account = 100000\nthrottle_per_address = 100000\n"
        "hash_threads = 1\nhash_queue = 2\nhash_memory = 65536\nhash_passes = 3\n"
    )
    with running_node(tmp_path, extra, None, "flood", workers=2) as node:
        person = Browser(node.url)
        assert person.sign_up("ada@example.com", PASSWORD).status_code == 200
        deadline = time.monotonic() + FLOOD_SECONDS
        answers: list[tuple[object, float, str | None]] = []
        lock = threading.Lock()

        def flood(i: int) -> None:
            browser = Browser(node.url)
            token = csrf_token(browser.get("/signin").text)
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    response = browser.post(
                        "/signin",
                        {
                            "email": f"flood{i}@example.com",
                            "password": "wrong guess!",
                            "csrf_token": token,
                        },
                        allow_redirects=False,
                        timeout=60,
                    )
                    outcome: object = response.status_code
                    retry_after = response.headers.get("retry-after")
                except Exception as e:  # a timeout or a dropped connection is the finding
                    outcome, retry_after = type(e).__name__, None
                with lock:
                    answers.append((outcome, time.monotonic() - started, retry_after))

        pages: list[tuple[int, float]] = []
        with ThreadPoolExecutor(FLOOD_CLIENTS) as pool:
            flooding = [pool.submit(flood, i) for i in range(FLOOD_CLIENTS)]
            time.sleep(1.0)
            while time.monotonic() < deadline:
                started = time.monotonic()
                page = person.get("/account", timeout=60)
                pages.append((page.status_code, time.monotonic() - started))
                time.sleep(0.2)
            for done in flooding:
                done.result()

        outcomes = sorted({str(outcome) for outcome, _, _ in answers})
        assert set(outcomes) <= {"401", "503"}, outcomes
        slowest = max(seconds for _, seconds, _ in answers)
        assert slowest < 15.0, f"a sign-in waited {slowest:.1f}s behind the flood"
        assert pages and all(status == 200 for status, _ in pages), pages
        busy = [a for a in answers if a[0] == 503]
        assert busy, "no sign-in was answered 503: the hashing queue is unbounded or never filled"
        assert all(retry_after and int(retry_after) > 0 for _, _, retry_after in busy)
        assert "replacing worker" not in node.log() and "died after" not in node.log()
        back = Browser(node.url).sign_in("ada@example.com", PASSWORD)
        assert back.status_code == 200 and back.url == node.url + "account"

"""
The front's defences against hostile clients, each through a real node
(C{twistd -n clickpass}, real workers, real sockets): slow request bodies,
forged client addresses, redirect targets a worker would send malformed,
/metrics on the public listener, malformed request heads, and HSTS.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from requests.adapters import HTTPAdapter

from tests.integration.balancer.conftest import Node, wait_for
from tests.support.browser import Browser

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def testapp_node(start_shared_node: Callable[..., Node]) -> Node:
    """
    One worker serving the test application, for the tests that only send it
    requests that leave nothing behind (a refused head, a GET).
    """
    return start_shared_node(workers=1)


@pytest.fixture(scope="module")
def app_node(start_shared_node: Callable[..., Node]) -> Node:
    """
    One worker serving Clickpass behind a trusted proxy (127.0.0.1/32), for
    tests that each sign up an address of their own and fail sign-ins only
    from client addresses of their own.
    """
    return start_shared_node(workers=1, app="", web='trusted_proxies = ["127.0.0.1/32"]\n')


def read_answer(s: socket.socket, timeout: float) -> bytes:
    """What the server sends on C{s} until it closes (or C{timeout} passes)."""
    s.settimeout(timeout)
    chunks = []
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        chunks.append(b"<timeout>")
    except ConnectionResetError:
        chunks.append(b"<reset>")
    return b"".join(chunks)


def test_slow_request_bodies_take_no_worker_slot_and_get_no_worker_replaced(start_node):
    """
    40 clients that send a Content-Length of 100 and 7 bytes of body hold
    only connections to the front: a normal client's requests are answered
    promptly meanwhile, past the request timeout the worker is still the
    same process (nothing was counted against it), and each slow client
    gets a 408 at body_timeout.
    """
    body_timeout = 4.0
    node: Node = start_node(
        workers=1,
        balancer=(
            f"body_timeout = {body_timeout}\nrequest_timeout = 3.0\n"
            "queue_timeout = 2.0\nsweep_interval = 0.2\n"
        ),
    )
    (before,) = node.ready_workers()
    slow = []
    try:
        sent = time.monotonic()
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
            s.sendall(b"POST /signin HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n1234567")
            slow.append(s)
        worst = 0.0
        # Past request_timeout: a slow body counted against the worker would
        # have run out its timeout (504, and the worker replaced).
        while time.monotonic() - sent < 3.5:
            started = time.monotonic()
            answer = node.get("/", timeout=10)
            worst = max(worst, time.monotonic() - started)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            time.sleep(0.3)
        assert worst < 1.5, worst
        for s in slow:
            answer = read_answer(s, timeout=10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert time.monotonic() - sent > body_timeout - 0.5
    finally:
        for s in slow:
            s.close()
    (after,) = node.ready_workers()
    assert (after["id"], after["pid"], after["restarts"]) == (
        before["id"],
        before["pid"],
        before["restarts"],
    )
    log = node.log.read_text()
    assert "did not answer" not in log
    assert node.get("/").startswith(b"HTTP/1.1 200 ")
    # A body that does arrive whole still reaches the worker.
    posted = node.request(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    assert posted.startswith(b"HTTP/1.1 200 ") and posted.endswith(b"got 5 bytes: hello"), posted


class SourceAddress(HTTPAdapter):
    """Connections from a given local address (127.0.0.2 is loopback too, but not 127.0.0.1)."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.host, 0)
        super().init_poolmanager(*args, **kwargs)


def browser(node: Node, forwarded_for: str = "", source: str = "") -> Browser:
    person = Browser(f"http://127.0.0.1:{node.port}/")
    if forwarded_for:
        person.session.headers["X-Forwarded-For"] = forwarded_for
    if source:
        person.session.mount("http://", SourceAddress(source))
    return person


PASSWORD = "the owner's long password"


def fail_twenty_times(attacker: Browser, net: str) -> None:
    """20 failed sign-ins (the per-address limit), each naming another account
    and claiming another address of C{net} (say "198.51.100") in the front's
    own client header."""
    tag = secrets.token_hex(4)
    for i in range(20):
        attacker.session.headers["X-Clickpass-Client"] = f"{net}.{100 + i}"
        refused = attacker.sign_in(f"nobody{i}-{tag}@example.com", "not the password")
        assert refused.status_code == 401, (i, refused.status_code)


def signed_up_owner(node: Node) -> str:
    """Sign up an account of the test's own on C{node}; return its address."""
    email = f"owner-{secrets.token_hex(4)}@example.com"
    assert browser(node).sign_up(email, PASSWORD).status_code == 200
    return email


# The two tests below share app_node, so each uses client addresses of its
# own (a block of the documentation ranges): the one locks out is never one
# the other expects to sign in from.


def test_behind_a_trusted_proxy_one_clients_failures_do_not_lock_out_another(app_node):
    """
    Behind a trusted proxy (127.0.0.1/32), the client is the rightmost
    X-Forwarded-For hop the proxy does not vouch for: 20 failed sign-ins from
    one forwarded client lock that client out, while another forwarded
    client signs in. Sending the front's own client header changes nothing.
    """
    node: Node = app_node
    owner_email = signed_up_owner(node)
    # What the attacker wrote itself sits left of what the proxy appended.
    attacker = browser(node, forwarded_for="203.0.113.50, 198.51.100.1")
    fail_twenty_times(attacker, "198.51.100")
    attacker.session.headers["X-Forwarded-For"] = "203.0.113.51, 198.51.100.1"
    assert attacker.sign_in(owner_email, PASSWORD).status_code == 429
    owner = browser(node, forwarded_for="198.51.100.2")
    signed_in = owner.sign_in(owner_email, PASSWORD, "/account")
    assert signed_in.status_code == 200 and owner_email in signed_in.text


def test_a_client_that_is_not_a_trusted_proxy_cannot_choose_its_address(app_node):
    """
    A client connecting from outside the trusted ranges (127.0.0.2) is its own
    address whatever X-Forwarded-For or X-Clickpass-Client it sends: after 20
    failures it is throttled under a new X-Forwarded-For too, while a client
    forwarded by the trusted proxy still signs in.
    """
    node: Node = app_node
    owner_email = signed_up_owner(node)
    attacker = browser(node, forwarded_for="192.0.2.1", source="127.0.0.2")
    fail_twenty_times(attacker, "192.0.2")
    attacker.session.headers["X-Forwarded-For"] = "192.0.2.99"
    attacker.session.headers["X-Clickpass-Client"] = "192.0.2.98"
    assert attacker.sign_in(owner_email, PASSWORD).status_code == 429
    owner = browser(node, forwarded_for="192.0.2.1")
    assert owner.sign_in(owner_email, PASSWORD, "/account").status_code == 200


@pytest.mark.parametrize(
    "raw",
    [b"GET / HTTP/1.1\nHost: t\n\n", b"GET / HTTP/1.1\r\nHost: t\n\n", b"GET / HTTP/1.1\rHost: t"],
    ids=["bare-lf", "bare-lf-in-headers", "bare-cr"],
)
def test_a_head_with_bare_line_ends_is_refused_at_once(testapp_node, raw):
    """
    A request head whose lines end in a bare LF (or CR) gets one 400 at once
    and the connection closes, instead of a 408 at header_timeout.
    """
    node: Node = testapp_node
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(raw)
        answer = read_answer(s, timeout=5)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1
    assert time.monotonic() - started < 3
    assert node.get("/").startswith(b"HTTP/1.1 200 ")


LONG_LINE = b"GET /?" + b"a" * (17 * 1024) + b" HTTP/1.1\r\nHost: t\r\n\r\n"
LARGE_HEAD = (
    b"GET / HTTP/1.1\r\nHost: t\r\n"
    + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 400) for i in range(100))
    + b"\r\n"
)


@pytest.mark.parametrize(
    ("raw", "status", "kind"),
    [
        (LONG_LINE, 414, "target_too_long"),
        (LARGE_HEAD, 431, "head_too_large"),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            431,
            "head_too_large",
        ),
    ],
    ids=["request-line-over-16-KiB", "head-over-max_header_bytes", "one-100-KB-header"],
)
def test_a_request_line_or_head_too_large_is_refused_by_the_front(testapp_node, raw, status, kind):
    """
    A request line above 16 KiB gets a 414, a head above max_header_bytes
    (32 KiB) a 431: at once, one answer, one log line, the connection
    closed; the worker never sees it, stays, and serves the next request.
    """
    node: Node = testapp_node
    workers = sorted(w["pid"] for w in node.ready_workers())
    logged = node.log.read_text().count("front: refused a request")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(raw)
        answer = read_answer(s, timeout=10)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1 and not answer.endswith((b"<timeout>", b"<reset>"))
    assert time.monotonic() - started < 5
    assert node.get("/").startswith(b"HTTP/1.1 200 ")
    wait_for(
        lambda: node.log.read_text().count("front: refused a request") == logged + 1,
        10,
        "the refusal's log line",
    )
    line = [x for x in node.log.read_text().splitlines() if "front: refused a request" in x][-1]
    assert f"{status} ({kind})" in line
    assert sorted(w["pid"] for w in node.ready_workers()) == workers


def test_heads_the_front_takes_reach_the_worker_whole(testapp_node):
    """
    A request line of exactly 16 KiB and a head of 30 KiB (under 32 KiB
    max_header_bytes) are served by the worker, not refused by it (which
    the front would answer as a failed worker).
    """
    node: Node = testapp_node
    room = 16 * 1024 - len(b"GET /? HTTP/1.1\r\n")
    line = b"GET /?" + b"a" * room + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    assert line.index(b"\r\n") + 2 == 16 * 1024
    head = (
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 280) for i in range(40))
        + b"X-One-Long: "
        + b"x" * 17000
        + b"\r\n\r\n"
    )
    for raw in (line, head):
        answer = node.request(raw, timeout=10)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


@pytest.mark.parametrize(
    ("next_url", "location"),
    [("/\x7f/x", "/%7F/x"), ("/café", "/caf%C3%A9")],
    ids=["del", "non-ascii"],
)
def test_redirect_targets_with_control_or_non_ascii_bytes_are_percent_encoded(
    app_node, next_url, location
):
    """
    A sign-in whose next= holds DEL or non-ASCII characters is answered 303
    with the target percent-encoded, and the session cookie of that answer
    arrives (a raw byte made the answer invalid: 502, cookie lost); so is
    the signed-in GET /signin?next=... that redirects at once.
    """
    node: Node = app_node
    person = browser(node)
    email = f"owner-{secrets.token_hex(4)}@example.com"
    assert person.sign_up(email, PASSWORD).status_code == 200
    person.session.cookies.clear()
    signed_in = person.submit(
        "/signin",
        "/signin",
        {"email": email, "password": PASSWORD, "next": next_url},
        allow_redirects=False,
    )
    assert signed_in.status_code == 303, signed_in.text[:300]
    assert signed_in.headers["location"] == location
    assert "cp_session" in person.session.cookies
    again = person.get("/signin", params={"next": next_url}, allow_redirects=False)
    assert again.status_code == 303, again.text[:300]
    assert again.headers["location"] == location
    # An http:// public URL: no Strict-Transport-Security.
    assert "strict-transport-security" not in again.headers


def test_metrics_are_not_on_the_public_listener_without_the_token(
    start_node, testapp_node, tmp_path
):
    """
    By default the public listener does not serve /metrics (the path goes to
    the application like any other); with [web] metrics_token_file it serves the page
    only to requests that send that bearer token (401 otherwise).
    """
    plain: Node = testapp_node
    answer = plain.get("/metrics")
    # The test application's answer to any path, not the front's page.
    assert answer.endswith(b"hello from a worker\n"), answer[:300]
    assert b"clickpass_" not in answer
    token = "t" * 40
    token_file = tmp_path / "metrics-token"
    token_file.write_text(token + "\n")
    guarded: Node = start_node(workers=1, web=f'metrics_token_file = "{token_file}"\n')
    refused = guarded.get("/metrics")
    assert refused.startswith(b"HTTP/1.1 401 "), refused[:200]
    assert b"clickpass_" not in refused
    wrong = guarded.get("/metrics", headers="Authorization: Bearer " + "u" * 40 + "\r\n")
    assert wrong.startswith(b"HTTP/1.1 401 "), wrong[:200]
    page = guarded.get("/metrics", headers=f"Authorization: Bearer {token}\r\n")
    assert page.startswith(b"HTTP/1.1 200 "), page[:200]
    assert b"clickpass_front_requests_total" in page

"""
The front's ssl: listener end to end, with a real node and the real
application: a test CA and a server certificate made by the test, HTTPS
requests through the front to a worker, a Secure session cookie, HTTP
keep-alive over TLS, and the plain-HTTP listener redirecting to HTTPS.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.browser import csrf_token
from tests.support.node import NodeProcess, free_port
from tests.support.tlsca import make_ca

pytestmark = pytest.mark.integration


class TLSNode:
    def __init__(self, process: NodeProcess, https_port: int, http_port: int, ca: Path) -> None:
        self.process = process
        self.https_port = https_port
        self.http_port = http_port
        self.ca = ca
        self.url = f"https://127.0.0.1:{https_port}"


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSNode]:
    """
    One node for the module: its tests only send it requests (one of them
    signs up an address no other test uses).
    """
    tmp_path = tmp_path_factory.mktemp("tls-node")
    ca = make_ca(tmp_path).ca_pem
    https_port, http_port = free_port(), free_port()
    config = tmp_path / "node1.toml"
    config.write_text(
        f"""
[node]
name = "node1"
data_dir = "{tmp_path / "data"}"
public_url = "https://127.0.0.1:{https_port}/"

[web]
listen = ["ssl:{https_port}:interface=127.0.0.1", "tcp:{http_port}:interface=127.0.0.1"]
tls_certificate = "{tmp_path / "server.pem"}"
tls_private_key = "{tmp_path / "server.key"}"

[workers]
count = 2

[balancer]
redirect_http_to_https = true
"""
    )
    process = NodeProcess(tmp_path, config, port=https_port)
    try:
        process.start(timeout=60)
        yield TLSNode(process, https_port, http_port, ca)
    finally:
        process.stop()


def test_https_through_the_front_to_the_application(tls_node: TLSNode) -> None:
    """
    The ssl: listener serves the real application over verified TLS, the
    session cookie it sets after a sign-up is Secure (the worker learns the
    scheme from the front's X-Forwarded-Proto), and the signed-in page works
    over the same keep-alive TLS connection.
    """
    session = requests.Session()
    # Per request: requests lets REQUESTS_CA_BUNDLE override a Session's verify.
    ca = str(tls_node.ca)
    health = session.get(tls_node.url + "/healthz", verify=ca, timeout=10)
    assert health.status_code == 200 and health.text == "ok\n"
    page = session.get(tls_node.url + "/signup", verify=ca, timeout=10)
    assert page.status_code == 200
    signed = session.post(
        tls_node.url + "/signup",
        data={
            "email": "tls@example.com",
            "password": "a long enough password",
            "password_again": "a long enough password",
            "next": "/account",
            "csrf_token": csrf_token(page.text),
        },
        allow_redirects=False,
        verify=ca,
        timeout=10,
    )
    # Sign-up answers "check your email" and signs nobody in; signing in does.
    assert signed.status_code == 200 and 'id="signup-sent"' in signed.text, signed.text[:500]
    signed = session.post(
        tls_node.url + "/signin",
        data={
            "email": "tls@example.com",
            "password": "a long enough password",
            "next": "/account",
            "csrf_token": csrf_token(page.text),
        },
        allow_redirects=False,
        verify=ca,
        timeout=10,
    )
    assert signed.status_code == 303, signed.text[:500]
    set_cookies = signed.raw.headers.getlist("Set-Cookie")
    session_cookies = [c for c in set_cookies if c.startswith("cp_session=")]
    assert session_cookies, set_cookies
    assert all(re.search(r";\s*Secure", c, re.I) for c in set_cookies), set_cookies
    account = session.get(tls_node.url + "/account", allow_redirects=False, verify=ca, timeout=10)
    assert account.status_code == 200 and "tls@example.com" in account.text


def test_plain_tls_client_without_the_ca_is_refused(tls_node: TLSNode) -> None:
    """A client that does not trust the test CA fails the handshake (the cert is really used)."""
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_node.url + "/healthz", timeout=10)


def test_pipelined_requests_over_tls_with_alpn(tls_node: TLSNode) -> None:
    """
    A client offering ALPN h2 and http/1.1, as browsers do, gets http/1.1
    (Twisted alone would end the handshake with an internal-error alert);
    two requests written at once on the connection get two answers, in order.
    """
    context = ssl.create_default_context(cafile=str(tls_node.ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", tls_node.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /static/nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    statuses = re.findall(rb"^HTTP/1.1 (\d{3})", data, re.M)
    assert statuses == [b"200", b"404"], data[:500]


def test_http_listener_redirects_to_https(tls_node: TLSNode) -> None:
    """
    On the tcp: listener every request is redirected to the same path under
    the https public URL (301 for GET, 308 for POST); following it works.
    """
    http = f"http://127.0.0.1:{tls_node.http_port}"
    moved = requests.get(http + "/signin?next=%2Faccount", allow_redirects=False, timeout=10)
    assert moved.status_code == 301
    assert moved.headers["location"] == tls_node.url + "/signin?next=%2Faccount"
    posted = requests.post(http + "/signin", data={"a": "b"}, allow_redirects=False, timeout=10)
    assert posted.status_code == 308
    assert posted.headers["location"] == tls_node.url + "/signin"
    followed = requests.get(http + "/healthz", verify=str(tls_node.ca), timeout=10)
    assert followed.status_code == 200 and followed.url == tls_node.url + "/healthz"
    assert [r.status_code for r in followed.history] == [301]


def test_https_answers_tell_browsers_to_stay_on_https(tls_node: TLSNode) -> None:
    """
    With an https:// public URL, the application's answers (pages, errors,
    redirects, probes) carry Strict-Transport-Security for a year.
    """
    ca = str(tls_node.ca)
    for path in ("/healthz", "/signin", "/nothing-here", "/account"):
        answer = requests.get(tls_node.url + path, allow_redirects=False, verify=ca, timeout=10)
        assert answer.status_code in (200, 303, 404), (path, answer.status_code)
        assert answer.headers.get("strict-transport-security") == "max-age=31536000", path

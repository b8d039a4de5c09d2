"""
Fixtures for the partner tests: a real node, a partner admin who
registers the example partner site through the console, and the example
partner site itself (examples/partner_site) running as a process.

Each partner site gets its own loopback address (127.0.0.x): a site is
registered per host, and cookies do not tell ports apart.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.support.browser import Browser
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, free_port, running_node

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "correct horse battery"

NODE_CONFIG = """
[openid]
allow_private_rp_discovery = true
rp_discovery_timeout = 5.0

[partners]
allow_private_webhooks = true
webhook_poll_interval = 0.2
webhook_backoff_initial = 0.5
webhook_backoff_max = 1.0
webhook_timeout = 5.0
"""

NEW_KEY = re.compile(r'id="new-key">([^<]+)<')
SECRET = re.compile(r'id="webhook-secret">([^<]+)<')
VERIFICATION_TOKEN = re.compile(r'id="verification-token">([^<]+)<')
SITE_URL = re.compile(r"/partners/(site_[0-9a-f]+)$")


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """
    One running node for a test module, on each storage backend: SQLite,
    and a fresh database on the session's private MariaDB server (the
    partner flows, the API and the webhook outbox run on both).
    """
    tmp = tmp_path_factory.mktemp("partners-node")
    server: MariaDBServer | None = None
    if request.param == "mysql":
        server = request.getfixturevalue("mariadb_server")
    with running_node(tmp, NODE_CONFIG, server, "partners") as proc:
        yield proc


@dataclass
class RegisteredSite:
    public_id: str
    realm: str
    api_key: str
    webhook_secret: str
    admin: Browser


class TokenServer:
    """A partner's host that publishes only its Clickpass verification token."""

    def __init__(self, host: str) -> None:
        self.token = ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/.well-known/clickpass-verification.txt" and server.token
                body = (server.token + "\n").encode() if ok else b"not found\n"
                self.send_response(200 if ok else 404)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.realm = f"http://{host}:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, token: str, _webhook_secret: str) -> None:
        self.token = token

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    """A second partner host on 127.0.0.3 that can prove it owns its realm."""
    server = TokenServer("127.0.0.3")
    try:
        yield server
    finally:
        server.stop()


def register_site(
    node: NodeProcess,
    realm: str,
    name: str = "Example Partner",
    webhook_url: str = "",
    requested: tuple[str, ...] = ("email", "nickname", "fullname"),
    required: tuple[str, ...] = ("email", "nickname"),
    admin: Browser | None = None,
    publish: Callable[[str, str], None] | None = None,
    return_tos: tuple[str, ...] = ("return?*",),
) -> RegisteredSite:
    """
    Sign up a partner admin, register a site in the console, publish its
    verification token on the realm's host (C{publish(token, webhook_secret)})
    and verify it, then create an API key. Without C{publish} the site stays
    unverified and gets no key (C{api_key} is empty).

    C{return_tos} are paths under the realm. By default C{return?*}: the
    example site and the tests' relying parties use python3-openid, whose
    return_to is C{<realm>return?janrain_nonce=...}, so the registration
    must allow a query on that path.
    """
    if admin is None:
        admin = Browser(node.url)
        response = admin.sign_up(f"admin-{secrets.token_hex(4)}@example.com", PASSWORD)
        assert response.ok, response.text[:2000]
    page = admin.get("/partners/new")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    form: list[tuple[str, str]] = [
        ("csrf_token", unescape(token.group(1))),
        ("name", name),
        ("realm", realm),
        ("return_to_urls", "\n".join(realm + path for path in return_tos)),
        ("registration_url", realm + "register"),
        ("connect_url", realm + "connect"),
        ("webhook_url", webhook_url),
    ]
    form += [("requested_fields", f) for f in requested]
    form += [("required_fields", f) for f in required]
    response = admin.session.post(admin.url("/partners/new"), data=form, timeout=30)
    assert response.ok, response.text[:3000]
    found = SITE_URL.search(response.url)
    assert found is not None, response.url
    public_id = found.group(1)
    secret = SECRET.search(response.text)
    assert secret is not None
    verification = VERIFICATION_TOKEN.search(response.text)
    assert verification is not None, response.text[:3000]
    if publish is None:
        return RegisteredSite(public_id, realm, "", secret.group(1), admin)
    publish(verification.group(1), secret.group(1))
    token = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
    assert token is not None
    verified = admin.post(f"/partners/{public_id}/verify", {"csrf_token": unescape(token.group(1))})
    assert verified.status_code == 200, verified.text[:3000]
    assert "Verified: you control" in verified.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', verified.text)
    assert token is not None
    keyed = admin.post(
        f"/partners/{public_id}/keys",
        {"csrf_token": unescape(token.group(1)), "label": "tests"},
    )
    key = NEW_KEY.search(keyed.text)
    assert key is not None, keyed.text[:3000]
    return RegisteredSite(public_id, realm, key.group(1), secret.group(1), admin)


class PartnerSiteProcess:
    """examples/partner_site running on its own loopback address."""

    def __init__(self, host: str, provider: str, secret: str, users: list[str]) -> None:
        self.host = host
        self.port = free_port()
        self.url = f"http://{host}:{self.port}/"
        self.log_path: Path | None = None
        self.args = [
            sys.executable,
            "-m",
            "examples.partner_site",
            "--host",
            host,
            "--port",
            str(self.port),
            "--provider",
            provider,
            "--webhook-secret",
            secret,
        ]
        for user in users:
            self.args += ["--user", user]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, workdir: Path) -> PartnerSiteProcess:
        self.log_path = workdir / f"partner-{self.host}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url, timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("example partner site did not start:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def events(self) -> list[dict[str, object]]:
        result: list[dict[str, object]] = requests.get(
            self.url + "webhooks/events", timeout=5
        ).json()
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Partner:
    site: RegisteredSite
    process: PartnerSiteProcess


@pytest.fixture(scope="module")
def partner(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Partner]:
    """The example partner site on 127.0.0.2, registered at the node, with user alice."""
    host = "127.0.0.2"
    port = free_port()
    realm = f"http://{host}:{port}/"
    process = PartnerSiteProcess(host, node.url, "", ["alice:alice-password:alice@example.com"])
    process.port = port
    process.url = realm
    process.args[process.args.index("--port") + 1] = str(port)

    def publish(token: str, webhook_secret: str) -> None:
        # The partner puts the console's token on its host, then asks to verify.
        process.args[process.args.index("--webhook-secret") + 1] = webhook_secret
        process.args += ["--verification-token", token]
        process.start(tmp_path_factory.mktemp("partner-site"))

    try:
        site = register_site(node, realm, webhook_url=realm + "webhooks/clickpass", publish=publish)
    except BaseException:
        process.stop()
        raise
    try:
        yield Partner(site, process)
    finally:
        process.stop()

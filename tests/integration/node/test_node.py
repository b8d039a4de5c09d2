"""
The node as an operator and a person meet it: started by twistd, driven by
clickpass-ctl, used through its pages.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.browser import Browser, csrf_token
from tests.support.netns import NsNode, loopback_only
from tests.support.node import METRICS_AUTH, NodeProcess, free_port, run_twistd, write_config

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest.mark.root
def test_embedded_default_starts_with_no_configuration(tmp_path: Path) -> None:
    """
    With no --config, a node creates ./clickpass-data/ (private), serves on
    127.0.0.1:8080, logs that URL and answers clickpass-ctl status on
    ./clickpass-data/control.sock. It runs in a namespace of its own, where
    8080 is free whatever the machine runs.
    """
    with loopback_only("cpd8080-") as namespace:
        node = NsNode(tmp_path, None)
        node.namespace = namespace
        node.start()
        check_default_node(tmp_path, node, namespace)


def check_default_node(tmp_path: Path, node: NsNode, namespace: str) -> None:
    """What the default node shows: its data, its status, its health on 127.0.0.1:8080."""
    try:
        assert "ready: serving http://127.0.0.1:8080/" in node.log()
        data = tmp_path / "clickpass-data"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert (data / "clickpass.sqlite3").exists()
        assert stat.S_IMODE((data / "secret.key").stat().st_mode) == 0o600
        sock = data / "control.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        result = node.ctl("--json", "status")
        status = json.loads(result.stdout)
        assert status["database"]["backend"] == "sqlite"
        assert status["database"]["answers"] is True
        assert status["public_url"] == "http://127.0.0.1:8080/"
        assert status["listeners"] == ["tcp:8080:interface=127.0.0.1"]
        text = node.ctl("status").stdout
        assert "database:  sqlite (answers)" in text
        health = subprocess.run(
            ["ip", "netns", "exec", namespace, "curl", "-sS", "http://127.0.0.1:8080/healthz"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.stdout == "ok\n", health.stderr
    finally:
        # twistd re-raises SIGTERM on its way out after a clean shutdown.
        assert node.stop() == -signal.SIGTERM
        assert "Server Shut Down." in node.log()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("[web]\nlisen = []\n", "[web] lisen: unknown key"),
        ('[database]\nport = "3306"\n', "[database] port: expected an integer"),
        ("[nope]\n", "[nope]: unknown section"),
        ("[web\n", "not valid TOML"),
        (
            '[secrets]\nsecret_file = "/nonexistent/secret.key"\n',
            "[secrets] secret_file: file /nonexistent/secret.key not found",
        ),
        (
            '[web]\nlisten = ["ssl:8443"]\ntls_certificate = "/nonexistent.pem"\n'
            'tls_private_key = "/nonexistent.key"\n',
            "[web] tls_certificate: file /nonexistent.pem not found",
        ),
        ('[database]\nbackend = "postgres"\n', '[database] backend: must be "sqlite" or "mysql"'),
    ],
)
def test_bad_configuration_is_one_line(tmp_path: Path, config: str, expected: str) -> None:
    """
    A configuration with an unknown key or section, a wrong type, bad TOML
    or a file that cannot be read stops twistd with exit status 1 and one
    line naming the key or file: no traceback, no usage dump.
    """
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = run_twistd(tmp_path, path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_configuration_file_is_one_line(tmp_path: Path) -> None:
    """A --config naming no file is one line and exit status 1."""
    result = run_twistd(tmp_path, tmp_path / "missing.toml")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("missing.toml: configuration file not found")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_different_secret_is_refused(tmp_path: Path) -> None:
    """
    A node whose master secret is not the one its database was created with
    refuses to start (its identifiers would all change), exiting non-zero
    with one log line saying why.
    """
    port = free_port()
    config = write_config(tmp_path, port)
    node = NodeProcess(tmp_path, config, port=port).start()
    assert node.stop() == -signal.SIGTERM
    (tmp_path / "data" / "secret.key").write_text("ab" * 32 + "\n")
    again = subprocess.run(
        NodeProcess(tmp_path, config).command(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = again.stdout + again.stderr
    assert again.returncode == 1
    assert "not the one this database was created with" in out
    assert "Traceback" not in out


def test_ctl_user_add_and_disable(shared_node: NodeProcess) -> None:
    """
    clickpass-ctl user add creates an account from a password on stdin, and
    the person can sign in; user disable ends their sessions and refuses
    their next sign-in with the generic message.
    """
    node = shared_node
    node.ctl("user", "add", "ops@example.com", "--password-stdin", input=PASSWORD + "\n")
    browser = Browser(node.url)
    response = browser.sign_in("ops@example.com", PASSWORD)
    assert response.url.endswith("/account")
    assert "ops@example.com" in response.text

    duplicate = node.ctl(
        "user", "add", "OPS@example.com", "--password-stdin", input=PASSWORD + "\n", check=False
    )
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr

    node.ctl("user", "disable", "ops@example.com")
    assert browser.get("/account").url.startswith(node.url + "signin")
    refused = Browser(node.url).sign_in("ops@example.com", PASSWORD)
    assert refused.status_code == 401
    assert "do not match an account" in refused.text

    missing = node.ctl("user", "disable", "nobody@example.com", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "clickpass-ctl: no account with email nobody@example.com"


def test_the_node_runs_on_the_clickpass_reactor(shared_node: NodeProcess) -> None:
    """twistd logs the reactor it runs: the one makeService installs."""
    node = shared_node
    assert "reactor class: clickpass.epoll_reactor.LeanEpollReactor" in node.log()


def test_ctl_without_a_node_says_so(tmp_path: Path) -> None:
    """clickpass-ctl against a node that is not running prints one line and exits 1."""
    config = write_config(tmp_path, free_port())
    result = NodeProcess(tmp_path, config).ctl("status", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("clickpass-ctl: no node is listening on")
    assert len(result.stderr.strip().splitlines()) == 1


def test_control_port_survives_garbage(shared_node: NodeProcess) -> None:
    """
    Malformed requests on the control socket each get one error line and the
    node goes on answering.
    """
    node = shared_node
    path = node.workdir / "data" / "control.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b'not json\n[1,2]\n{"command": "launch-missiles"}\n')
        buf = b""
        while buf.count(b"\n") < 3:
            chunk = s.recv(4096)
            assert chunk, buf
            buf += chunk
    answers = [json.loads(line) for line in buf.splitlines()]
    assert [a["ok"] for a in answers] == [False, False, False]
    assert "not a JSON object" in answers[0]["error"]
    assert "unknown command 'launch-missiles'" in answers[2]["error"]
    assert json.loads(node.ctl("--json", "status").stdout)["database"]["answers"] is True


def test_sign_up_sign_out_sign_in(shared_node: NodeProcess) -> None:
    """
    A person signs up and confirms the mailed link (landing on their
    account page, signed in with an HttpOnly SameSite=Lax session cookie),
    signs out, and signs in again with a new session token.
    """
    node = shared_node
    browser = Browser(node.url)
    response = browser.sign_up("ada@example.com", PASSWORD)
    assert response.status_code == 200
    assert response.url.startswith(node.url + "account")
    assert "ada@example.com" in response.text
    first_token = browser.session.cookies.get("cp_session")
    assert first_token
    signin = Browser(node.url).submit(
        "/signin",
        "/signin",
        {"email": "ada@example.com", "password": PASSWORD},
        allow_redirects=False,
    )
    set_cookie = signin.headers["set-cookie"]
    assert "cp_session=" in set_cookie
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie
    assert "Secure" not in set_cookie  # plain HTTP here

    page = browser.get("/account")
    out = browser.post("/signout", {"csrf_token": csrf_token(page.text)})
    assert out.url == node.url + "signed-out" and "You are signed out" in out.text
    assert browser.get("/account").url.startswith(node.url + "signin?next=")

    back = browser.sign_in("ADA@example.com", PASSWORD, next_url="/account")
    assert back.url == node.url + "account"
    assert browser.session.cookies.get("cp_session") not in (None, first_token)


def test_session_token_rotates_at_sign_in(shared_node: NodeProcess) -> None:
    """A session token a browser held before signing in is ended at sign-in."""
    node = shared_node
    node.ctl("user", "add", "rot@example.com", "--password-stdin", input=PASSWORD + "\n")
    browser = Browser(node.url)
    browser.sign_in("rot@example.com", PASSWORD)
    old = browser.session.cookies.get("cp_session")
    browser.sign_in("rot@example.com", PASSWORD)
    new = browser.session.cookies.get("cp_session")
    assert old and new and old != new
    stale = Browser(node.url)
    stale.session.cookies.set("cp_session", old)
    assert stale.get("/account").url.startswith(node.url + "signin")


def test_forms_without_csrf_token_are_refused(shared_node: NodeProcess) -> None:
    """A form post without a valid CSRF token is refused with 403 and changes nothing."""
    node = shared_node
    browser = Browser(node.url)
    browser.get("/signup")
    response = browser.post(
        "/signup",
        {"email": "x@example.com", "password": PASSWORD, "password_again": PASSWORD},
    )
    assert response.status_code == 403
    assert "expired or came from another site" in response.text
    forged = browser.post(
        "/signup",
        {
            "email": "x@example.com",
            "password": PASSWORD,
            "password_again": PASSWORD,
            "csrf_token": "0" * 64,
        },
    )
    assert forged.status_code == 403
    assert browser.sign_in("x@example.com", PASSWORD).status_code == 401


def test_bad_sign_up_input_is_explained(shared_node: NodeProcess) -> None:
    """Sign-up explains a bad email, a short password and mismatched passwords in one line."""
    node = shared_node
    browser = Browser(node.url)
    bad_email = browser.sign_up("not-an-email", PASSWORD)
    assert bad_email.status_code == 400
    assert "does not look like an email address" in bad_email.text
    short = browser.sign_up("short@example.com", "short")
    assert short.status_code == 400
    assert "at least 10 characters" in short.text
    mismatch = browser.submit(
        "/signup",
        "/signup",
        {"email": "m@example.com", "password": PASSWORD, "password_again": PASSWORD + "x"},
    )
    assert mismatch.status_code == 400
    assert "differ" in mismatch.text


def signins(node: NodeProcess, outcome: str) -> float:
    """The node's clickpass_signins_total for C{outcome} on /metrics (0 before the first)."""
    metrics = Browser(node.url).get("/metrics", headers=METRICS_AUTH).text
    series = f'clickpass_signins_total{{outcome="{outcome}"}} '
    lines = metrics.splitlines()
    values = [float(line[len(series) :]) for line in lines if line.startswith(series)]
    assert len(values) <= 1, values
    return values[0] if values else 0.0


def test_failed_sign_ins_are_throttled_per_account(shared_node: NodeProcess) -> None:
    """
    After five failed sign-ins for one account, even the right password is
    refused with 429 and Retry-After, from any client, until the window
    passes; bad credentials before that get the one generic message.
    """
    node = shared_node
    email = f"t-{secrets.token_hex(4)}@example.com"
    node.ctl("user", "add", email, "--password-stdin", input=PASSWORD + "\n")
    # The shared node counts other tests' sign-ins too (none run meanwhile):
    # what this test adds is the difference.
    refused, throttled = signins(node, "refused"), signins(node, "throttled")
    for _ in range(5):
        wrong = Browser(node.url).sign_in(email, "wrong password!")
        assert wrong.status_code == 401
        assert "That email and password do not match an account." in wrong.text
    right = Browser(node.url).sign_in(email, PASSWORD)
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) > 0
    assert "Too many failed sign-in attempts" in right.text
    # /metrics adds up every worker's sign-in counts.
    assert signins(node, "refused") - refused == 5
    assert signins(node, "throttled") - throttled == 1


def test_open_redirects_are_refused(shared_node: NodeProcess) -> None:
    """After sign-in, a `next` pointing at another site lands on the account page instead."""
    node = shared_node
    browser = Browser(node.url)
    response = browser.sign_up("nx@example.com", PASSWORD, next_url="//evil.example/")
    assert response.url == node.url + "account"


def test_unknown_pages_and_methods(shared_node: NodeProcess) -> None:
    """Unknown paths get a 404 page and wrong methods a 405 with Allow."""
    node = shared_node
    browser = Browser(node.url)
    assert browser.get("/no/such/page").status_code == 404
    response = browser.session.delete(node.url + "signin", timeout=10)
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


def test_answers_do_not_name_the_server_software(shared_node: NodeProcess) -> None:
    """Pages, errors and probes say Server: Clickpass, with no Twisted version to fingerprint."""
    node = shared_node
    browser = Browser(node.url)
    for path in ("/", "/signin", "/no/such/page", "/healthz"):
        assert browser.get(path).headers["server"] == "Clickpass", path


def test_status_over_tcp_needs_the_token(tmp_path: Path) -> None:
    """
    The optional loopback TCP control port answers only requests carrying
    the token from [control] token_file. A wrong token gets one answer and
    the connection is closed: 300 guesses sent on one connection get one
    answer and one log line, not 300.
    """
    port, ctl_port = free_port(), free_port()
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32) + "\n")
    config = write_config(
        tmp_path,
        port,
        f'[control]\ntcp = "tcp:{ctl_port}:interface=127.0.0.1"\ntoken_file = "{token}"\n',
    )
    node = NodeProcess(tmp_path, config, port=port).start()
    try:
        ok = node.ctl("--tcp", f"127.0.0.1:{ctl_port}", "--json", "status")
        assert json.loads(ok.stdout)["database"]["answers"] is True
        with socket.create_connection(("127.0.0.1", ctl_port), timeout=10) as s:
            s.sendall(b'{"command": "status", "token": "guess"}\n' * 300)
            received = b""
            while chunk := s.recv(65536):
                received += chunk
        answers = [json.loads(line) for line in received.splitlines()]
        assert answers == [{"ok": False, "error": "not authorised: bad or missing token"}]
        assert node.log().count("refused a request with a bad token") == 1
        again = node.ctl("--tcp", f"127.0.0.1:{ctl_port}", "--json", "status")
        assert json.loads(again.stdout)["database"]["answers"] is True
    finally:
        node.stop()


@pytest.mark.parametrize(
    ("control", "token", "expected"),
    [
        (
            "tcp:{port}:interface=127.0.0.1:interface=0.0.0.0",
            "0123456789abcdef" * 4,
            "[control] tcp: the option 'interface' is given more than once",
        ),
        (
            "tcp:{port}:0.0.0.0",
            "0123456789abcdef" * 4,
            "[control] tcp: give the port once and every other option as name=value",
        ),
        ("tcp:{port}:interface=127.0.0.1", "x", "[control] token_file: the token in"),
    ],
)
def test_an_unsafe_tcp_control_port_is_refused(
    tmp_path: Path, control: str, token: str, expected: str
) -> None:
    """
    A node whose TCP control port would listen beyond loopback (an
    interface given twice, or positionally) or take a token shorter than 32
    bytes refuses to start with one line naming the key, and listens on
    nothing.
    """
    ctl_port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    config = write_config(
        tmp_path,
        free_port(),
        f'[control]\ntcp = "{control.format(port=ctl_port)}"\ntoken_file = "{token_file}"\n',
    )
    result = run_twistd(tmp_path, config)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", ctl_port)) != 0


def test_db_migrate_offline(tmp_path: Path) -> None:
    """
    clickpass-ctl db migrate brings a new database to the current schema
    without a node, and creates it readable by its owner only (under umask 022).
    """
    config = write_config(tmp_path, free_port())
    node = NodeProcess(tmp_path, config)
    old_umask = os.umask(0o022)
    try:
        first = node.ctl("db", "migrate").stdout
    finally:
        os.umask(old_umask)
    assert "applied migrations 1" in first
    again = node.ctl("db", "migrate").stdout
    assert "schema already at version" in again
    # Created by clickpass-ctl, under whatever umask it ran with: private.
    database = tmp_path / "data" / "clickpass.sqlite3"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600

"""
Fixtures for upstream sign-in tests: a test CA, the real npm package
oidc-provider on 127.0.0.1 over TLS, and a Clickpass node that trusts it.

oidc-provider is installed into tests/integration/upstream/oidc/node_modules
with `npm ci` the first time it is needed (scripts/test can run the same
command up front).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.node import NodeProcess, free_port, write_config
from tests.support.tlsca import TestCA, make_ca

OIDC_DIR = Path(__file__).parent / "oidc"
CLIENT_ID = "clickpass-test"
CLIENT_SECRET = "test-client-secret-0123456789"


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA and a 127.0.0.1 server certificate it signed."""
    return make_ca(tmp_path_factory.mktemp("ca"))


def install_oidc_provider() -> None:
    """
    Install oidc-provider from package-lock.json unless it is there already;
    under a lock, so that parallel test workers install it once.
    """
    with open(OIDC_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _install_oidc_provider()


def _install_oidc_provider() -> None:
    if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to install oidc-provider (apt-get install npm)", pytrace=False)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=OIDC_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci for oidc-provider failed:\n{result.stderr[-2000:]}", pytrace=False)


@dataclass
class OIDCProvider:
    issuer: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class UpstreamSetup:
    node: NodeProcess
    provider: OIDCProvider
    ca: TestCA
    data_dir: Path

    @property
    def database(self) -> Path:
        return self.data_dir / "clickpass.sqlite3"


def start_oidc_provider(
    directory: Path, ca: TestCA, redirect_uri: str, ignore_reauth: bool = False
) -> OIDCProvider:
    """
    oidc-provider on a free port; with C{ignore_reauth}, one that ignores
    prompt=login and max_age (a provider that does not make a person with
    a session there sign in again).
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to run oidc-provider (apt-get install nodejs)", pytrace=False)
    install_oidc_provider()
    port = free_port()
    log_path = directory / f"oidc-provider-{port}.log"
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_CERT": str(ca.cert_pem),
        "OIDC_KEY": str(ca.key_pem),
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URI": redirect_uri,
        "OIDC_IGNORE_REAUTH": "1" if ignore_reauth else "0",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [node, str(OIDC_DIR / "provider.mjs")],
            cwd=OIDC_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    provider = OIDCProvider(f"https://127.0.0.1:{port}", port, log_path, process)
    deadline = time.monotonic() + 30
    while "oidc-provider ready" not in provider.log():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            pytest.fail(f"oidc-provider did not start:\n{provider.log()[-3000:]}", pytrace=False)
        time.sleep(0.05)
    return provider


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def upstream_setup(tmp_path: Path, test_ca: TestCA) -> Iterator[UpstreamSetup]:
    """oidc-provider on TLS, and a Clickpass node configured to sign in through it."""
    port = free_port()
    provider = start_oidc_provider(
        tmp_path, test_ca, f"http://127.0.0.1:{port}/upstream/testop/callback"
    )
    node: NodeProcess | None = None
    try:
        secret_file = tmp_path / "client-secret"
        secret_file.write_text(CLIENT_SECRET + "\n")
        config = write_config(
            tmp_path,
            port,
            f"""
[openid]
# The relying party of the end-to-end test lives on loopback.
allow_private_rp_discovery = true

[upstream]
ca_bundle = "{test_ca.ca_pem}"
timeout = 5.0

[[upstream.provider]]
name = "testop"
kind = "oidc"
display_name = "Test OP"
issuer = "{provider.issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret_file}"
""",
        )
        node = NodeProcess(tmp_path, config, port=port)
        node.start()
        yield UpstreamSetup(node, provider, test_ca, tmp_path / "data")
    finally:
        if node is not None:
            node.stop()
        stop_process(provider.process)

"""
Fixtures for the backup tests: a local S3-compatible server (moto's server
mode on a free loopback port, one per test session) and node
configurations whose [backup] section points at a fresh bucket in it.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.node import free_port


@dataclass
class S3Server:
    """moto in server mode on loopback; anything works as credentials."""

    endpoint: str
    process: subprocess.Popen[bytes]

    def client(self) -> object:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def new_bucket(self) -> str:
        name = f"backups-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server on a free 127.0.0.1 port for the whole run, killed afterwards."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = S3Server(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"moto server exited: {log.read_text()[-2000:]}", pytrace=False)
            try:
                urllib.request.urlopen(server.endpoint + "/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto server did not answer within 30s", pytrace=False)
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def backup_section(directory: Path, s3: S3Server, bucket: str, **extra: object) -> str:
    """A [backup] section (and its key and credential files) for a node in C{directory}."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "backup.key"
    key.write_text(secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    credentials = directory / "s3-secret"
    credentials.write_text("test\n")
    lines = [
        "[backup]",
        "enabled = true",
        f'key_file = "{key}"',
        f'endpoint = "{s3.endpoint}"',
        f'bucket = "{bucket}"',
        'access_key_id = "test"',
        f'secret_access_key_file = "{credentials}"',
    ]
    for name, value in extra.items():
        rendered = (
            ("true" if value else "false")
            if isinstance(value, bool)
            else (f'"{value}"' if isinstance(value, str) else str(value))
        )
        lines.append(f"{name} = {rendered}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket."""
    return s3_server.new_bucket()


# The loopback alert sinks, for the tests of backup alerts.
from tests.integration.monitor.sinks import smtp_sink, webhook_receiver  # noqa: E402

__all__ = ["S3Server", "backup_section", "smtp_sink", "webhook_receiver"]

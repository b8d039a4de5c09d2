"""
scripts/monitor against a real node: quiet while the site is up (the
synthetic OpenID sign-in succeeding every round), an alert by webhook and
email once the node has been down for K rounds, and a recovery when it is
back.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.monitor.sinks import SMTPSink, WebhookReceiver, alerts_section
from tests.support.node import NodeProcess, free_port, write_config
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "prober-password-1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    port = free_port()
    (tmp_path / "node").mkdir()
    process = NodeProcess(tmp_path / "node", write_config(tmp_path / "node", port), port=port)
    try:
        process.start(timeout=60)
        process.ctl("user", "add", "prober@example.com", "--password-stdin", input=PASSWORD + "\n")
        yield process
    finally:
        process.stop()


@pytest.fixture
def prober(
    tmp_path: Path, node: NodeProcess, smtp_sink: SMTPSink, webhook_receiver: WebhookReceiver
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    config = tmp_path / "prober.toml"
    config.write_text(
        '[node]\nname = "prober"\n'
        f'data_dir = "{tmp_path / "prober-data"}"\n\n'
        + alerts_section(tmp_path, smtp_sink, webhook_receiver)
    )
    (tmp_path / "prober.pw").write_text(PASSWORD + "\n")
    log = tmp_path / "prober.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clickpass.monitor.prober",
                "--url",
                node.url,
                "--config",
                str(config),
                "--interval",
                "0.3",
                "--failures",
                "3",
                "--slow",
                "5",
                "--timeout",
                "3",
                "--openid-email",
                "prober@example.com",
                "--openid-password-file",
                str(tmp_path / "prober.pw"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        yield process, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_for_lines(log: Path, text: str, count: int, timeout: float = 30) -> None:
    wait_for(lambda: log.read_text().count(text) >= count, timeout, f"{count}x {text!r} logged")


def test_prober_alerts_when_node_stops_and_recovers(
    node: NodeProcess,
    prober: tuple[subprocess.Popen[str], Path],
    smtp_sink: SMTPSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    """Quiet while up; probe.down after 3 failed rounds; recovery when the node is back."""
    process, log = prober
    wait_for_lines(log, "ok in", 4)
    assert "FAILED" not in log.read_text()
    assert webhook_receiver.payloads() == [] and smtp_sink.messages() == []

    node.stop()
    webhook_receiver.received.wait_for(lambda items: len(items) >= 1)
    assert log.read_text().count("FAILED") >= 3
    assert webhook_receiver.events() == [("firing", "probe.down")]
    assert all(item["valid"] for item in webhook_receiver.received.snapshot())
    (mail,) = smtp_sink.received.wait_for(lambda items: len(items) >= 1)
    assert "FIRING probe.down" in mail[2]["subject"]

    node.start(timeout=60)
    webhook_receiver.received.wait_for(lambda items: len(items) >= 2)
    assert webhook_receiver.events() == [("firing", "probe.down"), ("resolved", "probe.down")]
    smtp_sink.received.wait_for(lambda items: len(items) >= 2)
    assert "RESOLVED probe.down" in smtp_sink.messages()[-1]["subject"]
    assert process.poll() is None

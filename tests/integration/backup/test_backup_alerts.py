"""
Backup alerts from a real node: a failing backup and a stale one each
raise an alert by signed webhook and by email, recoveries are announced,
and nothing is sent while backups succeed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backup.conftest import S3Server, backup_section
from tests.integration.monitor.sinks import SMTPSink, WebhookReceiver, alerts_section
from tests.support.node import NodeProcess, free_port, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def node(
    tmp_path: Path,
    s3_server: S3Server,
    bucket: str,
    smtp_sink: SMTPSink,
    webhook_receiver: WebhookReceiver,
) -> Iterator[NodeProcess]:
    port = free_port()
    config = write_config(
        tmp_path,
        port,
        backup_section(tmp_path / "keys", s3_server, bucket, check_interval=0.2, max_age=3600)
        + alerts_section(tmp_path, smtp_sink, webhook_receiver),
    )
    process = NodeProcess(tmp_path, config, port=port)
    try:
        process.start(timeout=60)
        yield process
    finally:
        process.stop()


def drop_bucket(s3: S3Server, bucket: str) -> None:
    client: Any = s3.client()
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def test_backup_failure_and_staleness_alert_and_recover(
    tmp_path: Path,
    node: NodeProcess,
    s3_server: S3Server,
    bucket: str,
    smtp_sink: SMTPSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    """The whole life of the two backup alerts, against a real node."""
    # All is well: a backup succeeds, and nothing is sent.
    result = node.ctl("--json", "backup", "now")
    assert json.loads(result.stdout)["backup"].startswith("node1/")
    time.sleep(1.5)  # several watch rounds and gathering windows pass
    assert webhook_receiver.payloads() == [] and smtp_sink.messages() == []

    # The bucket disappears: the next backup fails and the alert fires, once.
    drop_bucket(s3_server, bucket)
    failed = node.ctl("backup", "now", check=False)
    assert failed.returncode == 1 and "does not exist" in failed.stderr
    node.ctl("backup", "now", check=False)
    webhook_receiver.received.wait_for(lambda items: len(items) >= 1)
    assert webhook_receiver.events() == [("firing", "backup.failed")]
    assert all(item["valid"] for item in webhook_receiver.received.snapshot())
    (message,) = smtp_sink.received.wait_for(lambda items: len(items) >= 1)
    assert "FIRING backup.failed" in message[2]["subject"]
    assert message[1] == ["<oncall@example.test>"]
    assert "does not exist" in message[2].get_content()
    listed = json.loads(node.ctl("--json", "alerts", "list").stdout)
    assert [a["key"] for a in listed] == ["backup.failed"] and listed[0]["count"] >= 2

    # The bucket is back: the next backup succeeds and the recovery is announced.
    s3_server.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    node.ctl("backup", "now")
    webhook_receiver.received.wait_for(lambda items: len(items) >= 2)
    assert webhook_receiver.events()[-1] == ("resolved", "backup.failed")
    smtp_sink.received.wait_for(lambda items: len(items) >= 2)
    assert "RESOLVED backup.failed" in smtp_sink.messages()[-1]["subject"]

    # Cron's backups stopped two days ago (as its outcome file records): stale.
    status_file = tmp_path / "data" / "backup-status.json"
    last = json.loads(status_file.read_text())["last_backup"]
    status_file.write_text(
        json.dumps({"last_success": time.time() - 2 * 86400, "last_backup": last})
    )
    webhook_receiver.received.wait_for(lambda items: len(items) >= 3)
    assert webhook_receiver.events()[-1] == ("firing", "backup.stale")
    assert "48.0 hours" in webhook_receiver.payloads()[-1]["events"][0]["summary"]

    # A fresh backup ends it.
    node.ctl("backup", "now")
    webhook_receiver.received.wait_for(lambda items: len(items) >= 4)
    assert webhook_receiver.events()[-1] == ("resolved", "backup.stale")
    assert len(webhook_receiver.payloads()) == 4
    assert len(smtp_sink.received.wait_for(lambda items: len(items) >= 4)) == 4

"""
The database alerts and /metrics of two real database nodes (C{twistd
clickpass} with C{[dbagent]} and C{[alerts]}, each in its own network
namespace, as in L{tests.integration.dbagent.test_nodes}), with their real
causes on real MariaDB servers: the replica's server killed makes the
primary degrade once its group agrees (semisync.degraded, by webhook and
by email, then its recovery when the replica is back); an old primary
returning with an errant transaction is quarantined (db.quarantined). While
all is well, neither fires.

The SMTP sink and the webhook receiver listen inside db1's namespace on its
eth0 address, which both nodes reach.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dbagent.test_nodes import ADDRESSES, DbPair, node_config
from tests.integration.monitor.promtext import Page, parse
from tests.integration.monitor.sinks import (
    SMTPSink,
    WebhookReceiver,
    alerts_section,
    sinks_in_netns,
)
from tests.support.mariadb import MariaDBUnavailable
from tests.support.netns import NsNode
from tests.support.node import METRICS_TOKEN, free_port

pytestmark = [pytest.mark.integration, pytest.mark.mariadb, pytest.mark.root]

DB_KEYS = ("semisync.degraded", "db.quarantined")


class AlertingDbPair(DbPair):
    """The two database nodes of test_nodes, sending their alerts to the sinks."""

    smtp: SMTPSink
    webhook: WebhookReceiver
    seen = (0, 0)

    def node(self, host: str) -> NsNode:
        port = free_port()
        directory = self.base / host
        config = node_config(directory, host, self.pair, port)
        text = config.read_text()
        # The failover tests' 0.25 s ping limit takes a loaded shared machine for a dead
        # server (seen: a false failover in the quiet window); these tests are not about
        # detection speed, so a slow answer is not a failure here.
        for fast, patient in (
            ("check_interval = 0.05", "check_interval = 0.1"),
            ("check_timeout = 0.25", "check_timeout = 1.5"),
        ):
            assert fast in text, f"node_config changed: no {fast!r}"
            text = text.replace(fast, patient)
        config.write_text(text + "\n" + alerts_section(directory, self.smtp, self.webhook))
        node = NsNode(directory, config, port=port)
        node.namespace = self.ns.names[host]
        self.nodes[host] = node
        return node

    def ns_exec(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns.names[host]]

    def metrics(self, host: str) -> Page:
        node = self.nodes[host]
        done = subprocess.run(
            [
                *self.ns_exec(host),
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-H",
                f"Authorization: Bearer {METRICS_TOKEN}",
                f"{node.url}metrics",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"/metrics of {host}: {done.stderr.strip()}"
        return parse(done.stdout)

    def firing(self, host: str) -> set[str]:
        result = self.nodes[host].ctl("--json", "alerts", "list")
        return {a["key"] for a in json.loads(result.stdout)}

    def mark(self) -> None:
        """Look only at what arrives from now on (a bootstrap may alert, see steady)."""
        self.seen = (len(self.webhook.payloads()), len(self.smtp.messages()))

    def payloads(self) -> list[dict[str, Any]]:
        return self.webhook.payloads()[self.seen[0] :]

    def events(self, key: str) -> list[tuple[str, str]]:
        """(node, status) of every webhook event for C{key} since the mark, in order."""
        return [
            (p["node"], e["status"])
            for p in self.payloads()
            for e in p["events"]
            if e["key"] == key
        ]

    def mails(self, key: str) -> list[EmailMessage]:
        return [m for m in self.smtp.messages()[self.seen[1] :] if key in m.get_content()]

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not within {timeout}s: {what}; roles "
                    f"{self.status('db1').get('role')}/{self.status('db2').get('role')}; "
                    f"webhook events {[(p['node'], p['events']) for p in self.webhook.payloads()]}"
                )
            time.sleep(0.1)


@pytest.fixture
def dbpair(tmp_path: Path) -> Iterator[AlertingDbPair]:
    p = AlertingDbPair(tmp_path)
    try:
        p.ns.create()
        with sinks_in_netns(p.ns.names["db1"], ADDRESSES["db1"]) as (smtp, webhook):
            p.smtp, p.webhook = smtp, webhook
            try:
                try:
                    p.pair.start()
                except MariaDBUnavailable as e:
                    pytest.fail(str(e), pytrace=False)
                yield p
            finally:
                p.stop()  # the nodes stop before the sinks close
    finally:
        p.ns.delete()


def steady(p: AlertingDbPair) -> None:
    """
    Both nodes up: db1 primary with semi-sync acknowledged by db2, its replica.
    db1 starts first and is primary alone until db2 replicates, which is
    degraded and may be announced (firing, then resolved); only what comes
    after this is looked at.
    """
    p.node("db1").start(timeout=60)
    p.node("db2").start(timeout=60)
    p.wait_role("db2", ("replica",), 40)
    p.wait_role("db1", ("primary",), 20)
    p.wait(
        "every bootstrap alert resolved",
        lambda: not (p.firing("db1") | p.firing("db2")) & set(DB_KEYS),
        20,
    )
    time.sleep(0.5)  # past group_wait: a bootstrap recovery is delivered before the mark
    p.mark()


def assert_quiet(p: AlertingDbPair, seconds: float) -> None:
    """For C{seconds} of a healthy pair, no alert fires or is delivered."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for host in ("db1", "db2"):
            assert not p.firing(host), (host, p.firing(host))
        time.sleep(0.5)
    assert p.payloads() == [] and p.smtp.messages()[p.seen[1] :] == []


def test_replica_killed_degrades_the_primary_alerts_then_recovers(dbpair: AlertingDbPair) -> None:
    """Healthy pair: nothing fires for several seconds, and /metrics shows db1 primary with
    one semi-sync client and db2 a running replica with no lag. db2's server killed: its
    group goes FAULT, db1 goes on alone (DEGRADED) and semisync.degraded arrives signed by
    webhook and by email; db2's server back: db1 is lossless again and the recovery is
    announced both ways."""
    p = dbpair
    steady(p)
    p.wait(
        "db2 to acknowledge semi-sync on db1's /metrics",
        lambda: p.metrics("db1").get("clickpass_db_semisync_master_clients") == 1,
        20,
    )
    primary, replica = p.metrics("db1"), p.metrics("db2")
    assert primary.get("clickpass_db_role", role="primary") == 1
    assert primary.get("clickpass_db_writable") == 1
    assert primary.get("clickpass_db_semisync_master_status") == 1
    assert primary.get("clickpass_db_semisync_degraded") == 0
    assert primary.get("clickpass_db_replication_lag_seconds") is None  # not a replica
    assert primary.get("clickpass_cluster_state", group="db", state="MASTER") == 1
    assert replica.get("clickpass_db_role", role="replica") == 1
    assert replica.get("clickpass_db_replication_running") == 1
    assert replica.get("clickpass_db_replication_lag_seconds") == 0
    assert replica.get("clickpass_db_replication_lag_transactions") == 0
    assert replica.get("clickpass_db_semisync_slave_status") == 1
    assert replica.get("clickpass_cluster_state", group="db", state="BACKUP") == 1
    assert_quiet(p, 4.0)

    p.pair["db2"].kill()
    p.wait("db1 to go DEGRADED", lambda: p.status("db1").get("role") == "degraded", 30)
    p.wait(
        "semisync.degraded by webhook",
        lambda: ("db1", "firing") in p.events("semisync.degraded"),
        20,
    )
    p.wait("semisync.degraded by email", lambda: bool(p.mails("semisync.degraded")), 20)
    assert all(item["valid"] for item in p.webhook.received.snapshot())
    (mail,) = p.mails("semisync.degraded")
    assert "FIRING semisync.degraded" in mail["Subject"] and "db1" in mail["Subject"]
    assert mail["To"] == "oncall@example.test"
    assert "semisync.degraded" in p.firing("db1")
    degraded = p.metrics("db1")
    assert degraded.get("clickpass_db_semisync_degraded") == 1
    assert degraded.get("clickpass_db_role", role="degraded") == 1
    assert degraded.get("clickpass_db_semisync_master_clients") == 0
    assert degraded.get("clickpass_alerts_firing", key="semisync.degraded") == 1

    p.pair["db2"].restart()
    p.wait_role("db2", ("replica",), 40)
    p.wait_role("db1", ("primary",), 30)
    p.wait(
        "the recovery by webhook",
        lambda: ("db1", "resolved") in p.events("semisync.degraded"),
        20,
    )
    p.wait(
        "the recovery by email",
        lambda: any(
            "RESOLVED semisync.degraded" in m["Subject"] for m in p.mails("semisync.degraded")
        ),
        20,
    )
    assert p.events("semisync.degraded") == [("db1", "firing"), ("db1", "resolved")]
    assert "semisync.degraded" not in p.firing("db1")
    assert p.metrics("db1").get("clickpass_db_semisync_degraded") == 0
    assert p.events("db.quarantined") == []


def test_errant_old_primary_is_quarantined_and_alerts(dbpair: AlertingDbPair) -> None:
    """db1 (primary) loses its server, db2 takes over; db1's node is stopped while its
    server returns with transactions db2 never had. db1's node started again finds them:
    quarantined, db.quarantined arrives by webhook and email naming db1, /metrics says so,
    and it stays firing (an operator decides). Before the fault nothing fired."""
    p = dbpair
    steady(p)
    p.pair["db1"].admin_execute("CREATE TABLE app.t (id INT PRIMARY KEY) ENGINE=InnoDB")
    p.pair["db1"].admin_execute("INSERT INTO app.t VALUES (1)")
    assert_quiet(p, 3.0)

    p.pair["db1"].kill()
    p.wait_role("db2", ("primary", "degraded"), 30)
    p.nodes["db1"].stop()
    p.pair["db1"].restart()
    # A restart after a crash truncates the binlog tail, so the first writes may reuse
    # GTIDs db2 holds with other contents; enough go past db2's position to be errant.
    for row in range(1000, 1006):
        p.pair["db1"].admin_execute(f"INSERT INTO app.t VALUES ({row})")
    p.nodes["db1"].start(timeout=60)
    p.wait_role("db1", ("quarantined",), 40)
    p.wait(
        "db.quarantined by webhook",
        lambda: ("db1", "firing") in p.events("db.quarantined"),
        20,
    )
    p.wait("db.quarantined by email", lambda: bool(p.mails("db.quarantined")), 20)
    assert all(item["valid"] for item in p.webhook.received.snapshot())
    (mail,) = p.mails("db.quarantined")
    assert "FIRING db.quarantined" in mail["Subject"] and "db1" in mail["Subject"]
    alert: dict[str, Any] = next(
        e
        for payload in p.webhook.payloads()
        for e in payload["events"]
        if e["key"] == "db.quarantined"
    )
    assert alert["details"]["node"] == "db1" and alert["details"]["problems"]
    page = p.metrics("db1")
    assert page.get("clickpass_db_quarantined") == 1
    assert page.get("clickpass_db_role", role="quarantined") == 1
    assert page.get("clickpass_db_writable") == 0
    assert p.metrics("db2").get("clickpass_db_quarantined") == 0
    time.sleep(2.0)
    assert "db.quarantined" in p.firing("db1")  # stays until an operator decides
    assert p.events("db.quarantined") == [("db1", "firing")]

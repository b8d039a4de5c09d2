"""
/metrics of two real nodes (C{twistd clickpass}) with the heartbeat in its
own process (the default), each node in a network namespace of its own
joined by a veth pair: the heartbeat group's state per state, its
transitions, the peer last heard and the packets; the master killed with
kill -9, the backup's page shows its takeover and the dead peer's growing
silence.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.monitor.promtext import Page, parse
from tests.support import waiting
from tests.support.netns import NsNode, VethPair
from tests.support.node import METRICS_TOKEN, free_port, metrics_token_file

pytestmark = [pytest.mark.integration, pytest.mark.root]

SUBNET = "10.98.9"
ADDRESSES = {"app1": f"{SUBNET}.1", "app2": f"{SUBNET}.2"}
VIP = f"{SUBNET}.100"


class AppPair(VethPair):
    """app1 and app2, each in its own namespace (unique names), joined by a veth pair."""

    def __init__(self, base: Path) -> None:
        super().__init__("cpm", ADDRESSES)
        self.base = base
        self.nodes: dict[str, NsNode] = {}

    def start(self, host: str) -> NsNode:
        peer = "app2" if host == "app1" else "app1"
        directory = self.base / host
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cluster.key").write_text("m" * 32 + "\n")
        port = free_port()
        config = directory / f"{host}.toml"
        config.write_text(
            f"""
[node]
name = "{host}"
data_dir = "{directory / "data"}"
public_url = "http://127.0.0.1:{port}/"

[web]
listen = ["tcp:{port}:interface=127.0.0.1"]
metrics_token_file = "{metrics_token_file(directory)}"

[workers]
count = 1

[cluster]
enabled = true
secret_file = "{directory / "cluster.key"}"
bind = "{ADDRESSES[host]}"

[[cluster.group]]
name = "app"
vip = "{VIP}/24"
interface = "eth0"
priority = {200 if host == "app1" else 100}
peers = ["{ADDRESSES[peer]}"]
advert_interval = 0.2
preempt = false
"""
        )
        node = NsNode(directory, config, port=port)
        node.namespace = self.names[host]
        self.nodes[host] = node
        node.start(timeout=60)
        return node

    def state(self, host: str) -> str:
        status = json.loads(self.nodes[host].ctl("--json", "cluster", "status").stdout)
        return str(status["groups"][0]["state"])

    def metrics(self, host: str) -> Page:
        node = self.nodes[host]
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.names[host],
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-H",
                f"Authorization: Bearer {METRICS_TOKEN}",
                node.url + "metrics",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"/metrics of {host}: {done.stderr.strip()}"
        return parse(done.stdout)

    def kill(self, host: str) -> None:
        """kill -9 the node and every process it started (heartbeat, workers)."""
        process = self.nodes[host].process
        assert process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll C{check} until it returns something true; fail with the last value."""
    return waiting.wait_for(check, timeout, what)


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[AppPair]:
    pair = AppPair(tmp_path)
    try:
        pair.create()
        yield pair
    finally:
        pair.stop()
        pair.delete()


BACKUP_TO_MASTER = {"group": "app", "from": "BACKUP", "to": "MASTER"}


def test_heartbeat_state_transitions_and_peers_on_metrics(apps: AppPair) -> None:
    """app1 MASTER and app2 BACKUP, as /metrics says (one state at 1 per group, INIT->BACKUP
    and, on app1 only, BACKUP->MASTER; each hears the other within a second; packets flow).
    app1 killed with kill -9: app2's page shows MASTER, one BACKUP->MASTER transition, one
    failover, and app1 silent for longer at each scrape."""
    apps.start("app1")
    wait_for("app1 MASTER", lambda: apps.state("app1") == "MASTER", 30)
    apps.start("app2")
    wait_for("app2 BACKUP", lambda: apps.state("app2") == "BACKUP", 30)

    def settled(host: str, state: str, peer: str) -> Page | None:
        # The page may show the heartbeat's status of up to a second ago.
        page = apps.metrics(host)
        heard = page.get("clickpass_cluster_peer_last_heard_seconds", group="app", peer=peer)
        shown = page.get("clickpass_cluster_state", group="app", state=state)
        return page if shown == 1 and heard is not None and heard < 1.0 else None

    master = wait_for(
        "app1's page: MASTER, app2 heard", lambda: settled("app1", "MASTER", "app2"), 20
    )
    backup = wait_for(
        "app2's page: BACKUP, app1 heard", lambda: settled("app2", "BACKUP", "app1"), 20
    )
    for page in (master, backup):
        assert page.get("clickpass_cluster_heartbeat_up") == 1
        assert page.get("clickpass_cluster_heartbeat_restarts_total") == 0
        assert page.types["clickpass_cluster_transitions_total"] == "counter"
        assert (
            page.get(
                "clickpass_cluster_transitions_total",
                group="app",
                **{"from": "INIT", "to": "BACKUP"},
            )
            == 1
        )
        assert sum(page.series("clickpass_cluster_state").values()) == 1
        received = page.get("clickpass_cluster_packets_received_total")
        sent = page.get("clickpass_cluster_packets_sent_total")
        assert received is not None and received > 0 and sent is not None and sent > 0
    assert master.get("clickpass_cluster_state", group="app", state="MASTER") == 1
    assert master.get("clickpass_cluster_transitions_total", **BACKUP_TO_MASTER) == 1
    assert master.get("clickpass_cluster_priority", group="app") == 200
    assert backup.get("clickpass_cluster_state", group="app", state="BACKUP") == 1
    assert backup.get("clickpass_cluster_state", group="app", state="MASTER") == 0
    assert backup.get("clickpass_cluster_transitions_total", **BACKUP_TO_MASTER) is None

    apps.kill("app1")
    wait_for("app2 MASTER", lambda: apps.state("app2") == "MASTER", 20)

    def took_over() -> Page | None:
        page = apps.metrics("app2")
        return page if page.get("clickpass_cluster_state", group="app", state="MASTER") else None

    after = wait_for("app2's page to show MASTER", took_over, 10)
    assert after.get("clickpass_cluster_state", group="app", state="BACKUP") == 0
    assert after.get("clickpass_cluster_transitions_total", **BACKUP_TO_MASTER) == 1
    assert after.get("clickpass_cluster_group_events_total", group="app", event="failovers") == 1
    silent = after.get("clickpass_cluster_peer_last_heard_seconds", group="app", peer="app1")
    assert silent is not None
    later = wait_for(
        "app1's silence to grow on app2's page",
        lambda: (
            (
                apps.metrics("app2").get(
                    "clickpass_cluster_peer_last_heard_seconds", group="app", peer="app1"
                )
                or 0
            )
            > silent + 1.0
        ),
        10,
    )
    assert later

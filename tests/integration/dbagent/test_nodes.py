"""
Two real database nodes (C{twistd -n clickpass} with C{[dbagent]}), each in
a network namespace of its own joined by a veth pair (heartbeat and the
database VIP on eth0 there), each watching a private MariaDB started by the
fixture on the host's loopback (the agents reach the servers over their unix
sockets; the servers replicate over loopback TCP). The pair bootstraps,
db2 replicates, the primary's server is killed, db2 takes over, and
C{clickpass-ctl db status} says so; the old primary comes back as replica.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dbagent.pair import Pair
from tests.support.mariadb import MariaDBUnavailable
from tests.support.netns import NsNode, VethPair
from tests.support.node import free_port, metrics_token_file

pytestmark = [pytest.mark.integration, pytest.mark.mariadb, pytest.mark.root]

SUBNET = "10.98.5"
VIP = f"{SUBNET}.100"
ADDRESSES = {"db1": f"{SUBNET}.1", "db2": f"{SUBNET}.2"}


class Namespaces(VethPair):
    """db1 and db2 network namespaces (unique names), joined by a veth pair."""

    def __init__(self) -> None:
        super().__init__("cpdb", ADDRESSES)

    def holds_vip(self, host: str) -> bool:
        return self.holds(host, VIP)


def node_config(directory: Path, host: str, pair: Pair, port: int) -> Path:
    peer = "db2" if host == "db1" else "db1"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cluster.key").write_text("k" * 32 + "\n")
    (directory / "repl.pw").write_text(pair.repl_password + "\n")
    path = directory / f"{host}.toml"
    path.write_text(
        f"""
[node]
name = "{host}"
data_dir = "{directory / "data"}"
public_url = "http://127.0.0.1:{port}/"

[web]
listen = ["tcp:{port}:interface=127.0.0.1"]
metrics_token_file = "{metrics_token_file(directory)}"

[database]
backend = "sqlite"

[workers]
count = 1

[cluster]
enabled = true
process = "inline"
secret_file = "{directory / "cluster.key"}"
bind = "{ADDRESSES[host]}"
port = 5405
node_timeout = 2.0

[[cluster.group]]
name = "db"
vip = "{VIP}/24"
interface = "eth0"
priority = {200 if host == "db1" else 100}
peers = ["{ADDRESSES[peer]}"]
advert_interval = 0.1
preempt = false
lease = 2

[[cluster.group.check]]
name = "database"
weight = 0

[dbagent]
enabled = true
local_socket = "{pair[host].socket_path}"
peer_socket = "{pair[peer].socket_path}"
peer_host = "127.0.0.1"
peer_port = {pair[peer].port}
admin_user = "root"
replication_user = "repl"
replication_password_file = "{directory / "repl.pw"}"
check_interval = 0.05
check_timeout = 0.25
fence_timeout = 0.6
fence_wait = 1.5
rejoin_interval = 0.25
server_pid_file = "{pair[host].pid_file}"
"""
    )
    return path


class DbPair:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.pair = Pair(base / "mariadb")
        self.ns = Namespaces()
        self.nodes: dict[str, NsNode] = {}

    def node(self, host: str) -> NsNode:
        port = free_port()
        config = node_config(self.base / host, host, self.pair, port)
        node = NsNode(self.base / host, config, port=port)
        node.namespace = self.ns.names[host]
        self.nodes[host] = node
        return node

    def status(self, host: str) -> dict[str, Any]:
        result = self.nodes[host].ctl("--json", "db", "status", check=False)
        if result.returncode != 0:
            return {"role": "?", "error": result.stderr.strip()}
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    def wait_role(self, host: str, roles: tuple[str, ...], timeout: float) -> float:
        start = time.monotonic()
        last: dict[str, Any] = {}
        while time.monotonic() - start < timeout:
            last = self.status(host)
            if last.get("role") in roles:
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"{host} not {roles} after {timeout}s: {last}")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.pair.stop()
        self.ns.delete()


@pytest.fixture
def dbpair(tmp_path: Path) -> Iterator[DbPair]:
    p = DbPair(tmp_path)
    try:
        p.ns.create()
        try:
            p.pair.start()
        except MariaDBUnavailable as e:
            pytest.fail(str(e), pytrace=False)
        yield p
    finally:
        p.stop()


def test_two_db_nodes_bootstrap_fail_over_and_rejoin(dbpair: DbPair) -> None:
    """Real nodes: bootstrap, replicate, kill -9 the primary's server, db2 takes over, rejoin."""
    p = dbpair
    p.node("db1").start(timeout=60)
    p.wait_role("db1", ("primary", "degraded"), 30)
    p.node("db2").start(timeout=60)
    p.wait_role("db2", ("replica",), 30)
    p.wait_role("db1", ("primary",), 10)  # the replica acknowledges: lossless again
    assert p.ns.holds_vip("db1") and not p.ns.holds_vip("db2")
    # The role turns PRIMARY when the replica is back, and semi-sync master is
    # switched on just after; the server line is the agent's last probe, so
    # it may still say off for a moment.
    deadline = time.monotonic() + 5
    text = p.nodes["db1"].ctl("db", "status").stdout
    while "semi-sync master on" not in text and time.monotonic() < deadline:
        time.sleep(0.1)
        text = p.nodes["db1"].ctl("db", "status").stdout
    assert "db1: PRIMARY" in text and "semi-sync master on" in text, text

    p.pair["db1"].admin_execute("CREATE TABLE app.t (id INT PRIMARY KEY) ENGINE=InnoDB")
    for i in range(20):
        p.pair["db1"].admin_execute(f"INSERT INTO app.t VALUES ({i})")
    before = p.pair.status("db1").binlog_pos

    killed_at = time.monotonic()
    p.pair["db1"].kill()
    took = p.wait_role("db2", ("primary", "degraded"), 20)
    print(f"db2 writable {took:.2f}s after the kill (seen through clickpass-ctl)")
    status = p.status("db2")
    assert status["writable"] and status["counters"].get("promoted") == 1
    assert p.pair.status("db2").slave_pos.reached(before) or p.pair.status(
        "db2"
    ).binlog_pos.reached(before)
    deadline = time.monotonic() + 10
    while not p.ns.holds_vip("db2") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.ns.holds_vip("db2") and not p.ns.holds_vip("db1")
    assert time.monotonic() - killed_at < 20
    text = p.nodes["db2"].ctl("db", "status").stdout
    assert "db2: " in text and ("PRIMARY" in text or "DEGRADED" in text)

    # The old primary's server comes back: fenced, then a replica of db2.
    p.pair["db1"].restart()
    p.wait_role("db1", ("replica",), 30)
    p.pair["db2"].admin_execute("INSERT INTO app.t VALUES (100)")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        a, b = p.pair.status("db1"), p.pair.status("db2")
        if a.current_pos == b.current_pos:
            break
        time.sleep(0.1)
    assert p.pair.status("db1").current_pos == p.pair.status("db2").current_pos
    # The automatic failover blocks the next one until acknowledged.
    assert p.status("db1")["failover_blocked"]
    p.nodes["db2"].ctl("db", "ack")
    deadline = time.monotonic() + 5
    while p.status("db1")["failover_blocked"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not p.status("db1")["failover_blocked"]

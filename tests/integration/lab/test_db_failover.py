"""
Database failover in the lab: MariaDB servers and real database nodes in the
db1 and db2 namespaces (scripts/lab up with db), the witness in its own, and
a writer in the client namespace inserting unique rows through the database
VIP 10.77.0.200, the address the db nodes move (a lease plus gratuitous
ARP), while the primary is killed, frozen, cut off or partitioned. After
each fault: no acknowledged row is missing, no row exists that was never
attempted, never two writable servers at once, the client reaches the new
primary's MAC, and the old primary rejoins with the same GTID set (or,
holding writes nobody acknowledged, is quarantined).

The loopback versions (forwarders standing in for the network) are in
tests/integration/dbagent/test_failover.py; the checks are the same ones.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from clickpass.dbagent import mariadb as ops
from tests.integration.dbagent.cluster import WritableWatch, check_history, rows_on
from tests.support.waiting import eventually

from .conftest import ClientWriter, LabPair, labmod

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.mariadb]

DB_VIP = labmod.DB_VIP


def poll(predicate: Callable[[], object], timeout: float) -> bool:
    """True as soon as C{predicate} holds, False after C{timeout} seconds."""
    return eventually(predicate, timeout, interval=0.1)


def client_sql(lab: Any, address: str, sql: str, timeout: float = 3.0) -> str | None:
    """Run SQL as the application user from the client namespace; None if it failed."""
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("client"),
            labmod.MARIADB,
            "--no-defaults",
            f"--host={address}",
            f"--port={labmod.DB_PORT}",
            f"--user={labmod.DB_USER}",
            f"--connect-timeout={int(timeout)}",
            "--batch",
            "--skip-column-names",
            "-e",
            sql,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout + 10,
        env={**os.environ, "MYSQL_PWD": lab.password()},
    )
    return done.stdout.strip() if done.returncode == 0 else None


def make_rows_table(lab: Any, pair: LabPair) -> None:
    """The writer's table, created on the primary and replicated to db2."""
    # As root, past read_only: on a replica this would be an errant write.
    assert lab.db_status("db1").get("writable") is True, db_state(lab)
    pair["db1"].admin_execute("CREATE DATABASE app")
    pair["db1"].admin_execute("CREATE TABLE app.rows_ (id BIGINT PRIMARY KEY) ENGINE=InnoDB")
    pair["db1"].admin_execute(f"GRANT ALL PRIVILEGES ON app.* TO '{labmod.DB_USER}'@'%'")
    assert poll(lambda: client_sql(lab, DB_VIP, "SELECT COUNT(*) FROM app.rows_") == "0", 30)


def rejoins(lab: Any, host: str) -> int:
    counters: Any = lab.db_status(host).get("counters") or {}
    return int(counters.get("rejoined", 0))


def db_state(lab: Any) -> str:
    return " | ".join(f"{h}: {lab.db_status(h)}" for h in labmod.DB_NODES)


def run_fault(
    lab: Any, inject: Callable[[], None], restore: Callable[[], None], during: Any = None
) -> dict[str, Any]:
    """
    Write through the VIP from the client namespace, inject the fault, wait
    until db2 is writable and the client's writes are acknowledged again,
    restore, wait until db1 is back (replica or quarantined), then check
    the history against what db2 holds.
    """
    pair = LabPair(lab)
    make_rows_table(lab, pair)
    rejoined_before = rejoins(lab, "db1")
    writer = ClientWriter(
        port=labmod.DB_PORT,
        user=labmod.DB_USER,
        password=lab.password(),
        namespace=lab.ns("client"),
        host=DB_VIP,
    )
    watch = WritableWatch(pair)
    writer.start()
    watch.start()
    try:
        assert poll(lambda: len(writer.ok) >= 20, 30), f"no writes before the fault: {writer}"
        fault_at = time.monotonic()
        inject()
        moved = poll(lambda: lab.db_status("db2").get("writable") is True, 60)
        assert moved, f"db2 did not become writable: {db_state(lab)}"
        moved_at = time.monotonic()
        # Writes land on the new primary through the VIP before the old one returns.
        on_db2 = poll(lambda: sum(1 for t in writer.ok.values() if t > moved_at) >= 20, 30)
        assert on_db2, f"no writes acknowledged by db2: {writer.errors[-3:]} {db_state(lab)}"
        first_ok = writer.first_ok_after(fault_at)
        assert first_ok is not None
        if during is not None:
            during()
        # The VIP is db2's alone (db1's lease lapses or it released it), and
        # the client's neighbour cache points at db2: the writes went there.
        assert poll(lambda: lab.vip_holders(DB_VIP) == ["db2"], 15), lab.vip_holders(DB_VIP)
        client_mac = labmod.neighbour_mac(lab, "client", DB_VIP)
        assert client_mac == labmod.interface_mac(lab, "db2")
        restore()
        back = poll(lambda: lab.db_role("db1") in ("replica", "quarantined"), 90)
        assert back, f"db1 did not come back: {db_state(lab)}"
    finally:
        writer.stop()
        watch.stop()
    present = rows_on(pair, "db2")
    result = check_history(writer, present)
    acks = [fault_at, *sorted(t for t in writer.ok.values() if t > fault_at)]
    result.update(
        # From the fault to the first acknowledgement of a write attempted after it
        # (under a partition the old primary may still acknowledge one in flight).
        failover_seconds=round(first_ok - fault_at, 3),
        # The longest time without an acknowledged write from the fault on.
        write_gap_seconds=round(max(b - a for a, b in itertools.pairwise(acks)), 3),
        writable_seen_seconds=round(moved_at - fault_at, 3),
        both_writable=len(watch.both),
        samples=watch.samples,
        old_primary=lab.db_role("db1"),
        old_primary_problems=lab.db_status("db1").get("problems"),
        # Rejoins db1's agent reported after the fault (its node runs on).
        old_primary_rejoins=rejoins(lab, "db1") - rejoined_before,
        writer_errors=writer.errors[-3:],
        attempted=len(writer.attempted),
    )
    print(result)
    return result


def same_gtids(pair: LabPair, timeout: float = 30.0) -> bool:
    def equal() -> bool:
        try:
            a, b = pair.status("db1"), pair.status("db2")
        except Exception:  # a server still restarting: ask again
            return False
        return a.current_pos == b.current_pos and a.binlog_pos == b.binlog_pos

    return poll(equal, timeout)


def check_common(result: dict[str, Any]) -> None:
    assert result["lost"] == [] and result["unexpected"] == []
    assert result["both_writable"] == 0 and result["samples"] > 0
    assert result["acknowledged"] > 40


def check_rejoined(lab: Any, result: dict[str, Any]) -> None:
    """
    A replica again, and really one: after a moment its agent still says
    so, its server streams from db2 with no replication error (a rejoin
    from a diverged history breaks within milliseconds: the primary
    refuses the position, or the applier stops with out-of-order GTID),
    and both servers hold the same GTID set and the same rows.
    """
    pair = LabPair(lab)
    time.sleep(1.0)
    assert lab.db_role("db1") == "replica", db_state(lab)
    status = pair.status("db1")
    assert status.streaming and not ops.divergence(status), status
    assert same_gtids(pair), f"{pair.status('db1')} / {pair.status('db2')}"
    assert rows_on(pair, "db1") == rows_on(pair, "db2")


def check_after_network_fault(lab: Any, result: dict[str, Any]) -> None:
    check_common(result)
    # Writes the old primary held un-acknowledged (binlogged, never shipped)
    # make its history errant: quarantined, never silently rejoined.
    assert result["old_primary"] in ("replica", "quarantined")
    if result["old_primary"] == "quarantined":
        assert result["old_primary_problems"]
        # Quarantined by the rejoin's own checks, not after it had declared
        # a replica whose replication then broke.
        assert result["old_primary_rejoins"] == 0, result
    else:
        check_rejoined(lab, result)


def test_lab_primary_mariadb_killed(make_db_lab: Any) -> None:
    """kill -9 of db1's mariadbd: db2 takes the VIP writable, no acknowledged row lost,
    and the restarted server rejoins as replica with the same GTID set."""
    lab = make_db_lab(apps=False)
    result = run_fault(
        lab,
        lambda: lab.signal_mariadb("db1", signal.SIGKILL),
        lambda: lab.start_mariadb("db1"),
    )
    check_common(result)
    assert result["old_primary"] == "replica"
    check_rejoined(lab, result)


def test_lab_primary_mariadb_frozen(make_db_lab: Any) -> None:
    """SIGSTOP of db1's mariadbd: its agent, unable to fence it, kills it; db2 takes over;
    nothing acknowledged is lost; the restarted server rejoins."""
    lab = make_db_lab(apps=False)
    frozen: list[int] = []

    def freeze() -> None:
        pid = lab.mariadb_pid("db1")
        frozen.append(pid)
        lab.signal_mariadb("db1", signal.SIGSTOP)

    def restore() -> None:
        # The design's promise: a frozen server that cannot be fenced is
        # killed by its own agent, so it never resumes writable.
        killed = poll(lambda: lab.mariadb_pid("db1") is None, 30)
        if not killed:
            os.kill(frozen[0], signal.SIGCONT)
        assert killed, "db1's agent did not kill its frozen server"
        lab.start_mariadb("db1")

    result = run_fault(lab, freeze, restore)
    check_common(result)
    assert result["old_primary"] == "replica"
    check_rejoined(lab, result)


def test_lab_primary_link_down(make_db_lab: Any) -> None:
    """db1's cable is pulled (as a power loss looks from outside): with the witness's vote db2
    takes the VIP; db1's lease lapses; back on the network db1 rejoins or is quarantined."""
    lab = make_db_lab(apps=False)
    result = run_fault(lab, lambda: lab.link("db1", False), lambda: lab.link("db1", True))
    check_after_network_fault(lab, result)


def test_lab_primary_partitioned_from_its_peer(make_db_lab: Any) -> None:
    """
    db1 loses db2 and the witness but the client still reaches it: db1 fences
    itself (lost quorum) and answers the client read-only, db2 is elected with
    the witness's vote and takes the VIP, and no acknowledged row is lost.
    """
    lab = make_db_lab(apps=False)

    def cut() -> None:
        lab.partition("db1", "db2")
        lab.partition("db1", "witness")

    def heal() -> None:
        lab.partition("db1", "db2", on=False)
        lab.partition("db1", "witness", on=False)

    def reachable_but_fenced() -> None:
        address = labmod.HOSTS["db1"]
        fenced = poll(lambda: client_sql(lab, address, "SELECT @@read_only") == "1", 30)
        assert fenced, "the client cannot reach db1, or db1 is still writable"

    result = run_fault(lab, cut, heal, during=reachable_but_fenced)
    check_after_network_fault(lab, result)


def add_user(lab: Any, host: str, email: str) -> bool:
    done = subprocess.run(
        [
            str(labmod.VENV / "bin" / "clickpass-ctl"),
            "--socket",
            str(lab.dir / host / "data" / "control.sock"),
            "--timeout",
            "10",
            "user",
            "add",
            email,
            "--password-stdin",
        ],
        input="correct horse battery staple\n",
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0


def test_lab_app_nodes_use_the_database_vip_through_a_failover(make_db_lab: Any) -> None:
    """
    The four-server shape: app1 and app2 keep their data in MariaDB through the
    database VIP. An account created on app1 is on both database servers; after
    db1's server is killed, app2 creates another through the same VIP (now db2),
    and the app VIP still answers.
    """
    lab = make_db_lab()
    pair = LabPair(lab)
    assert add_user(lab, "app1", "first@example.org")

    def accounts(host: str) -> set[str]:
        with pair[host].admin_connection(database=labmod.DB_NAME) as conn, conn.cursor() as c:
            c.execute("SELECT email FROM accounts")
            return {str(row[0]) for row in c.fetchall()}

    assert poll(lambda: "first@example.org" in accounts("db2"), 10)
    lab.signal_mariadb("db1", signal.SIGKILL)
    assert poll(lambda: lab.db_status("db2").get("writable") is True, 60), db_state(lab)
    # The node's storage reconnects through the VIP; a refused attempt is retried.
    assert poll(
        lambda: (
            add_user(lab, "app2", "second@example.org") or "second@example.org" in accounts("db2")
        ),
        60,
    )
    assert {"first@example.org", "second@example.org"} <= accounts("db2")
    assert poll(lab.http_ok, 30)

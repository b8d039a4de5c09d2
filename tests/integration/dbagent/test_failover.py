"""
Failover with a writer inserting unique rows through the database VIP (a
TCP forwarder on loopback standing in for the address) while the primary
is killed, frozen, cut off or partitioned. After each fault: no
acknowledged row missing, no row that was never attempted, never two
writable servers at once, and the old primary rejoins with the same GTID
set (or, holding un-acknowledged writes, is quarantined).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from clickpass.dbagent.machine import Role
from tests.conftest import global_reactor
from tests.integration.dbagent.cluster import (
    Cluster,
    WritableWatch,
    Writer,
    check_history,
    rows_on,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]


def make_cluster(base: Path, witness: bool = False) -> Cluster:
    cluster = Cluster(global_reactor(), base, witness=witness)
    cluster.start_servers()
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = make_cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
        c.stop_servers()


@pytest.fixture
def witnessed(tmp_path: Path) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, witness=True)
    try:
        yield c
    finally:
        c.stop()
        c.stop_servers()


async def bring_up(c: Cluster) -> None:
    import os
    import sys

    if os.environ.get("DBAGENT_LOG"):
        from twisted.logger import globalLogPublisher, textFileLogObserver

        globalLogPublisher.addObserver(textFileLogObserver(sys.stderr))
    c.start()
    c.activate("db1")
    first = await wait_until(c.reactor, lambda: c.agents["db1"].role.writable, 30)
    assert first, f"db1 did not bootstrap: {c.agents['db1'].status()}"
    c.activate("db2")
    up = await wait_until(
        c.reactor,
        lambda: c.roles() == {"db1": Role.PRIMARY, "db2": Role.REPLICA},
        30,
    )
    assert up, f"pair did not come up: {c.roles()} {c.agents['db1'].status()}"
    # Blocking SQL runs off the reactor thread: the forwarders standing in
    # for the network run on it, and a semi-sync commit waits for them.
    await deferToThread(
        c.pair["db1"].admin_execute, "CREATE TABLE app.rows_ (id BIGINT PRIMARY KEY) ENGINE=InnoDB"
    )


async def sleep(seconds: float) -> None:
    clock: Any = global_reactor()
    await deferLater(clock, seconds, lambda: None)


async def run_fault(c: Cluster, inject: Any, restore: Any, settle: float = 8.0) -> dict[str, Any]:
    writer = Writer(c.vip.port, c.pair["db1"].user, c.pair["db1"].password)
    watch = WritableWatch(c.pair)
    writer.start()
    watch.start()
    await sleep(1.0)
    fault_at = time.monotonic()
    inject()
    moved = await wait_until(c.reactor, lambda: c.agents["db2"].role.writable, 20)
    await wait_until(c.reactor, lambda: writer.first_ok_after(fault_at) is not None, 10)
    await sleep(1.0)
    await deferToThread(restore)
    await wait_until(
        c.reactor,
        lambda: c.agents["db1"].role in (Role.REPLICA, Role.QUARANTINED),
        settle + 20,
    )
    writer.stop()
    watch.stop()
    present = await deferToThread(rows_on, c.pair, "db2")
    result = check_history(writer, present)
    ok_after = writer.first_ok_after(fault_at)
    result.update(
        moved=moved,
        failover_seconds=None if ok_after is None else round(ok_after - fault_at, 3),
        both_writable=len(watch.both),
        samples=watch.samples,
        old_primary=c.agents["db1"].role,
        writer_errors=writer.errors[-5:],
        connect_errors=writer.connect_errors[-3:],
        attempted=len(writer.attempted),
    )
    return result


async def same_gtids(c: Cluster) -> bool:
    for _ in range(150):
        try:
            a = await deferToThread(c.pair.status, "db1")
            b = await deferToThread(c.pair.status, "db2")
        except Exception:  # a server still restarting; ask again
            await sleep(0.1)
            continue
        if a.current_pos == b.current_pos and a.binlog_pos == b.binlog_pos:
            return True
        await sleep(0.1)
    return False


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_primary_killed(cluster: Cluster) -> None:
    """kill -9 of the primary's server: the replica takes over, nothing acknowledged is lost."""
    await bring_up(cluster)
    result = await run_fault(
        cluster, lambda: cluster.pair["db1"].kill(), lambda: cluster.pair["db1"].restart()
    )
    print(result)
    assert result["moved"]
    assert result["lost"] == [] and result["unexpected"] == []
    assert result["both_writable"] == 0
    assert result["old_primary"] == Role.REPLICA
    assert await same_gtids(cluster)
    assert await deferToThread(rows_on, cluster.pair, "db1") == await deferToThread(
        rows_on, cluster.pair, "db2"
    )


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_primary_frozen(cluster: Cluster) -> None:
    """SIGSTOP of the primary's server: its agent kills it, the replica takes over, no loss."""
    await bring_up(cluster)

    def restore() -> None:
        cluster.pair["db1"].kill(signal.SIGCONT)
        if not cluster.pair["db1"].running:
            cluster.pair["db1"].restart()

    result = await run_fault(cluster, lambda: cluster.pair["db1"].kill(signal.SIGSTOP), restore)
    print(result)
    assert result["moved"]
    assert result["lost"] == [] and result["unexpected"] == []
    assert result["both_writable"] == 0
    assert result["old_primary"] == Role.REPLICA
    assert await same_gtids(cluster)

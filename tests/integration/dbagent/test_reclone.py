"""
db reclone: a quarantined old primary (it holds transactions the new primary
lacks) has its data replaced by a consistent copy of the primary's
(mariadb-dump --single-transaction --gtid, loaded outside its binlog), then
rejoins as replica by itself, with the primary's GTID set and rows and none
of its errant ones. On the primary itself, reclone is refused.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from twisted.internet.threads import deferToThread

from clickpass.dbagent.machine import Role
from tests.integration.dbagent.cluster import Cluster, rows_on, wait_until
from tests.integration.dbagent.test_failover import bring_up, same_gtids

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]


async def quarantined_old_primary(c: Cluster) -> None:
    """db1 fails over to db2, then returns holding errant rows: quarantined."""
    await bring_up(c)
    for row in range(1, 21):
        await deferToThread(c.pair["db1"].admin_execute, f"INSERT INTO app.rows_ VALUES ({row})")
    c.pair["db1"].kill()
    assert await wait_until(c.reactor, lambda: c.agents["db2"].role.writable, 30)
    c.agents["db1"].stopService()
    await deferToThread(c.pair["db1"].restart)
    for row in range(1000, 1006):
        await deferToThread(c.pair["db1"].admin_execute, f"INSERT INTO app.rows_ VALUES ({row})")
    c.agents["db1"].startService()
    quarantined = await wait_until(c.reactor, lambda: c.agents["db1"].role == Role.QUARANTINED, 30)
    assert quarantined, c.agents["db1"].status()


async def reclone_when_quarantined(c: Cluster) -> dict[str, Any]:
    """
    db reclone on db1 once it is quarantined: on a loaded machine its checks
    may time out, and it passes through DOWN and FENCING back to QUARANTINED
    (where reclone is refused meanwhile, with a one-line reason).
    """
    refusals = []
    for _ in range(10):
        assert await wait_until(c.reactor, lambda: c.agents["db1"].role == Role.QUARANTINED, 30)
        try:
            return await c.agents["db1"].reclone()
        except ValueError as e:
            refusals.append(str(e))
    raise AssertionError(f"reclone refused ten times: {refusals}")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_quarantined_server_is_recloned_and_rejoins(cluster: Cluster) -> None:
    """After db reclone the old primary replicates, with the primary's GTIDs and rows only."""
    c = cluster
    await quarantined_old_primary(c)
    # Rows the new primary took while db1 was away, and its own copy of them.
    for row in range(21, 31):
        await deferToThread(c.pair["db2"].admin_execute, f"INSERT INTO app.rows_ VALUES ({row})")
    answer = await reclone_when_quarantined(c)
    assert answer["role"] == Role.RECLONING.value
    back = await wait_until(c.reactor, lambda: c.agents["db1"].role == Role.REPLICA, 90)
    status = c.agents["db1"].status()
    print(status)
    assert back, status
    assert not status["quarantined"] and not status["problems"]
    # Replication runs on from the copy: a later write reaches db1 too.
    await deferToThread(c.pair["db2"].admin_execute, "INSERT INTO app.rows_ VALUES (31)")
    assert await same_gtids(c)
    on_db1 = await deferToThread(rows_on, c.pair, "db1")
    on_db2 = await deferToThread(rows_on, c.pair, "db2")
    assert on_db1 == on_db2 == set(range(1, 32))
    replica = await deferToThread(c.pair.status, "db1")
    assert replica.read_only and replica.replicating
    assert c.agents["db2"].role.writable


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_reclone_is_refused_on_the_primary(cluster: Cluster) -> None:
    """The primary's data is never replaced: a one-line refusal, nothing changes."""
    c = cluster
    await bring_up(c)
    before = await deferToThread(c.pair.status, "db1")
    with pytest.raises(ValueError, match="never on the primary"):
        await c.agents["db1"].reclone()
    # PRIMARY, or DEGRADED if a loaded machine delayed the replica's adverts.
    assert c.agents["db1"].role.writable
    after = await deferToThread(c.pair.status, "db1")
    assert not after.read_only and after.binlog_pos == before.binlog_pos

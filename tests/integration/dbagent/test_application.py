"""
The application side of a failover, for real: the storage layer writes
through the database VIP (a loopback forwarder) while the primary's server
is killed. Transactions refused during the failover are run again and land
on the new primary; a write idempotent by key never surfaces an unknown
outcome and is applied once; every acknowledged write is on the new primary.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from twisted.internet.threads import deferToThread

from clickpass.storage.sql import (
    OutcomeUnknown,
    Transaction,
    open_mysql,
    run_through_failover,
)
from tests.integration.dbagent.cluster import Cluster, rows_on, wait_until
from tests.integration.dbagent.test_failover import bring_up

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]


def insert_once(tx: Transaction, row: int) -> str:
    """Idempotent by key: a row already there (our own lost commit) is not written again."""
    if tx.scalar("SELECT id FROM rows_ WHERE id = ?", row) is not None:
        return "existing"
    tx.execute("INSERT INTO rows_ (id) VALUES (?)", row)
    return "created"


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_storage_writes_carry_on_through_a_failover(cluster: Cluster) -> None:
    """kill -9 of the primary: writes continue on db2, none lost, none surfaced as errors."""
    c = cluster
    await bring_up(c)
    storage = open_mysql(
        c.reactor,
        port=c.vip.port,
        user=c.pair["db1"].user,
        password=c.pair["db1"].password,
        database="app",
        pool_min=1,
        pool_max=2,
        connect_timeout=1.0,
    )
    acknowledged: set[int] = set()
    outcomes: dict[str, int] = {}
    errors: list[str] = []
    killed_at: float | None = None
    first_after: float | None = None
    try:
        for row in range(1, 100_000):
            if row == 30:
                killed_at = time.monotonic()
                c.pair["db1"].kill()
            try:
                result = await run_through_failover(
                    c.reactor, storage, insert_once, row, idempotent=True, budget=15.0
                )
            except OutcomeUnknown as e:  # pragma: no cover - must not happen when idempotent
                errors.append(f"unknown: {e}")
                continue
            except Exception as e:
                errors.append(repr(e))
                continue
            outcomes[result] = outcomes.get(result, 0) + 1
            acknowledged.add(row)
            if killed_at is not None and first_after is None:
                first_after = time.monotonic() - killed_at
            if killed_at is not None and c.agents["db2"].role.writable and len(acknowledged) > 60:
                break
            if killed_at is not None and time.monotonic() - killed_at > 30:
                break
    finally:
        storage.close()
    assert await wait_until(c.reactor, lambda: c.agents["db2"].role.writable, 5)
    present = await deferToThread(rows_on, c.pair, "db2")
    print(outcomes, f"first write after the kill {first_after}s", errors[:3])
    assert errors == []
    assert acknowledged - present == set()
    assert present - acknowledged == set()  # nothing applied that the caller saw fail

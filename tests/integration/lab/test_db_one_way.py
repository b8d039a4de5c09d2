"""
One-way loss on the database group in the lab: blackhole routes make the
primary db1 unheard (its sends to db2 and the witness are refused, while it
still hears both) or deaf (heard by both, hearing neither). db1's group
steps down, so its agent fences its server read-only; db2 is elected with
the witness's vote, promoted, and takes the database VIP. A writer in the
client namespace writes through the VIP all along: no acknowledged row is
lost, the two servers are never writable at once, and db2 alone holds the
VIP within the failover time and from then on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.heartbeat.probe import Holding, VipWatch

from .conftest import labmod
from .test_db_failover import check_after_network_fault, run_fault

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.mariadb]

UNHEARD = {"db1": ("db2", "witness")}
DEAF = {"db2": ("db1",), "witness": ("db1",)}
# Two hosts may hold the VIP at once only while the old one learns that it is
# not heard: well under a second (the group's failover time plus room for a
# loaded machine).
SHARED = 1.0
# db2 alone holds the VIP at most this long after the fault: the election,
# then the promotion (which waits up to fence_wait, 2 s, for db1's fence when
# it cannot reach db1), with room for a loaded machine.
SINGLE = 10.0


@pytest.mark.parametrize("routes", [UNHEARD, DEAF], ids=["unheard", "deaf"])
def test_lab_primary_one_way_loss(make_db_lab: Any, routes: dict[str, tuple[str, ...]]) -> None:
    """db1, the primary, loses one direction of its traffic with db2 and the witness: it
    fences itself, db2 becomes the writable primary behind the VIP, nothing acknowledged is
    lost, never two writable servers, db2 alone holds the VIP within the failover time and
    keeps it; once the routes go db1 rejoins (or, holding unacknowledged writes, is
    quarantined)."""
    lab = make_db_lab(apps=False)
    watch = VipWatch(lab, labmod.DB_VIP)
    fault_at: list[float] = []

    def inject() -> None:
        fault_at.append(time.time())
        for host, towards in routes.items():
            lab.blackhole(host, towards)

    def restore() -> None:
        for host, towards in routes.items():
            lab.blackhole(host, towards, on=False)

    try:
        result = run_fault(lab, inject, restore)
    finally:
        watch.stop()
    holding = Holding.after(watch.holders_over_time(["db1"]), fault_at[0])
    print(f"one-way loss {routes}: {holding}")
    check_after_network_fault(lab, result)
    assert holding.single_after is not None and holding.single_after <= SINGLE, holding
    assert holding.longest_shared <= SHARED, holding
    assert holding.changes and holding.changes[-1][1] == ["db2"], holding

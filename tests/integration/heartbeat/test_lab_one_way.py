"""
One-way loss on the app group in the lab: blackhole routes make the master
app1 unheard (it still hears app2 and the witness) or deaf (heard, but it
hears neither). Either way app2 alone holds the app VIP within the failover
time, stays so (no flapping), and the client is answered through it; once
the routes go, app1 (preempting, the higher priority) takes the VIP back.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .conftest import labmod
from .probe import Holding, VipWatch
from .test_lab_failover import settle, state

pytestmark = [pytest.mark.integration, pytest.mark.root]

# 3 adverts + skew (0.361 s at 100 ms adverts, priority 100), the witness's
# vote, and room for a loaded 2-core machine.
FAILOVER = 1.0
# A deaf master first waits out its quorum limit (4 adverts: 0.4 s).
DEAF_FAILOVER = FAILOVER + 0.4
# How long nothing may move afterwards.
STEADY = 5.0

UNHEARD = {"app1": ("app2", "witness")}
DEAF = {"app2": ("app1",), "witness": ("app1",)}


@pytest.mark.parametrize(
    ("routes", "within"), [(UNHEARD, FAILOVER), (DEAF, DEAF_FAILOVER)], ids=["unheard", "deaf"]
)
def test_one_way_loss_leaves_one_app_vip_holder(
    make_lab: Any, routes: dict[str, tuple[str, ...]], within: float
) -> None:
    """app1, the master, is cut off one way (its sends to app2 and the witness blackholed,
    or theirs to it): app2 alone holds the VIP within the failover time and for the next
    5 s, app1 is not MASTER, and the client is answered; after the routes go app1 preempts
    the VIP back."""
    lab = make_lab()
    settle(lab, ["app1"])
    time.sleep(0.5)
    watch = VipWatch(lab, labmod.APP_VIP)
    time.sleep(0.3)  # the monitor is listening
    fault_at = time.time()
    try:
        for host, towards in routes.items():
            lab.blackhole(host, towards)
        lab.wait_for(
            lambda: lab.vip_holders() == ["app2"] and state(lab, "app1") not in ("MASTER", ""),
            10.0,
            "app2 alone to hold the VIP",
        )
        time.sleep(STEADY)
        assert lab.vip_holders() == ["app2"]
        # A deaf app1 hears no master, so it keeps asking the witness for a
        # vote it never hears: BACKUP and CANDIDATE (waiting for the vote)
        # take turns. Neither holds the VIP; MASTER would.
        assert state(lab, "app1") in ("BACKUP", "CANDIDATE")
        assert state(lab, "app2") == "MASTER"
        lab.wait_for(lab.http_ok, 3.0, "the client to succeed through app2")
        counters = lab.cluster_status("app1")["groups"][0]["counters"]
    finally:
        watch.stop()  # once only: a second call finds the monitor gone
        for host, towards in routes.items():
            lab.blackhole(host, towards, on=False)
    holding = Holding.after(watch.holders_over_time(["app1"]), fault_at)
    print(f"one-way loss {routes}: {holding}; app1's counters {counters}")
    assert holding.single_after is not None and holding.single_after <= within, holding
    assert holding.longest_shared <= within, holding
    # Once app2 held it alone, it stayed so: no flapping.
    assert holding.changes[-1][1] == ["app2"], holding
    settle(lab, ["app1"], timeout=10.0)
    lab.wait_for(lab.http_ok, 3.0, "the client to succeed")

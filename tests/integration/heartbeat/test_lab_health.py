"""
The node's health moves the VIP, and what a takeover leaves behind, in the
lab: a master with no worker taking requests gives the VIP up; periodic
gratuitous ARP corrects a neighbour cache nobody else would; the node that
takes a VIP over from a dead master raises the failover.happened alert.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any

import pytest

from .conftest import labmod
from .test_lab_failover import settle, state

pytestmark = [pytest.mark.integration, pytest.mark.root]

# Workers fail their health check within a second; never replaced while stopped.
FAST_HEALTH = {"health_interval": "0.5", "health_timeout": "0.3", "health_fall": "1000"}
BOGUS_MAC = "02:00:00:00:00:99"


def alerts(lab: Any, host: str) -> dict[str, dict[str, Any]]:
    firing = json.loads(lab.ctl(host, "--json", "alerts", "list"))
    return {a["key"]: a for a in firing}


def signal_workers(lab: Any, host: str, sig: int) -> list[int]:
    pids: list[int] = lab.worker_pids(host)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def test_master_whose_workers_all_stop_gives_the_vip_to_the_backup(make_lab: Any) -> None:
    """Every worker of the master frozen (SIGSTOP): the node is no longer ready, its group
    goes to FAULT and the backup takes the VIP and serves; the backup raises
    failover.happened (master fault). Workers back: the master takes the VIP back."""
    lab = make_lab(overrides=FAST_HEALTH)
    settle(lab, ["app1"])
    lab.wait_for(lab.http_ok, 5.0, "the client to succeed")
    assert "failover.happened" not in alerts(lab, "app2")
    stopped = signal_workers(lab, "app1", signal.SIGSTOP)
    assert len(stopped) >= 1
    try:
        settle(lab, ["app2"], timeout=10.0)
        assert state(lab, "app1") == "FAULT"
        lab.wait_for(lab.http_ok, 5.0, "the client to succeed through the backup")
        lab.wait_for(lambda: "failover.happened" in alerts(lab, "app2"), 5.0, "the alert")
        details = alerts(lab, "app2")["failover.happened"]["details"]
        assert (details["from"], details["reason"]) == ("app1", "master fault")
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    settle(lab, ["app1"], timeout=20.0)  # healthy again, and preempts
    lab.wait_for(lab.http_ok, 5.0, "the client to succeed")


def test_kill9_master_raises_failover_happened_on_the_new_master(make_lab: Any) -> None:
    """kill -9 of the master's whole node, host up: its kernel closes the process link, so
    the backup takes over at once and raises failover.happened naming the dead master and
    "heartbeat process gone"; the first election had raised nothing."""
    lab = make_lab()
    settle(lab, ["app1"])
    # The VIP can settle before app2's heartbeat has its link to app1 (it
    # connects after its process starts): without the link, a kill is seen
    # only as missed adverts, which is the other path.
    log = lab.dir / "app2" / "node.log"
    lab.wait_for(
        lambda: "process link to app1 up" in log.read_text(errors="replace"),
        10.0,
        "app2's process link to app1",
    )
    # And app2 must be a backup that can take over: the VIP settles on app1
    # while app2's own node may still be starting its workers (FAULT). A
    # faulted app2 remembers the closed link and names it when it takes
    # over later (the unit tests pin that order); this test is the other.
    lab.wait_for(lambda: state(lab, "app2") == "BACKUP", 10.0, "app2 to be a ready backup")
    assert "failover.happened" not in alerts(lab, "app2")
    lab.signal_node("app1", signal.SIGKILL, whole_group=True)
    lab.wait_for(lambda: state(lab, "app2") == "MASTER", 5.0, "app2 to take over")
    lab.wait_for(lambda: "failover.happened" in alerts(lab, "app2"), 5.0, "the alert")
    alert = alerts(lab, "app2")["failover.happened"]
    assert (alert["details"]["from"], alert["details"]["reason"]) == (
        "app1",
        "heartbeat process gone",
    )
    assert "app2" in alert["summary"]
    counters = lab.cluster_status("app2")["groups"][0]["counters"]
    assert counters["master_process_gone"] == 1


def test_kill9_master_while_the_backup_is_not_ready_still_names_the_process_gone(
    make_lab: Any,
) -> None:
    """kill -9 of the master while the backup's own node is not ready (its workers frozen,
    FAULT): the backup cannot take over yet, but it counts the closed link; once its workers
    are back it takes over and failover.happened names "heartbeat process gone", which it
    knew, not the missed adverts its down timer then sees."""
    lab = make_lab(overrides=FAST_HEALTH)

    def counters() -> dict[str, int]:
        found: dict[str, int] = lab.cluster_status("app2")["groups"][0]["counters"]
        return found

    settle(lab, ["app1"])
    log = lab.dir / "app2" / "node.log"
    lab.wait_for(
        lambda: "process link to app1 up" in log.read_text(errors="replace"),
        10.0,
        "app2's process link to app1",
    )
    lab.wait_for(lambda: state(lab, "app2") == "BACKUP", 10.0, "app2 to be a ready backup")
    stopped = signal_workers(lab, "app2", signal.SIGSTOP)
    assert len(stopped) >= 1
    try:
        lab.wait_for(lambda: state(lab, "app2") == "FAULT", 10.0, "app2 to fault")
        lab.signal_node("app1", signal.SIGKILL, whole_group=True)
        lab.wait_for(
            lambda: counters().get("master_process_gone") == 1, 5.0, "app2 to see the link close"
        )
        assert state(lab, "app2") == "FAULT"
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    lab.wait_for(lambda: state(lab, "app2") == "MASTER", 10.0, "app2 to take over")
    lab.wait_for(lambda: "failover.happened" in alerts(lab, "app2"), 5.0, "the alert")
    details = alerts(lab, "app2")["failover.happened"]["details"]
    assert (details["from"], details["reason"]) == ("app1", "heartbeat process gone")
    assert counters()["master_process_gone"] == 1


def test_frozen_master_is_missed_adverts_not_a_closed_link(make_lab: Any) -> None:
    """SIGSTOP of the master's whole node closes nothing: the backup waits for the missed
    adverts (3 intervals + skew) and says so in failover.happened."""
    lab = make_lab()
    settle(lab, ["app1"])
    lab.signal_node("app1", signal.SIGSTOP, whole_group=True)
    try:
        lab.wait_for(lambda: state(lab, "app2") == "MASTER", 5.0, "app2 to take over")
        lab.wait_for(lambda: "failover.happened" in alerts(lab, "app2"), 5.0, "the alert")
        details = alerts(lab, "app2")["failover.happened"]["details"]
        assert (details["from"], details["reason"]) == ("app1", "missed adverts")
        counters = lab.cluster_status("app2")["groups"][0]["counters"]
        assert counters.get("master_process_gone", 0) == 0
    finally:
        lab.signal_node("app1", signal.SIGCONT, whole_group=True)


def _client_mac(lab: Any) -> str | None:
    mac: str | None = labmod.neighbour_mac(lab, "client", labmod.APP_VIP)
    return mac


def _poison_client(lab: Any) -> None:
    """Point the client's neighbour entry for the VIP at a MAC nobody has (STALE: the
    client does not probe it until it sends, and it sends nothing meanwhile)."""
    lab.exec(
        "client",
        "ip",
        "neigh",
        "replace",
        labmod.APP_VIP,
        "lladdr",
        BOGUS_MAC,
        "dev",
        "eth0",
        "nud",
        "stale",
    )


def test_periodic_garp_refresh_corrects_a_wrong_neighbour_entry(make_lab: Any) -> None:
    """With garp_refresh the master keeps announcing the VIP: a client whose neighbour entry
    went wrong is put right within the refresh period, with no traffic of its own. Without
    it (garp_refresh = 0) the wrong entry stays."""
    for refresh, corrected in (("0.0", False), ("0.5", True)):
        lab = make_lab(overrides={"garp_refresh": refresh})
        settle(lab, ["app1"])
        lab.wait_for(lab.http_ok, 5.0, "the client to succeed")
        time.sleep(0.5)  # past the takeover's burst of gratuitous ARP
        # Under load the takeover's announcements (or app1's own probe of
        # the client, from the VIP) can land just after the poisoning and
        # put the entry right before the quiet window starts: poison again
        # until it holds. The window is measured from a wrong entry.
        for _ in range(10):
            _poison_client(lab)
            if _client_mac(lab) == BOGUS_MAC:
                break
            time.sleep(0.5)
        assert _client_mac(lab) == BOGUS_MAC
        before = _garps_sent(lab)
        time.sleep(1.5)  # three refresh periods
        mac = _client_mac(lab)
        expected = labmod.interface_mac(lab, "app1") if corrected else BOGUS_MAC
        assert mac == expected, f"garp_refresh={refresh}"
        # Counted over the quiet window only: how many the takeover sent
        # before it (a burst, maybe a re-announcement) does not matter.
        sent = _garps_sent(lab) - before
        assert sent >= 2 if corrected else sent == 0, f"garp_refresh={refresh}: {sent} sent"
        lab.down()


def _garps_sent(lab: Any) -> int:
    counters = lab.cluster_status("app1")["groups"][0]["counters"]
    return int(counters.get("garp_sent", 0))

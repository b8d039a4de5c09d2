"""
The hand-off bridge in the lab (production shape, app nodes on SQLite): a
TCP connection the old holder of app1's VIP accepted before a planned move,
whose request the client sends only after its ARP entry moved to the new
holder, is answered by the old holder, through the new holder's bridge
(clickpass.heartbeat.actions.HandoffBridge), instead of being reset by the
new holder's kernel, which never saw that connection start.

Both directions of a planned move: a switchover (app1 to app2), and app1
taking its VIP back from app2 when it returns (preempt). With vip_bridge
false the same request after a switchover is reset: the test can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.heartbeat.conftest import load_lab

labmod = load_lab()

pytestmark = [pytest.mark.integration, pytest.mark.root]

# Apart from the other lab tests' namespaces (cpt-, cpd-, cpa-) and anyone's own lab.
PREFIX = os.environ.get("CLICKPASS_TEST_BRIDGELAB_PREFIX", "cpb-")
VIP1 = labmod.APP_VIPS["app1"]

# A connection opened at once and left idle; on a line on stdin, one request on
# it; then its answer's status line, or why none came.
IDLE_THEN_REQUEST = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print("connected", flush=True)
sys.stdin.readline()
sock.settimeout(10)
try:
    sock.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    while b"\\r\\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
except OSError as e:
    print(f"no answer: {e}", flush=True)
    sys.exit(1)
print(data.split(b"\\r\\n")[0].decode() or "no answer: closed", flush=True)
"""


def _lab(**overrides: str) -> Any:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root to create network namespaces", pytrace=False)
    lab = labmod.Lab.for_run(PREFIX)
    try:
        lab.up(shape="production", db=False, timeout=120.0, overrides=overrides or None)
    except BaseException:
        lab.down()
        raise
    return lab


@pytest.fixture(scope="module")
def production_lab() -> Iterator[Any]:
    """The production shape, vip_bridge as conf/production/ sets it (true)."""
    lab = _lab()
    yield lab
    lab.down()


def open_idle_connection(lab: Any) -> subprocess.Popen[str]:
    """A client connection to app1's VIP, accepted by its holder now, with nothing sent."""
    client = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("client"), sys.executable, "-c", IDLE_THEN_REQUEST,
         VIP1, str(labmod.HTTP_PORT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert client.stdout is not None and client.stdout.readline().strip() == "connected"
    return client


def request_now(client: subprocess.Popen[str]) -> str:
    """Send the request on the idle connection: the status line, or why none came."""
    out, _ = client.communicate("go\n", timeout=30)
    return out.strip()


def moved_to(lab: Any, host: str) -> None:
    """Wait until C{host} alone has app1's VIP and the client's ARP entry names it."""
    lab.wait_for(lambda: lab.vip_holders(VIP1) == [host], 60.0, f"{VIP1} held by {host}")
    mac = labmod.interface_mac(lab, host)
    lab.wait_for(
        lambda: labmod.neighbour_mac(lab, "client", VIP1) == mac,
        5.0,
        f"the client's ARP entry for {VIP1} to name {host}",
    )


def group_state(lab: Any, host: str, group: str) -> str:
    try:
        status = lab.cluster_status(host)
    except labmod.LabError:
        return ""
    return next((str(g["state"]) for g in status["groups"] if g["group"] == group), "")


def vip1_counters(lab: Any, host: str) -> dict[str, int]:
    groups = lab.cluster_status(host)["groups"]
    return dict(next(g for g in groups if g["group"] == "app1")["counters"])


def bridge_tables(lab: Any, host: str) -> str:
    return str(lab.exec(host, "nft", "list", "tables"))


def switchover_with_an_idle_connection(lab: Any) -> str:
    """
    app1 holds its VIP; a client connects and sends nothing; the VIP is
    switched over to app2 and the client's ARP entry moves; then the client
    sends its request on that connection: the status line it got.
    """
    lab.wait_for(lambda: lab.vip_holders(VIP1) == ["app1"], 20.0, f"{VIP1} held by app1")
    lab.wait_for(
        lambda: group_state(lab, "app2", "app1") == "BACKUP", 30.0, "app2 BACKUP of app1's VIP"
    )
    client = open_idle_connection(lab)
    lab.ctl("app1", "cluster", "switchover", "app1")
    moved_to(lab, "app2")
    return request_now(client)


def test_a_connection_open_across_a_switchover_is_answered_by_the_old_holder(
    production_lab: Any,
) -> None:
    """
    A connection app1 accepted before its VIP is switched over to app2, whose
    request comes after the client's ARP entry moved to app2, gets its 200 (from
    app1, which still has the VIP on lo and the connection): app2 bridged it.
    Later app2's bridge table is gone (after vip_drain).
    """
    lab = production_lab
    answered = switchover_with_an_idle_connection(lab)
    print(f"\nidle connection across a switchover, request after the ARP change: {answered}")
    assert answered == "HTTP/1.1 200 OK", answered
    counters = vip1_counters(lab, "app2")
    assert counters.get("bridged") == 1, counters
    assert vip1_counters(lab, "app1").get("parked") == 1
    lab.wait_for(
        lambda: vip1_counters(lab, "app2").get("unbridged") == 1, 10.0, "app2's bridge to end"
    )
    assert "clickpass_handoff_app1" not in bridge_tables(lab, "app2")


def test_a_connection_open_when_the_owner_takes_its_vip_back_is_answered(
    production_lab: Any,
) -> None:
    """
    app2 holds app1's VIP (after a switchover) and has accepted a connection to
    it; app1's node restarts and preempts its VIP back: the request sent on that
    connection after the client's ARP entry moved to app1 gets its 200 from
    app2 through app1's bridge.
    """
    lab = production_lab
    if lab.vip_holders(VIP1) != ["app2"]:
        lab.ctl("app1", "cluster", "switchover", "app1")
        moved_to(lab, "app2")
    lab.wait_for(
        lambda: "clickpass_handoff_app1" not in bridge_tables(lab, "app2"),
        10.0,
        "app2's bridge of the switchover to end",
    )
    client = open_idle_connection(lab)
    lab.stop_node("app1")
    lab.start_node("app1")
    moved_to(lab, "app1")
    answered = request_now(client)
    print(f"\nidle connection across a preempt, request after the ARP change: {answered}")
    assert answered == "HTTP/1.1 200 OK", answered
    assert vip1_counters(lab, "app1").get("bridged") == 1
    assert vip1_counters(lab, "app2").get("parked", 0) >= 1


def test_without_the_bridge_the_same_connection_is_reset() -> None:
    """With vip_bridge false on both app nodes, the request sent after the switchover
    reaches app2, which knows no such connection: it is reset, no answer comes."""
    lab = _lab(vip_bridge="false")
    try:
        answered = switchover_with_an_idle_connection(lab)
        print(f"\nidle connection across a switchover without the bridge: {answered}")
        assert not answered.startswith("HTTP/"), answered
        assert "reset" in answered.lower(), answered
        assert vip1_counters(lab, "app2").get("bridged", 0) == 0
    finally:
        lab.down()

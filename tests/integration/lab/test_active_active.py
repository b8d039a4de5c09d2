"""
Active-active app nodes in the lab, as conf/production/ configures them:
app1 and app2 each MASTER of its own VIP and BACKUP of the other's, a client
loading both VIPs, and app1's node killed and brought back.

The app nodes run on SQLite here (C{db=False}): what is tested is the app
VIPs, and the database pair's failover has its own lab tests
(test_db_failover.py); leaving MariaDB out keeps this test quick and its
timings clean on a loaded machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.heartbeat.conftest import load_lab
from tests.integration.heartbeat.probe import Attempt, GapProbe, Holding, VipWatch

labmod = load_lab()

pytestmark = [pytest.mark.integration, pytest.mark.root]

# Apart from the other lab tests' namespaces (cpt-, cpd-) and anyone's own lab.
PREFIX = os.environ.get("CLICKPASS_TEST_AALAB_PREFIX", "cpa-")
VIP1 = labmod.APP_VIPS["app1"]
VIP2 = labmod.APP_VIPS["app2"]

# A keep-alive HTTP/1.1 client: GET /healthz every 50 ms on one connection
# until SIGTERM; prints the count, or why the connection failed (exit 1).
KEEPALIVE = """
import http.client, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
conn.connect()
local = conn.sock.getsockname()
count = 0
try:
    while not stop:
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200 or conn.sock is None or conn.sock.getsockname() != local:
            print(f"answer {answer.status} after {count}, connection kept: {conn.sock is not None}")
            sys.exit(1)
        count += 1
        time.sleep(0.05)
except OSError as e:
    print(f"connection lost after {count} requests: {e}")
    sys.exit(1)
print(f"{count} requests on one connection")
"""


def _build_production_lab() -> Any:
    lab = labmod.Lab.for_run(PREFIX)
    try:
        lab.up(shape="production", db=False, timeout=120.0)
    except BaseException:
        lab.down()
        raise
    return lab


def as_built(lab: Any) -> list[str]:
    """
    What differs in C{lab} from the lab as L{_build_production_lab} left it,
    in what these tests rely on (empty: a test may start on it): each node
    running and not stopped, each app node holding its own VIP alone, MASTER
    of its group and BACKUP of the other's, the app hosts with the lab's ARP
    settings, and app1's VIP never parked nor handed off unparked by app1's
    node. A few commands only: each one costs on a loaded machine.
    """
    wrong = []
    for host in ("app1", "app2", "witness"):
        pid = lab.pid(host)
        if pid is None:
            wrong.append(f"{host} not running")
            continue
        for child in [pid, *lab.worker_pids(host)]:
            with contextlib.suppress(OSError):
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state == "T":
                    wrong.append(f"{host} process {child} stopped")
    if wrong:
        return wrong
    names = [s.split("=")[0] for s in labmod.ARP_SYSCTLS]
    values = [s.split("=")[1] for s in labmod.ARP_SYSCTLS]
    for host, other in (("app1", "app2"), ("app2", "app1")):
        vip = labmod.APP_VIPS[host]
        if lab.vip_holders(vip) != [host]:
            wrong.append(f"{vip} held by {lab.vip_holders(vip)}")
        groups = {str(g["group"]): g for g in lab.cluster_status(host)["groups"]}
        states = (groups[host]["state"], groups[other]["state"])
        if states != ("MASTER", "BACKUP"):
            wrong.append(f"{host}: groups {host}, {other} {states}")
        if host == "app1":
            counters = dict(groups["app1"]["counters"])
            moved = {k: counters.get(k, 0) for k in ("parked", "hand_off_unparked")}
            if any(moved.values()):
                wrong.append(f"app1's VIP moved by app1 already: {moved}")
        settings = lab.exec(host, "sysctl", "-n", *names).split()
        if settings != values:
            wrong.append(f"{host}: ARP settings {settings}")
    return wrong


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[list[Any]]:
    """The module's lab (built when first needed; replaced when a test changed it)."""
    holder: list[Any] = []
    yield holder
    for lab in holder:
        lab.down()


@pytest.fixture
def production_lab(shared_lab: list[Any]) -> Any:
    """
    The production shape (scripts/lab up's default), app nodes on SQLite: the
    module's lab when it is still as built (L{as_built}, checked before each
    test), else a new one; each bring-up costs about 10 s on a loaded machine.
    """
    if os.geteuid() != 0:
        pytest.fail("the lab needs root to create network namespaces", pytrace=False)
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"the lab needs {tool} (iproute2, curl)", pytrace=False)
    if shared_lab:
        try:
            changed = as_built(shared_lab[0])
        except labmod.LabError as e:
            changed = [str(e)]
        if not changed:
            return shared_lab[0]
        print(f"\nthe module's lab was changed ({'; '.join(changed)}): building a new one")
        shared_lab.pop().down()
    shared_lab.append(_build_production_lab())
    return shared_lab[0]


# One request sent whole on its own connection; then its answer's status line
# (or why none came) once the server answers.
IN_FLIGHT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
sock.settimeout(15)
path = b"/.well-known/openid-configuration"
sock.sendall(b"GET " + path + b" HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
print("sent", flush=True)
data = b""
try:
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


def group_state(lab: Any, host: str, group: str) -> str:
    """The state of C{group} on C{host}'s node ("" while it does not answer)."""
    try:
        status = lab.cluster_status(host)
    except labmod.LabError:
        return ""
    return next((str(g["state"]) for g in status["groups"] if g["group"] == group), "")


def settle(lab: Any, vip: str, holders: list[str], timeout: float) -> None:
    lab.wait_for(lambda: lab.vip_holders(vip) == holders, timeout, f"{vip} held by {holders}")


def recovered_at(attempts: list[Attempt], fault_at: float) -> float | None:
    """When the first request started after the fault that succeeded had its answer."""
    done = [a.finished for a in attempts if a.ok and a.started >= fault_at]
    return min(done) if done else None


def failed(attempts: list[Attempt]) -> list[Attempt]:
    return [a for a in attempts if not a.ok]


def start_keepalive(lab: Any, vip: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("client"),
            sys.executable,
            "-c",
            KEEPALIVE,
            vip,
            str(labmod.HTTP_PORT),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_each_app_node_serves_its_own_vip(production_lab: Any) -> None:
    """Both app nodes serve at once: each holds its own VIP, is MASTER of its group and
    BACKUP of the other's, and both VIPs answer the client."""
    lab = production_lab
    settle(lab, VIP1, ["app1"], 10.0)
    settle(lab, VIP2, ["app2"], 10.0)
    for host, other in (("app1", "app2"), ("app2", "app1")):
        lab.wait_for(
            lambda h=host, o=other: (
                (group_state(lab, h, h), group_state(lab, h, o)) == ("MASTER", "BACKUP")
            ),
            10.0,
            f"{host} MASTER of its own group and BACKUP of {other}'s",
        )
    assert lab.http_ok(lab.healthz(VIP1)) and lab.http_ok(lab.healthz(VIP2))
    assert labmod.neighbour_mac(lab, "client", VIP1) == labmod.interface_mac(lab, "app1")
    assert labmod.neighbour_mac(lab, "client", VIP2) == labmod.interface_mac(lab, "app2")


def test_kill9_of_app1_moves_only_its_vip_and_it_comes_back(production_lab: Any) -> None:
    """
    kill -9 of app1's node (node and heartbeat): requests to app1's VIP fail only
    until app2 has taken it over (measured and printed), none to app2's VIP fail,
    and app2 then serves both. When app1 is started again it takes its own VIP back
    with no moment when nobody holds it, while a keep-alive connection to app2's VIP
    carries on untouched.
    """
    lab = production_lab
    settle(lab, VIP1, ["app1"], 10.0)
    settle(lab, VIP2, ["app2"], 10.0)
    probe1 = GapProbe(lab, VIP1, labmod.HTTP_PORT)
    probe2 = GapProbe(lab, VIP2, labmod.HTTP_PORT)
    time.sleep(1.0)
    killed_at = time.monotonic()
    lab.signal_node("app1", signal.SIGKILL, whole_group=True)
    # app1's lease (2 s) lapses in its namespace: app2 alone holds both.
    settle(lab, VIP1, ["app2"], 10.0)
    lab.wait_for(lambda: lab.http_ok(lab.readyz(VIP1)), 10.0, "app1's VIP to answer")
    time.sleep(1.0)
    down_until = time.monotonic()
    lab.stop_node("app1")  # reap it

    # app1 comes back; a keep-alive client holds one connection to app2's VIP meanwhile.
    watch = VipWatch(lab, VIP1)
    keepalive = start_keepalive(lab, VIP2)
    time.sleep(0.5)
    restarted_at, restarted_wall = time.monotonic(), time.time()
    lab.start_node("app1")
    settle(lab, VIP1, ["app1"], 60.0)
    time.sleep(1.0)
    ended = time.monotonic()
    probe1.stop()
    probe2.stop()
    events = watch.stop()
    keepalive.terminate()
    kept, _ = keepalive.communicate(timeout=10)

    during1 = probe1.between(killed_at, down_until)
    moved = recovered_at(during1, killed_at)
    assert moved is not None, "app1's VIP never answered again"
    # Not answered at once: failed, or the client's SYN had to be sent again
    # (nobody held the address for a moment): see probe.py.
    hit1 = [a for a in during1 if not a.ok or a.gap]
    print(
        f"\napp1 killed: {len(failed(during1))} of {len(during1)} requests to app1's VIP"
        f" failed and {len(hit1) - len(failed(during1))} more waited for a SYN retransmit;"
        f" the first request started after the kill that succeeded was answered"
        f" {moved - killed_at:.3f} s after it"
        + (
            f"; the last of those started {hit1[-1].started - killed_at:.3f} s after it"
            if hit1
            else ""
        )
    )
    assert [a for a in hit1 if a.started > moved] == [], "app1's VIP failed after it moved"
    assert moved - killed_at < 5.0
    assert sum(a.ok for a in during1) >= 10

    back1 = probe1.between(restarted_at, ended)
    cut = [a for a in back1 if a.cut]
    holding = Holding.after(watch.holders_over_time(["app2"]), restarted_wall)
    print(
        f"app1 back: {len(back1)} requests to app1's VIP, {len(failed(back1))} failed"
        f" ({len(cut)} in flight when the client's ARP entry moved); holders of app1's VIP"
        f" {[h for _, h in holding.changes]}, both for at most {holding.longest_shared:.3f} s"
    )
    assert [a for a in back1 if a.gap] == [], "nobody answered app1's VIP for a new connection"
    assert watch.moments_without_holder(["app2"]) == [], f"app1's VIP unheld: {events}"
    assert ("app1", "add") in events and ("app2", "del") in events

    all2 = probe2.between(killed_at, ended)
    hit2 = [a for a in all2 if not a.ok or a.gap]
    print(f"app2's VIP: {len(all2)} requests, {len(hit2)} failed or not answered at once")
    assert hit2 == [], f"requests to app2's VIP failed or waited: {hit2[:5]}"
    assert len(all2) >= 50
    print(f"keep-alive connection to app2's VIP: {kept.strip()}")
    assert keepalive.returncode == 0, kept
    assert lab.vip_holders(VIP2) == ["app2"]
    assert group_state(lab, "app2", "app2") == "MASTER"
    lab.wait_for(
        lambda: group_state(lab, "app2", "app1") == "BACKUP", 5.0, "app2 BACKUP of app1's VIP"
    )


def answer_in_flight_across_a_switchover(lab: Any, holder: str, other: str) -> str:
    """
    Send a request to app1's VIP while C{holder} holds it and its workers are
    stopped (so it is still being served), switch the VIP over to C{other},
    let the workers go on: the status line the client got, or why none came.
    """
    settle(lab, VIP1, [holder], 20.0)
    lab.wait_for(
        lambda: group_state(lab, other, "app1") == "BACKUP", 30.0, f"{other} BACKUP of app1's VIP"
    )
    time.sleep(0.5)  # and heard so by the holder
    workers = lab.worker_pids(holder)
    assert workers, f"no workers on {holder}"
    client = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("client"), sys.executable, "-c", IN_FLIGHT, VIP1,
         str(labmod.HTTP_PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "sent"
        time.sleep(0.2)  # the front has handed it to a (stopped) worker
        lab.ctl(holder, "cluster", "switchover", "app1")
        settle(lab, VIP1, [other], 10.0)
        time.sleep(0.3)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    out, _ = client.communicate(timeout=30)
    return out.strip()


def test_a_request_in_flight_when_the_vip_is_switched_over_gets_its_answer(
    production_lab: Any,
) -> None:
    """
    A request already sent to app1 when its VIP is switched over to app2 is
    answered by app1: the handed-off address stays on app1's lo for the drain
    (app1 no longer answers ARP for it). Without the ARP settings that make
    that safe (arp_ignore 0 on app1) the address goes at once, and the same
    request gets no answer: app1 cannot send from an address it lost.
    """
    lab = production_lab
    answered = answer_in_flight_across_a_switchover(lab, "app1", "app2")
    print(f"\nin flight across a hand-off with the VIP kept on lo: {answered}")
    assert answered == "HTTP/1.1 200 OK", answered
    assert vip1_counters(lab, "app1").get("parked") == 1
    assert labmod.neighbour_mac(lab, "client", VIP1) == labmod.interface_mac(lab, "app2")

    # Back to app1 (its planned move, from app2), then app1 no longer ARP-quiet.
    lab.ctl("app2", "cluster", "switchover", "app1")
    settle(lab, VIP1, ["app1"], 20.0)
    lab.exec("app1", "sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=0")
    lost = answer_in_flight_across_a_switchover(lab, "app1", "app2")
    print(f"in flight across a hand-off released at once: {lost}")
    assert not lost.startswith("HTTP/"), lost
    counters = vip1_counters(lab, "app1")
    assert (counters.get("parked"), counters.get("hand_off_unparked")) == (1, 1), counters


def vip1_counters(lab: Any, host: str) -> dict[str, int]:
    """The counters of app1's VIP group on C{host}."""
    groups = lab.cluster_status(host)["groups"]
    return dict(next(g for g in groups if g["group"] == "app1")["counters"])

"""
The balancer benchmark behind C{scripts/bench-balancer}: one node (real
C{twistd clickpass}, real application), measured with wrk (a) through the
Clickpass front, (b) through HAProxy (leastconn, keep-alive, to the same
worker unix sockets) and (c) straight to one extra worker on TCP; on a
small response and on SSO endpoints. Prints req/s, p50 and p99 for each,
the answers that were not 2xx or 3xx and wrk's socket errors, the front's
CPU per proxied request, and the ratios against HAProxy last. With
C{--revision REV} the node and its workers run another revision of this
repository (checked out and built as C{scripts/bench-worker}'s), so that
the ratios of two revisions can be put side by side. The node
runs on SQLite, or with C{--database mariadb} on a private MariaDB server
(L{clickpass.storage.private_server}, as the tests start them) in the
temporary directory.

A benchmark, not a test: it asserts nothing. It must never touch anything
but loopback and the temporary directory it creates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from clickpass.balancer.settings import BalancerSettings
from clickpass.storage.private_server import MariaDBServer, MariaDBUnavailable
from devtools.revision import ROOT, checkout

VENV_BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")

# The relying party's realm: a loopback address, so that verifying its
# return_to (relying-party discovery) never leaves the machine; the provider
# refuses private addresses without connecting and answers "unverifiable".
REALM = "http://127.0.0.1:9/"
BENCH_EMAIL = "bench@example.com"
BENCH_PASSWORD = secrets.token_urlsafe(16)


def openid_path(mode: str, realm: str = REALM) -> str:
    """An OpenID 2.0 checkid request (identifier_select) for C{realm}."""
    select = "http://specs.openid.net/auth/2.0/identifier_select"
    return "/openid?" + urlencode(
        {
            "openid.ns": "http://specs.openid.net/auth/2.0",
            "openid.mode": mode,
            "openid.claimed_id": select,
            "openid.identity": select,
            "openid.return_to": realm + "return",
            "openid.realm": realm,
        }
    )


ENDPOINTS: list[tuple[str, str, list[str]]] = [
    # A small answer of the application with no database work (the OP's
    # XRDS document). Not /healthz: the front answers that itself.
    ("small", "/openid/xrds", []),
    ("discovery", "/", ["-H", "Accept: application/xrds+xml"]),
    ("immediate_anon", openid_path("checkid_immediate"), []),
    # The signed-in case: the session cookie is added by sign_in_and_approve().
    ("immediate_signed", openid_path("checkid_immediate"), []),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    return sum(user_and_system_seconds(pid))


def user_and_system_seconds(pid: int) -> tuple[float, float]:
    """The CPU time C{pid} has used so far, in user space and in the kernel."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def write_node_config(
    work: Path, port: int, workers: int, server: MariaDBServer | None = None
) -> None:
    """
    A node's configuration in C{work}: its data there, HTTP on loopback
    C{port}; on SQLite, or on C{server}'s database (password in a file).
    """
    database = ""
    if server is not None:
        password_file = work / "db-password"
        password_file.write_text(server.password + "\n")
        password_file.chmod(0o600)
        database = (
            f'[database]\nbackend = "mysql"\nhost = "{server.host}"\nport = {server.port}\n'
            f'user = "{server.user}"\nname = "{server.database}"\n'
            f'password_file = "{password_file}"\n'
        )
    (work / "node.toml").write_text(
        f'[node]\ndata_dir = "{work}/data"\n'
        f'[web]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
        f"[workers]\ncount = {workers}\n" + database
    )


def extra_worker(tree: Path, work: Path, socket_path: Path, port: int) -> list[str]:
    """
    The command line of one more worker of the node configured in C{work},
    outside its front, for the tree at C{tree} (run with it on
    C{PYTHONPATH}): on C{socket_path}, and on TCP C{port} for wrk. It
    prints C{ready PID} when it serves. Revisions before devtools/ had the
    TCP listener as an option of clickpass.worker itself.
    """
    module = (
        "devtools.worker" if (tree / "devtools" / "worker.py").is_file() else "clickpass.worker"
    )
    return [
        sys.executable,
        "-m",
        module,
        "--config",
        str(work / "node.toml"),
        "--socket",
        str(socket_path),
        "--also-listen",
        f"tcp:{port}:interface=127.0.0.1",
    ]


def context_switches(pid: int) -> tuple[int, int]:
    """
    How often C{pid} has gone to sleep (voluntary context switches: each
    time it waited in epoll with nothing to do) and been preempted while it
    could run (involuntary ones), counting all its threads.
    """
    sleeps = preempted = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                sleeps += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                preempted += int(line.split()[1])
    return sleeps, preempted


class Side:
    """
    What one balancer (the front, or HAProxy) cost over the runs through it:
    its CPU time (and how much of it in the kernel), its sleeps and
    preemptions, and the CPU of the workers behind it, per request. The
    workers are the same processes behind either side, so a difference in
    theirs is what the balancer makes them do.

    Its cost per request depends on the rate: at a few thousand requests a
    second each request wakes it on its own, on caches the workers have just
    used, where under heavier load one wake-up serves several.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.runs: list[dict[str, Any]] = []
        self.totals = {"cpu": 0.0, "kernel": 0.0, "workers": 0.0, "sleeps": 0.0, "preempted": 0.0}

    def run(self, worker_pids: list[int], load: Callable[[], dict[str, Any]]) -> None:
        """Run C{load} (one wrk run through this side) and count what it cost."""
        user, system = user_and_system_seconds(self.pid)
        sleeps, preempted = context_switches(self.pid)
        workers = sum(cpu_seconds(p) for p in worker_pids)
        self.runs.append(load())
        user_after, system_after = user_and_system_seconds(self.pid)
        sleeps_after, preempted_after = context_switches(self.pid)
        totals = self.totals
        totals["cpu"] += user_after + system_after - user - system
        totals["kernel"] += system_after - system
        totals["sleeps"] += sleeps_after - sleeps
        totals["preempted"] += preempted_after - preempted
        totals["workers"] += sum(cpu_seconds(p) for p in worker_pids) - workers

    def per_request(self, what: str) -> float:
        requests = sum(r["requests"] for r in self.runs)
        return self.totals[what] / requests if requests else float("nan")

    def us(self, what: str) -> float:
        """A CPU total per request, in microseconds."""
        return 1e6 * self.per_request(what)


def stop_all(processes: list[subprocess.Popen[bytes]], seconds: float) -> None:
    """SIGTERM each process still running, last started first; SIGKILL after C{seconds}."""
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(seconds)
            except subprocess.TimeoutExpired:
                process.kill()


def wrk(url: str, extra: list[str], seconds: int, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout

    def latency(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not m:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non2xx": int(bad.group(1)) if bad else 0,
        "errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    }


_FORM_FIELD = re.compile(r'name="(csrf_token|payload|mac)" value="([^"]*)"')


def _form(html: str) -> dict[str, str]:
    return {name: unescape(value) for name, value in _FORM_FIELD.findall(html)}


def sign_in_and_approve(base: str) -> str:
    """
    Create an account (through the sign-up page), approve the realm once
    (checkid_setup and the consent form), check that checkid_immediate now
    answers a positive assertion, and return the Cookie header to send.
    """
    session = requests.Session()
    page = session.get(base + "/signup", timeout=30)
    fields = {
        "email": BENCH_EMAIL,
        "password": BENCH_PASSWORD,
        "password_again": BENCH_PASSWORD,
        "next": "/account",
        "csrf_token": _form(page.text)["csrf_token"],
    }
    signed = session.post(base + "/signup", data=fields, allow_redirects=False, timeout=30)
    if signed.status_code == 200:
        # Sign-up mails a link and signs nobody in (a revision before that
        # answered 303, signed in): sign in with the new password.
        page = session.get(base + "/signin", timeout=30)
        fields = {
            "email": BENCH_EMAIL,
            "password": BENCH_PASSWORD,
            "next": "/account",
            "csrf_token": _form(page.text)["csrf_token"],
        }
        signed = session.post(base + "/signin", data=fields, allow_redirects=False, timeout=30)
    if signed.status_code != 303:
        raise RuntimeError(f"sign-up answered {signed.status_code}: {signed.text[:300]}")
    consent = session.get(base + openid_path("checkid_setup"), allow_redirects=False, timeout=30)
    if consent.status_code != 200:
        raise RuntimeError(f"checkid_setup answered {consent.status_code}: {consent.text[:300]}")
    decision = {**_form(consent.text), "decision": "allow"}
    allowed = session.post(
        base + "/openid/decide", data=decision, allow_redirects=False, timeout=30
    )
    if allowed.status_code != 302:
        raise RuntimeError(f"the consent form answered {allowed.status_code}")
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    check = requests.get(
        base + openid_path("checkid_immediate"),
        headers={"Cookie": cookie},
        allow_redirects=False,
        timeout=30,
    )
    location = check.headers.get("location", "")
    if check.status_code != 302 or "openid.mode=id_res" not in location:
        raise RuntimeError(f"checkid_immediate is not positive: {check.status_code} {location}")
    return cookie


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (of several rounds)."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def haproxy_config(port: int, sockets: list[str], maxconn: int) -> str:
    """
    HAProxy set up as the front is: leastconn over the same worker sockets,
    keep-alive both ways, C{maxconn} (the front's max_in_flight) requests
    per worker, and the same X-Forwarded-For/-Proto/-Host and
    X-Clickpass-Client headers added to each request, so that the workers do
    the same work behind either.
    """
    servers = "\n".join(
        f"    server w{i} unix@{path} maxconn {maxconn}" for i, path in enumerate(sockets)
    )
    return f"""global
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 10s
    option http-keep-alive
    http-reuse always
frontend front
    bind 127.0.0.1:{port}
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Clickpass-Client %[src]
    default_backend workers
backend workers
    balance leastconn
{servers}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-balancer")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate clickpass and haproxy runs this many times; report the medians",
    )
    parser.add_argument(
        "--only", action="append", default=[], help="run only this endpoint (repeatable)"
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "mariadb"),
        default="sqlite",
        help="the node's database: SQLite, or a private MariaDB server started for the run",
    )
    parser.add_argument(
        "--revision",
        metavar="REV",
        help="run the node and its workers from this git revision instead of the work tree "
        "(checked out and built as bench-worker's --against)",
    )
    args = parser.parse_args(argv)
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench-balancer: {tool} is not installed", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="clickpass-bench-"))
    front_port, haproxy_port, direct_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    server: MariaDBServer | None = None
    try:
        if args.database == "mariadb":
            server = MariaDBServer(work / "mariadb")
            try:
                server.start()
            except MariaDBUnavailable as e:
                print(f"bench-balancer: {e}", file=sys.stderr)
                return 1
        tree = checkout(args.revision, work / "revision") if args.revision else ROOT
        # The revision's code first on the path of the node, its workers and clickpass-ctl.
        env = {**os.environ, "PYTHONPATH": str(tree)} if args.revision else None
        write_node_config(work, front_port, args.workers, server)
        log = open(work / "node.log", "wb")  # noqa: SIM115
        node = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "clickpass", "--config", "node.toml"],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        processes.append(node)
        ctl = [str(VENV_BIN / "clickpass-ctl"), "--config", str(work / "node.toml"), "--json"]
        deadline = time.monotonic() + 60
        workers: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            time.sleep(0.3)
            done = subprocess.run([*ctl, "workers"], capture_output=True, cwd=work, env=env)
            if done.returncode == 0:
                workers = [w for w in json.loads(done.stdout) if w["state"] == "ready"]
                if len(workers) == args.workers:
                    break
        else:
            print("bench-balancer: the node did not start; see " + str(work / "node.log"))
            return 1
        sockets = [w["socket"] for w in workers]
        worker_pids = [int(w["pid"]) for w in workers]
        per_worker = BalancerSettings().max_in_flight
        (work / "haproxy.cfg").write_text(haproxy_config(haproxy_port, sockets, per_worker))
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        haproxy_process = subprocess.Popen(
            [haproxy, "-db", "-f", str(work / "haproxy.cfg")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(haproxy_process)
        direct = subprocess.Popen(
            extra_worker(tree, work, work / "direct.sock", direct_port),
            cwd=work,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        processes.append(direct)
        assert direct.stdout is not None
        direct.stdout.readline()
        time.sleep(0.5)
        cookie = sign_in_and_approve(f"http://127.0.0.1:{front_port}")
        endpoints = [
            (name, path, ["-H", f"Cookie: {cookie}"] if name == "immediate_signed" else extra)
            for name, path, extra in ENDPOINTS
            if not args.only or name in args.only
        ]
        rows: list[tuple[str, str, dict[str, Any] | None]] = []
        ratios = []
        for name, path, extra in endpoints:
            # Warm up every path once.
            for port in (front_port, haproxy_port, direct_port):
                wrk(f"http://127.0.0.1:{port}{path}", extra, 1, 4)
            sides = {"ours": Side(node.pid), "theirs": Side(haproxy_process.pid)}
            for round_ in range(args.rounds):
                # Alternate who goes first: on a shared machine the load
                # drifts, and a fixed order would favour one side.
                order = ("ours", "theirs") if round_ % 2 == 0 else ("theirs", "ours")
                for side in order:
                    url = f"http://127.0.0.1:{front_port if side == 'ours' else haproxy_port}{path}"
                    sides[side].run(
                        worker_pids, partial(wrk, url, extra, args.seconds, args.connections)
                    )
            straight = wrk(
                f"http://127.0.0.1:{direct_port}{path}", extra, args.seconds, args.connections
            )
            ours_side, theirs_side = sides["ours"], sides["theirs"]
            ours, theirs = _median_run(ours_side.runs), _median_run(theirs_side.runs)
            for label, r in (("clickpass", ours), ("haproxy", theirs), ("one worker", straight)):
                rows.append((name, label, r))
            ratio = ours["rps"] / theirs["rps"] if theirs["rps"] else float("nan")
            ratios.append(f"{name} {ratio:.2f}x")
            per_round = [
                a["rps"] / b["rps"]
                for a, b in zip(ours_side.runs, theirs_side.runs, strict=True)
                if b["rps"]
            ]
            spread = (
                f"; ratio per round {min(per_round):.2f}-{max(per_round):.2f}"
                if len(per_round) > 1
                else ""
            )
            rows.append(
                (
                    name,
                    f"CPU per request: clickpass front {ours_side.us('cpu'):.1f} us"
                    f" ({ours_side.us('kernel'):.1f} in the kernel),"
                    f" haproxy {theirs_side.us('cpu'):.1f} us ({theirs_side.us('kernel'):.1f});"
                    f" workers behind them {ours_side.us('workers'):.1f} us,"
                    f" {theirs_side.us('workers'):.1f} us" + spread,
                    None,
                )
            )
            rows.append(
                (
                    name,
                    "sleeps/preemptions per request: clickpass front"
                    f" {ours_side.per_request('sleeps'):.2f}/"
                    f"{ours_side.per_request('preempted'):.2f},"
                    f" haproxy {theirs_side.per_request('sleeps'):.2f}/"
                    f"{theirs_side.per_request('preempted'):.2f}",
                    None,
                )
            )
        print(f"database: {args.database}")
        print(f"revision: {args.revision or 'this tree'}")
        print(
            f"{'endpoint':<18} {'via':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'non-2xx':>8} {'errors':>7}"
        )
        for name, label, row in rows:
            if row is None:
                print(f"{name:<18} {label}")
                continue
            print(
                f"{name:<18} {label:<12} {row['rps']:>9.0f} {row['p50_ms']:>8.2f} "
                f"{row['p99_ms']:>8.2f} {row['non2xx']:>8} {row['errors']:>7}"
            )
        bad = sum(row["non2xx"] + row["errors"] for _, _, row in rows if row is not None)
        conflicts = (work / "node.log").read_text(errors="replace").count("lost a lock conflict")
        print(
            f"non-2xx answers and socket errors in all: {bad}; transactions run again "
            f"after a lock conflict (node log): {conflicts}"
        )
        print(f"clickpass/haproxy throughput: {', '.join(ratios)}")
        return 0
    finally:
        stop_all(processes, 20)
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

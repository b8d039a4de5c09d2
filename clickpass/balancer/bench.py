"""
The balancer benchmark behind C{scripts/bench-balancer}: one node (real
C{twistd clickpass}, real application), measured with wrk (a) through the
Clickpass front, (b) through HAProxy (leastconn, keep-alive, to the same
worker unix sockets) and (c) straight to one extra worker on TCP; on a
small response and on SSO endpoints. Prints req/s, p50 and p99 for each,
the front's CPU per proxied request, and the ratios against HAProxy last.

A benchmark, not a test: it asserts nothing. It must never touch anything
but loopback and the temporary directory it creates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")

ENDPOINTS = [
    ("small", "/healthz", []),
    ("discovery", "/", ["-H", "Accept: application/xrds+xml"]),
    (
        "checkid_immediate",
        "/openid?openid.ns=http%3A%2F%2Fspecs.openid.net%2Fauth%2F2.0"
        "&openid.mode=checkid_immediate"
        "&openid.claimed_id=http%3A%2F%2Fspecs.openid.net%2Fauth%2F2.0%2Fidentifier_select"
        "&openid.identity=http%3A%2F%2Fspecs.openid.net%2Fauth%2F2.0%2Fidentifier_select"
        "&openid.return_to=http%3A%2F%2Frp.example%2Freturn&openid.realm=http%3A%2F%2Frp.example%2F",
        [],
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


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
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non2xx": int(bad.group(1)) if bad else 0,
    }


def haproxy_config(port: int, sockets: list[str], maxconn: int) -> str:
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
    args = parser.parse_args(argv)
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench-balancer: {tool} is not installed", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="clickpass-bench-"))
    front_port, haproxy_port, direct_port = free_port(), free_port(), free_port()
    (work / "node.toml").write_text(
        f'[node]\ndata_dir = "{work}/data"\n'
        f'[web]\nlisten = ["tcp:{front_port}:interface=127.0.0.1"]\n'
        f"[workers]\ncount = {args.workers}\n"
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        log = open(work / "node.log", "wb")  # noqa: SIM115
        node = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "clickpass", "--config", "node.toml"],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(node)
        ctl = [str(VENV_BIN / "clickpass-ctl"), "--config", str(work / "node.toml"), "--json"]
        deadline = time.monotonic() + 60
        workers: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            time.sleep(0.3)
            done = subprocess.run([*ctl, "workers"], capture_output=True, cwd=work)
            if done.returncode == 0:
                workers = [w for w in json.loads(done.stdout) if w["state"] == "ready"]
                if len(workers) == args.workers:
                    break
        else:
            print("bench-balancer: the node did not start; see " + str(work / "node.log"))
            return 1
        sockets = [w["socket"] for w in workers]
        (work / "haproxy.cfg").write_text(haproxy_config(haproxy_port, sockets, 32))
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        processes.append(
            subprocess.Popen(
                [haproxy, "-db", "-f", str(work / "haproxy.cfg")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        direct = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clickpass.worker",
                "--config",
                str(work / "node.toml"),
                "--socket",
                str(work / "direct.sock"),
                "--also-listen",
                f"tcp:{direct_port}:interface=127.0.0.1",
            ],
            cwd=work,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        processes.append(direct)
        assert direct.stdout is not None
        direct.stdout.readline()
        time.sleep(0.5)
        rows: list[tuple[str, str, dict[str, Any] | None]] = []
        ratios = []
        for name, path, extra in ENDPOINTS:
            # Warm up every path once.
            for port in (front_port, haproxy_port, direct_port):
                wrk(f"http://127.0.0.1:{port}{path}", extra, 1, 4)
            before = cpu_seconds(node.pid)
            ours = wrk(
                f"http://127.0.0.1:{front_port}{path}", extra, args.seconds, args.connections
            )
            front_cpu = cpu_seconds(node.pid) - before
            theirs = wrk(
                f"http://127.0.0.1:{haproxy_port}{path}", extra, args.seconds, args.connections
            )
            straight = wrk(
                f"http://127.0.0.1:{direct_port}{path}", extra, args.seconds, args.connections
            )
            us = 1e6 * front_cpu / ours["requests"] if ours["requests"] else float("nan")
            for label, r in (("clickpass", ours), ("haproxy", theirs), ("one worker", straight)):
                rows.append((name, label, r))
            ratio = ours["rps"] / theirs["rps"] if theirs["rps"] else float("nan")
            ratios.append(f"{name} {ratio:.2f}x")
            rows.append((name, f"front CPU {us:.1f} us/request", None))
        print(
            f"{'endpoint':<18} {'via':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
        )
        for name, label, row in rows:
            if row is None:
                print(f"{name:<18} {label}")
                continue
            print(
                f"{name:<18} {label:<12} {row['rps']:>9.0f} {row['p50_ms']:>8.2f} "
                f"{row['p99_ms']:>8.2f} {row['non2xx']:>8}"
            )
        print(f"clickpass/haproxy throughput: {', '.join(ratios)}")
        return 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

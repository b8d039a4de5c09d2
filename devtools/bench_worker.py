"""
The instruction counts behind C{scripts/bench-worker}: how many instructions
one worker runs per request, or with C{--front} how many the node's front
runs per request it proxies, counted by valgrind's callgrind, for this tree
and, with C{--against REV}, for another revision of it, in the same run.

Wall-clock and CPU-time benchmarks on a shared VM move by 20% from one run
to the next; an instruction count does not (the same code and requests give
the same count within 0.2%, whatever else the machine does). So this is the
measure for a change to the workers' code, or to the front's. It says
nothing about cache misses, system calls or waiting: C{scripts/bench-balancer}
measures those, end to end.

Each revision gets its own node (real C{twistd clickpass}, SQLite) in a
temporary directory, and its own signed-in person who approved the realm.
For a worker, one extra worker of that revision then runs under callgrind;
for the front, the node itself runs under callgrind, and its workers
natively. Either way instrumentation stays off until the warm-up requests
are done. Only loopback is used.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from devtools import bench_balancer as bench
from devtools.revision import ROOT, checkout

WARM_UP = 30
CONFIG = ["--config", "node.toml"]
# Seconds for a node to serve: a front under callgrind runs tens of times
# slower than natively.
NODE_START = 60
FRONT_START = 300
# A front's timers run per second, not per request: under callgrind its
# webhook outbox poll (each second), pool sweep (each 0.5 s) and health checks
# (each 5 s) cost about 0.8 M instructions a second, 1-3% of a count and more
# on a slower machine, and whether a poll falls in the measured second or not
# moved counts by 1%. So the measured front has them off (or once an hour).
QUIET_FRONT = """
[partners]
webhook_poll_interval = 3600
[balancer]
health_interval = 0
sweep_interval = 3600
"""


def _wait_until_serving(node: subprocess.Popen[bytes], log: Path, url: str, seconds: float) -> None:
    """
    Wait for C{url} to answer 200. A node that exits (an older revision that
    refuses the configuration, say) fails at once, with the end of its log:
    the temporary directory that holds the log goes with the failure.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and node.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"the node did not answer {url} within {seconds:.0f} s:\n{tail}")


def _callgrind(work: Path) -> list[str]:
    """
    valgrind's callgrind, counting nothing until told to. Children are not
    traced (the default, spelt out so that a C{~/.valgrindrc} cannot change
    it): the workers a front under callgrind starts run natively, and count
    nowhere.
    """
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=no",
        f"--callgrind-out-file={work}/callgrind.out.%p",
    ]


def _control(pid: int, command: str) -> None:
    subprocess.run(["callgrind_control", command, str(pid)], capture_output=True, check=True)


def _last_dump_total(work: Path, pid: int) -> int:
    """C{callgrind_control --dump}, then the instruction total of that dump."""
    _control(pid, "--dump")
    dumps = sorted(glob.glob(f"{work}/callgrind.out.{pid}.*"), key=os.path.getmtime)
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    for line in Path(dumps[-1]).read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals line in {dumps[-1]}")


def _headers(name: str, extra: list[str], cookie: str) -> dict[str, str]:
    """An endpoint's request headers: its wrk C{-H} options, and the session for the signed one."""
    headers = {"Cookie": cookie} if name == "immediate_signed" else {}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag == "-H":
            key, _, header_value = value.partition(": ")
            headers[key] = header_value
    return headers


def _send(session: requests.Session, url: str, headers: dict[str, str], n: int) -> None:
    for _ in range(n):
        answer = session.get(url, headers=headers, allow_redirects=False, timeout=120)
        if answer.status_code >= 400:
            raise RuntimeError(f"{url} answered {answer.status_code}")


def _count_per_request(
    work: Path, pid: int, port: int, endpoints: list[str], cookie: str, count: int
) -> dict[str, float]:
    """
    Instructions per request, per endpoint, of process C{pid} (under
    callgrind) when C{count} requests go to C{port} over one keep-alive
    connection, after C{WARM_UP} that are not counted.
    """
    results: dict[str, float] = {}
    session = requests.Session()
    for name, path, extra in bench.ENDPOINTS:
        if name not in endpoints:
            continue
        url, headers = f"http://127.0.0.1:{port}{path}", _headers(name, extra, cookie)
        _send(session, url, headers, WARM_UP)
        _last_dump_total(work, pid)  # drops what the warm-up counted
        _control(pid, "--instr=on")
        _send(session, url, headers, count)
        _control(pid, "--instr=off")
        results[name] = _last_dump_total(work, pid) / count
    return results


def _start_worker(
    work: Path, source: Path, env: dict[str, str], port: int
) -> subprocess.Popen[bytes]:
    """
    One more worker of the node in C{work}, of the tree at C{source}, under
    callgrind, on TCP C{port}.
    """
    with open(work / "valgrind.log", "wb") as log:
        worker = subprocess.Popen(
            [*_callgrind(work), *bench.extra_worker(source, work, work / "measured.sock", port)],
            cwd=work,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
    assert worker.stdout is not None
    if not worker.stdout.readline().startswith(b"ready"):
        raise RuntimeError(f"the measured worker did not start; see {work}/valgrind.log")
    return worker


def measure(
    source: Path, endpoints: list[str], count: int, front: bool, seed: int = 0
) -> dict[str, float]:
    """
    Instructions per request, per endpoint, for the tree at C{source}: of its
    front (C{front}) or of one of its workers, with hash seed C{seed}.
    """
    work = Path(tempfile.mkdtemp(prefix="clickpass-bench-worker-"))
    front_port, worker_port = bench.free_port(), bench.free_port()
    bench.write_node_config(work, front_port, 1)
    if front:
        with open(work / "node.toml", "a") as config:
            config.write(QUIET_FRONT)
    # A given hash seed: with a random one, dictionary and method-cache
    # collisions moved a front's count by up to 1.7% from one run to the next
    # (a worker's by 0.2%). Each seed repeats within 0.1%; measure_seeds
    # takes the median over several.
    env = {**os.environ, "PYTHONPATH": str(source), "PYTHONHASHSEED": str(seed)}
    twistd = [str(bench.VENV_BIN / "twistd"), "-n", "--pidfile=", "clickpass", *CONFIG]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with open(work / "node.log", "wb") as log:
            node = subprocess.Popen(
                [*_callgrind(work), *twistd] if front else twistd,
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        processes.append(node)
        base = f"http://127.0.0.1:{front_port}"
        _wait_until_serving(
            # /readyz: a worker answers it (once one is ready) and the
            # database with it; the front answers /healthz by itself.
            node,
            work / "node.log",
            base + "/readyz",
            FRONT_START if front else NODE_START,
        )
        cookie = bench.sign_in_and_approve(base)
        if front:
            return _count_per_request(work, node.pid, front_port, endpoints, cookie, count)
        worker = _start_worker(work, source, env, worker_port)
        processes.append(worker)
        return _count_per_request(work, worker.pid, worker_port, endpoints, cookie, count)
    finally:
        # A process under valgrind takes longer to stop.
        bench.stop_all(processes, 60)
        shutil.rmtree(work, ignore_errors=True)


def measure_seeds(
    source: Path, endpoints: list[str], count: int, front: bool, seeds: int
) -> dict[str, float]:
    """
    L{measure} with hash seeds 0 to C{seeds} - 1, the median per endpoint.
    One seed can be unlucky: the front of 8e0be8a counted 102.3 k
    instructions per request on small with seed 0, 100.1-100.3 k with
    seeds 1 to 4 (the difference is in the interpreter's dictionary lookups
    and method-cache misses; docs/balancer.md).
    """
    runs = [measure(source, endpoints, count, front, seed) for seed in range(seeds)]
    return {name: statistics.median(run[name] for run in runs) for name in endpoints}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-worker")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per endpoint")
    parser.add_argument(
        "--only", action="append", default=[], help="measure only this endpoint (repeatable)"
    )
    parser.add_argument("--against", metavar="REV", help="also measure this git revision")
    parser.add_argument(
        "--revision",
        metavar="REV",
        help="measure this git revision instead of the work tree (built as --against's is)",
    )
    parser.add_argument(
        "--front",
        action="store_true",
        help="count the node's front per proxied request, not one worker",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        help="runs per tree, with hash seeds 0..N-1, reporting the median "
        "(default: 3 with --front, 1 otherwise)",
    )
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (3 if args.front else 1)
    if seeds < 1:
        print("bench-worker: --seeds must be at least 1", file=sys.stderr)
        return 2
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("bench-worker: valgrind is not installed", file=sys.stderr)
        return 1
    endpoints = args.only or [name for name, _path, _extra in bench.ENDPOINTS]
    unknown = set(endpoints) - {name for name, _path, _extra in bench.ENDPOINTS}
    if unknown:
        print(f"bench-worker: unknown endpoint {sorted(unknown)[0]}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="clickpass-bench-worker-rev-") as scratch:
        here = checkout(args.revision, Path(scratch) / "revision") if args.revision else ROOT
        ours = measure_seeds(here, endpoints, args.requests, args.front, seeds)
        theirs: dict[str, float] = {}
        if args.against:
            tree = checkout(args.against, Path(scratch) / "against")
            theirs = measure_seeds(tree, endpoints, args.requests, args.front, seeds)
    name_ours = args.revision or "this tree"
    # Millions to four places in the table, three on the last line: a front's
    # count is about 0.1 M, and runs of it agree within 0.1%.
    print(f"{'endpoint':<18} {name_ours:>14}" + (f" {args.against:>14}" if theirs else ""))
    for name in endpoints:
        line = f"{name:<18} {ours[name] / 1e6:>12.4f} M"
        if theirs:
            line += f" {theirs[name] / 1e6:>12.4f} M"
        print(line)
    summary = ", ".join(
        f"{name} {ours[name] / theirs[name]:.2f}x" if theirs else f"{name} {ours[name] / 1e6:.3f} M"
        for name in endpoints
    )
    what = "front instructions per request" if args.front else "instructions per request"
    label = f"{name_ours}/{args.against} {what}" if theirs else what
    print(f"{label}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

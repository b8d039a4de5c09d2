"""
The worker instruction count behind C{scripts/bench-worker}: how many
instructions one worker runs per request, counted by valgrind's callgrind,
for this tree and, with C{--against REV}, for another revision of it, in
the same run.

Wall-clock and CPU-time benchmarks on a shared VM move by 20% from one run
to the next; an instruction count does not (the same code and requests give
the same count within 0.2%, whatever else the machine does). So this is the
measure for a change to the workers' code. It says nothing about cache
misses, system calls or waiting: C{scripts/bench-balancer} measures those,
end to end.

Each revision gets its own node (real C{twistd clickpass}, SQLite) in a
temporary directory, and its own signed-in person who approved the realm;
one extra worker of that revision then runs under callgrind, with
instrumentation off until the warm-up requests are done. Only loopback is
used.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from clickpass.balancer import bench

WARM_UP = 30
CONFIG = ["--config", "node.toml"]


def _wait_until_serving(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the node did not answer {url} within {seconds:.0f} s")


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


def measure(source: Path, endpoints: list[str], count: int) -> dict[str, float]:
    """Instructions per request, per endpoint, for the tree at C{source}."""
    work = Path(tempfile.mkdtemp(prefix="clickpass-bench-worker-"))
    front_port, worker_port = bench.free_port(), bench.free_port()
    bench.write_node_config(work, front_port, 1)
    env = {**os.environ, "PYTHONPATH": str(source)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with open(work / "node.log", "wb") as log:
            processes.append(
                subprocess.Popen(
                    [str(bench.VENV_BIN / "twistd"), "-n", "--pidfile=", "clickpass", *CONFIG],
                    cwd=work,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        base = f"http://127.0.0.1:{front_port}"
        _wait_until_serving(base + "/healthz", 60)
        cookie = bench.sign_in_and_approve(base)
        with open(work / "valgrind.log", "wb") as log:
            worker = subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={work}/callgrind.out.%p",
                    *bench.extra_worker(work, work / "measured.sock", worker_port),
                ],
                cwd=work,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        processes.append(worker)
        assert worker.stdout is not None
        if not worker.stdout.readline().startswith(b"ready"):
            raise RuntimeError(f"the measured worker did not start; see {work}/valgrind.log")
        results: dict[str, float] = {}
        session = requests.Session()
        for name, path, extra in bench.ENDPOINTS:
            if name not in endpoints:
                continue
            headers = {"Cookie": cookie} if name == "immediate_signed" else {}
            for flag, value in zip(extra[::2], extra[1::2], strict=True):
                if flag == "-H":
                    key, _, header_value = value.partition(": ")
                    headers[key] = header_value
            url = f"http://127.0.0.1:{worker_port}{path}"

            def send(n: int, url: str = url, headers: dict[str, str] = headers) -> None:
                for _ in range(n):
                    answer = session.get(url, headers=headers, allow_redirects=False, timeout=120)
                    if answer.status_code >= 400:
                        raise RuntimeError(f"{url} answered {answer.status_code}")

            send(WARM_UP)
            _last_dump_total(work, worker.pid)  # drops what the warm-up counted
            _control(worker.pid, "--instr=on")
            send(count)
            _control(worker.pid, "--instr=off")
            results[name] = _last_dump_total(work, worker.pid) / count
        return results
    finally:
        # A worker under valgrind takes longer to stop.
        bench.stop_all(processes, 60)
        shutil.rmtree(work, ignore_errors=True)


def checkout(revision: str, into: Path) -> Path:
    """This repository's C{revision}, checked out (without history) under C{into}."""
    root = Path(__file__).resolve().parents[2]
    tree = into / "tree"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", revision], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-worker")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per endpoint")
    parser.add_argument(
        "--only", action="append", default=[], help="measure only this endpoint (repeatable)"
    )
    parser.add_argument("--against", metavar="REV", help="also measure this git revision")
    args = parser.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("bench-worker: valgrind is not installed", file=sys.stderr)
        return 1
    endpoints = args.only or [name for name, _path, _extra in bench.ENDPOINTS]
    unknown = set(endpoints) - {name for name, _path, _extra in bench.ENDPOINTS}
    if unknown:
        print(f"bench-worker: unknown endpoint {sorted(unknown)[0]}", file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parents[2]
    ours = measure(here, endpoints, args.requests)
    theirs: dict[str, float] = {}
    if args.against:
        with tempfile.TemporaryDirectory(prefix="clickpass-bench-worker-rev-") as scratch:
            theirs = measure(checkout(args.against, Path(scratch)), endpoints, args.requests)
    print(f"{'endpoint':<18} {'this tree':>14}" + (f" {args.against:>14}" if theirs else ""))
    for name in endpoints:
        line = f"{name:<18} {ours[name] / 1e6:>12.3f} M"
        if theirs:
            line += f" {theirs[name] / 1e6:>12.3f} M"
        print(line)
    summary = ", ".join(
        f"{name} {ours[name] / theirs[name]:.2f}x" if theirs else f"{name} {ours[name] / 1e6:.2f} M"
        for name in endpoints
    )
    label = (
        f"this tree/{args.against} instructions per request"
        if theirs
        else "instructions per request"
    )
    print(f"{label}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

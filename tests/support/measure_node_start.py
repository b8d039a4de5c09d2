"""
How long a test node takes to start and to stop: C{twistd clickpass} on a
fresh SQLite data directory with one worker (what most integration tests
start), from spawning the process to its "ready: serving" line, then from
SIGTERM to its exit; and the CPU time the node and its worker used in all
(user + system), which other work on the machine does not inflate the way
it does the wall-clock times. The suite starts a few hundred nodes, so this
is the number to watch when the suite gets slow.

    .venv/bin/python -m tests.support.measure_node_start [RUNS]
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.node import READY_LINE, NodeProcess, free_port, write_config

# Finer than NodeProcess.wait_for_log's 50 ms, so the poll is not the measure.
POLL = 0.002


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(directory: Path) -> tuple[float, float, float]:
    """Seconds to ready, seconds to stop and CPU seconds, for one fresh node."""
    cpu_before = _children_cpu()
    port = free_port()
    node = NodeProcess(directory, write_config(directory, port), port=port)
    node.workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with open(node.log_path, "ab") as log:
        node.process = subprocess.Popen(
            node.command(),
            cwd=node.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=node.env,
            start_new_session=True,
        )
    while READY_LINE not in node.log():
        if node.process.poll() is not None or time.monotonic() - began > 60:
            node.stop()
            raise SystemExit("the node did not start:\n" + node.log()[-2000:])
        time.sleep(POLL)
    ready = time.monotonic() - began
    stopping = time.monotonic()
    node.stop()
    return ready, time.monotonic() - stopping, _children_cpu() - cpu_before


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    starts, stops, cpus = [], [], []
    with tempfile.TemporaryDirectory(prefix="clickpass-start-") as tmp:
        for n in range(runs):
            start, stop, cpu = one_run(Path(tmp) / f"run{n}")
            starts.append(start)
            stops.append(stop)
            cpus.append(cpu)
            print(f"run {n + 1}: ready in {start:.3f}s, stopped in {stop:.3f}s, CPU {cpu:.3f}s")
    print(
        f"start to ready: median {statistics.median(starts):.3f}s "
        f"(min {min(starts):.3f}, max {max(starts):.3f}); "
        f"stop: median {statistics.median(stops):.3f}s; "
        f"CPU per node: median {statistics.median(cpus):.3f}s; {runs} runs"
    )


if __name__ == "__main__":
    main()

"""scripts/bench-worker: a real node, a real worker under callgrind, counts that mean something."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_bench_worker_counts_instructions_per_request() -> None:
    """
    A small response costs a worker some hundreds of thousands of
    instructions, a signed assertion several times more; the last line
    names each endpoint measured.
    """
    done = subprocess.run(
        [
            str(ROOT / "scripts" / "bench-worker"),
            "--requests",
            "10",
            "--only",
            "small",
            "--only",
            "immediate_signed",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    found = dict(re.findall(r"(\w+) ([\d.]+) M", last))
    assert set(found) == {"small", "immediate_signed"}, last
    small, signed = float(found["small"]), float(found["immediate_signed"])
    assert 0.05 < small < 5, last
    assert signed > 2 * small, last


def test_bench_worker_counts_the_front_per_proxied_request() -> None:
    """
    With --front the node itself runs under callgrind (its worker natively):
    a request proxied through it has a count, and the last line says whose.
    """
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench-worker"), "--front", "--requests", "10", "--only", "small"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("front instructions per request: "), last
    found = dict(re.findall(r"(\w+) ([\d.]+) M", last))
    assert set(found) == {"small"}, last
    assert float(found["small"]) > 0, last


def test_bench_worker_refuses_an_unknown_endpoint() -> None:
    """A misspelt endpoint is one line and exit status 2, before anything starts."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench-worker"), "--only", "smal"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "bench-worker: unknown endpoint smal"

"""scripts/bench-worker: a real node, a real worker under callgrind, counts that mean something."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ONE_SEED = ["--seeds", "1"]
SMALL = ["--requests", "10", "--only", "small"]


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
        # One hash seed: the smoke test needs a count, not the median of three.
        [str(ROOT / "scripts" / "bench-worker"), "--front", *ONE_SEED, *SMALL],
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


def test_bench_worker_compares_two_revisions_built_alike() -> None:
    """
    --revision measures a checked-out revision (its C extension built in
    place) instead of the work tree, and names it in the table and the last
    line. (The two counts of one revision are not asserted equal: where a
    tree lies moves a front count by a few percent, docs/balancer.md.)
    """
    options = ["--front", "--seeds", "1", "--requests", "10", "--only", "small"]
    revisions = ["--revision", "HEAD", "--against", "HEAD"]
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench-worker"), *options, *revisions],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].split() == ["endpoint", "HEAD", "HEAD"], lines[0]
    last = lines[-1]
    assert last.startswith("HEAD/HEAD front instructions per request: small "), last
    counts = [float(n) for n in re.findall(r"([\d.]+) M", lines[1])]
    assert len(counts) == 2 and min(counts) > 0, lines[1]


def test_bench_worker_refuses_a_seed_count_below_one() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench-worker"), "--seeds", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "bench-worker: --seeds must be at least 1"


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

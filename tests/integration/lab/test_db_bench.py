"""
The database failover benchmark through the lab's real database VIP
(scripts/bench-db-failover --lab), one round of each fault: kill -9 and
SIGSTOP of the primary's server, its link down, and a partition from its
peer and the witness that leaves the clients reaching it. Its last line must
show every fault with a time, no acknowledged write lost and never two
writable servers at once. The bound on the time is loose (a shared, loaded
machine runs the tests); the target and the numbers are in
docs/database-failover.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import _check_possible

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.mariadb]

ROOT = Path(__file__).resolve().parents[3]

# The base of the lab's prefix (the benchmark makes each run's names its own).
PREFIX = "cpf-"

# Loose: a failover that takes this long on a loaded test machine is broken,
# not slow (the target is 1.5 s; a quiet machine measures under it).
LOOSE_SECONDS = 10.0

LAST_LINE = re.compile(
    r"lab semi-sync: median (?P<median>\S+) \((?P<faults>[^)]*)\), max (?P<max>\S+), "
    r"lost (?P<lost>\d+), both writable (?P<both>\d+)"
)


def seconds(text: str) -> float:
    assert text.endswith("s") and text != "-", f"no time measured: {text!r}"
    return float(text[:-1])


def test_every_fault_through_the_real_vip_loses_nothing_and_never_has_two_writable() -> None:
    _check_possible()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench-db-failover"),
            "--lab",
            "--lab-prefix",
            PREFIX,
            "--rounds",
            "1",
            "--no-async",
            "--timeline",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=ROOT,
    )
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    found = LAST_LINE.match(last)
    assert found, last
    assert found["lost"] == "0", last
    assert found["both"] == "0", last
    faults = dict(part.split() for part in found["faults"].split(", "))
    assert set(faults) == {"kill", "stop", "linkdown", "partition"}, last
    for fault, text in faults.items():
        assert seconds(text) <= LOOSE_SECONDS, f"{fault}: {last}"
    assert seconds(found["max"]) <= LOOSE_SECONDS, last

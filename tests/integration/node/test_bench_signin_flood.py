"""
scripts/bench-signin-flood: a real node, a returning person's signed
checkid_immediate measured alone and during a flood of bad-password
sign-ins, every figure of its report filled in.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ROW = re.compile(r"^(baseline|flood)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)$")
RATIOS = re.compile(r"^checkid flood/baseline: req/s ([\d.]+), p50 ([\d.]+), p99 ([\d.]+)$")
FLOOD = re.compile(
    r"^flood sign-ins: (\d+) in (\d+) s \(([\d.]+) req/s, p99 (\d+) ms\): "
    r"503 with Retry-After (\d+), 401 (\d+), 200 (\d+), other (.+); socket errors (\d+)$"
)


def test_bench_signin_flood_shows_checkid_served_through_a_flood() -> None:
    """
    Two-second phases: checkid_immediate answered a signed positive
    assertion in both, the flood phase included (no error, no 5xx, no
    socket error), and the provider confirmed one of each phase; the
    flood's sign-ins were answered 503 with Retry-After (the hashing
    queue bounded) or 401, nothing else; the ratios against the baseline
    are on the last line. It asserts no speed: that is what the benchmark
    is for.
    """
    done = subprocess.run(
        [
            str(ROOT / "scripts" / "bench-signin-flood"),
            "--seconds",
            "2",
            "--flood-connections",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "database: sqlite" in lines, done.stdout
    rows = {m.group(1): m.groups()[1:] for m in map(ROW.match, lines) if m}
    assert set(rows) == {"baseline", "flood"}, done.stdout
    for phase, (rps, p50, p99, answers, errors) in rows.items():
        assert float(rps) > 0 and int(answers) > 0, (phase, done.stdout)
        assert 0 < float(p50) <= float(p99), (phase, done.stdout)
        assert int(errors) == 0, (phase, done.stdout)
    assert RATIOS.match(lines[-1]), done.stdout
    (flood,) = [m.groups() for m in map(FLOOD.match, lines) if m]
    total, _, rate, _, busy, refused, signed_in, other, socket_errors = flood
    assert int(busy) > 0, "no sign-in was refused 503 with Retry-After: " + done.stdout
    assert int(total) == int(busy) + int(refused) and float(rate) > 0, done.stdout
    assert int(signed_in) == 0 and other == "none" and int(socket_errors) == 0, done.stdout
    assert "checkid errors: 0" in lines, done.stdout
    confirmed = "an assertion of each phase confirmed by check_authentication: "
    assert confirmed + "baseline yes, flood yes" in lines, done.stdout

"""
scripts/bench-oidc: a real node with two workers, both sign-in flows
completed and verified by every client, a row for each, and the ratio on
its last line.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ROW = re.compile(r"^(oidc|openid2)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$")
LAST = re.compile(r"^oidc sign-in .* / openid2 sign-in .*: ([\d.]+)x$")


def test_bench_oidc_measures_both_flows_and_prints_the_ratio() -> None:
    """
    One-second runs (two rounds, two client processes): both flows signed
    the person in (any wrong answer fails the script), each row has a rate
    and latencies, and the last line is the ratio of the two rates. It
    asserts no speed: that is the benchmark's job, not a test's.
    """
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench-oidc"), "--seconds", "1", "--clients", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    rows = {m.group(1): m.groups()[1:] for m in map(ROW.match, lines) if m}
    assert set(rows) == {"oidc", "openid2"}, done.stdout
    for rate, p50, p99, count in rows.values():
        assert float(rate) > 0 and 0 < float(p50) <= float(p99) and int(count) > 0
    last = LAST.match(lines[-1])
    assert last is not None, lines[-1]
    expected = float(rows["oidc"][0]) / float(rows["openid2"][0])
    assert abs(float(last.group(1)) - expected) < 0.02 + expected * 0.01

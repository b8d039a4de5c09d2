"""
scripts/bench-oidc: a real node with two workers and the npm package
oidc-provider in node's cluster with two, every sign-in completed and
checked by every client, a row for each flow, and the ratio of Clickpass's
rate to oidc-provider's on the last line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ROW = re.compile(r"^(clickpass|oidc-provider|openid2)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$")
OPENID2 = re.compile(r"^clickpass oidc sign-in / openid2 sign-in .*: ([\d.]+)x$")
LAST = re.compile(r"^clickpass / oidc-provider \(.*\): ([\d.]+)x$")


def test_bench_oidc_measures_both_providers_and_prints_the_ratio() -> None:
    """
    One-second runs (one round, two client processes): each flow signed
    the person in (any wrong answer fails the script), each row has a rate
    and latencies, the OpenID 2.0 ratio comes before the last line, and the
    last line is Clickpass's rate as a ratio of oidc-provider's. It asserts
    no speed: that is the benchmark's job, not a test's.
    """
    done = subprocess.run(
        [sys.executable, "-m", "devtools.bench_oidc", "--seconds", "1", "--clients", "2",
         "--rounds", "1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    rows = {m.group(1): m.groups()[1:] for m in map(ROW.match, lines) if m}
    assert set(rows) == {"clickpass", "oidc-provider", "openid2"}, done.stdout
    for rate, p50, p99, count in rows.values():
        assert float(rate) > 0 and 0 < float(p50) <= float(p99) and int(count) > 0
    openid2 = OPENID2.match(lines[-2])
    assert openid2 is not None, lines[-2]
    last = LAST.match(lines[-1])
    assert last is not None, lines[-1]
    expected = float(rows["clickpass"][0]) / float(rows["oidc-provider"][0])
    assert abs(float(last.group(1)) - expected) < 0.02 + expected * 0.01

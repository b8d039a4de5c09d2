"""
scripts/bench-balancer: a real node, real HAProxy and wrk on the same worker
sockets, every row filled in, and the ratios on its last line.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ENDPOINTS = ("small", "discovery", "immediate_anon", "immediate_signed")
ROW = re.compile(
    r"^(\w+)\s+(clickpass|haproxy|one worker)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)$"
)
CPU = re.compile(
    r"^(\w+)\s+CPU per request: clickpass front ([\d.]+) us \(([\d.]+) in the kernel\),"
    r" haproxy ([\d.]+) us \(([\d.]+)\); workers behind them ([\d.]+) us, ([\d.]+) us"
    r"; ratio per round ([\d.]+)-([\d.]+)$"
)
SWITCHES = re.compile(
    r"^(\w+)\s+sleeps/preemptions per request: clickpass front ([\d.]+)/([\d.]+),"
    r" haproxy ([\d.]+)/([\d.]+)$"
)


def test_bench_balancer_measures_both_balancers_on_every_endpoint() -> None:
    """
    One-second runs (two rounds) on the four endpoints: each path answered
    through the front, through HAProxy and straight from a worker with no
    errors; each balancer used CPU, slept and was measured per request; the
    last line gives a throughput ratio per endpoint. It asserts no speed:
    that is what the benchmark is for, not a test on a shared machine.
    """
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench-balancer"), "--seconds", "1", "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    rows = [m.groups() for m in map(ROW.match, lines) if m]
    assert {(name, via) for name, via, *_ in rows} == {
        (name, via) for name in ENDPOINTS for via in ("clickpass", "haproxy", "one worker")
    }, done.stdout
    for name, via, rps, p50, p99, non2xx, errors in rows:
        assert int(rps) > 0 and float(p50) > 0 and float(p99) >= float(p50), (name, via)
        assert int(non2xx) == 0 and int(errors) == 0, (name, via)
    assert "database: sqlite" in lines
    cpu = {m.group(1): [float(x) for x in m.groups()[1:]] for m in map(CPU.match, lines) if m}
    assert set(cpu) == set(ENDPOINTS), done.stdout
    for name, (front, front_kernel, haproxy, haproxy_kernel, *_) in cpu.items():
        assert 0 < front_kernel < front and 0 < haproxy_kernel < haproxy, name
    switches = {
        m.group(1): [float(x) for x in m.groups()[1:]] for m in map(SWITCHES.match, lines) if m
    }
    assert set(switches) == set(ENDPOINTS), done.stdout
    for name, (front_sleeps, _, haproxy_sleeps, _) in switches.items():
        # Each balancer waits for its clients and its workers now and then.
        assert front_sleeps > 0 and haproxy_sleeps > 0, name
    last = lines[-1]
    assert last.startswith("clickpass/haproxy throughput: "), last
    ratios = dict(re.findall(r"(\w+) ([\d.]+)x", last))
    assert set(ratios) == set(ENDPOINTS), last
    assert all(float(r) > 0 for r in ratios.values()), last


def test_bench_balancer_runs_the_node_on_a_private_mariadb() -> None:
    """
    With --database mariadb the node runs on a MariaDB server the benchmark
    started for itself, and the signed-in endpoint answers only 2xx/3xx
    through each path: its stateless associations used to deadlock there
    (answers of 500).
    """
    done = subprocess.run(
        [
            str(ROOT / "scripts" / "bench-balancer"),
            "--database",
            "mariadb",
            "--only",
            "immediate_signed",
            "--seconds",
            "2",
            "--connections",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "database: mariadb" in lines, done.stdout
    rows = [m.groups() for m in map(ROW.match, lines) if m]
    assert {via for _, via, *_ in rows} == {"clickpass", "haproxy", "one worker"}, done.stdout
    for name, via, rps, _p50, _p99, non2xx, errors in rows:
        assert name == "immediate_signed" and int(rps) > 0, (name, via)
        assert int(non2xx) == 0 and int(errors) == 0, (name, via)
    assert any(line.startswith("non-2xx answers and socket errors in all: 0;") for line in lines)

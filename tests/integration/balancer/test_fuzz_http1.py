"""
The front's C parser (csrc/http1.c) under libFuzzer with AddressSanitizer
and UndefinedBehaviorSanitizer: two hundred thousand inputs (set
CLICKPASS_FUZZ_RUNS for a longer run, two million say), each through the
request, response and chunked-body parsers (csrc/fuzz_http1.c), and the
same harness finding a planted overflow, so that a clean run means something.
Built with Debian's clang (scripts/test installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CSRC = Path(__file__).resolve().parents[3] / "clickpass" / "balancer" / "csrc"
RUNS = int(os.environ.get("CLICKPASS_FUZZ_RUNS", "200000"))
SANITIZE = ["-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all"]

SEEDS = {
    "request": b"GET /a?b HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X\r\nX: 1\r\n"
    b"Cookie: a=b\r\n\r\n",
    "post": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
    b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "http10": b"\r\nGET / HTTP/1.0\r\nProxy-Connection: keep-alive\r\nContent-Length: 3\r\n\r\n",
    "response": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: 5\r\nX:y\r\n\r\nok",
    "chunks": b"5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
}


def build(source: Path, out: Path) -> Path:
    clang = shutil.which("clang")
    assert clang, "clang is not installed (scripts/test installs clang and libclang-rt-14-dev)"
    sources = [str(source), str(CSRC / "http1.c")]
    subprocess.run(
        [clang, "-g", "-O1", *SANITIZE, f"-I{CSRC}", *sources, "-o", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def fuzz(binary: Path, corpus: Path, runs: int) -> subprocess.CompletedProcess[str]:
    # What the fuzzer adds to the corpus, and any crash input it writes,
    # stay in the test's temporary directory.
    artifacts = f"-artifact_prefix={binary.parent}/"
    return subprocess.run(
        [str(binary), f"-runs={runs}", "-seed=1", "-max_len=4096", artifacts, str(corpus)],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    where = tmp_path / "corpus"
    where.mkdir()
    for name, data in SEEDS.items():
        (where / name).write_bytes(data)
    return where


def test_fuzzed_inputs_break_nothing(tmp_path: Path, corpus: Path) -> None:
    binary = build(CSRC / "fuzz_http1.c", tmp_path / "fuzz")
    done = fuzz(binary, corpus, RUNS)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"Done {RUNS} runs" in done.stderr


def test_the_harness_finds_a_planted_overflow(tmp_path: Path, corpus: Path) -> None:
    """With the stripped head's room cut to the input's length, it overflows at once."""
    source = (CSRC / "fuzz_http1.c").read_text()
    planted = source.replace("HTTP1_STRIP_ROOM(res.head_len)", "res.head_len")
    assert planted != source
    (tmp_path / "planted.c").write_text(planted)
    binary = build(tmp_path / "planted.c", tmp_path / "planted")
    done = fuzz(binary, corpus, RUNS)
    assert done.returncode != 0
    assert "heap-buffer-overflow" in done.stderr
    assert list(tmp_path.glob("crash-*")), "the input that overflowed was not kept"

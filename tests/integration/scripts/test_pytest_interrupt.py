"""
Ctrl-C stops a test run, also while a test waits on the reactor
(L{tests.support.interrupt}): a pytest run of a test that waits on the
reactor ends soon after SIGINT, with pytest's KeyboardInterrupt summary,
instead of running the test to its end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]

WAITING_TEST = """
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.support.deferreds import async_test


@async_test
async def test_waits_on_the_reactor() -> None:
    Path({ready!r}).write_text("waiting")
    await deferLater(reactor, 120, lambda: None)
"""


def test_sigint_stops_a_test_waiting_on_the_reactor(tmp_path: Path) -> None:
    """SIGINT ends the run within seconds, reported as interrupted, not as a pass."""
    ready = tmp_path / "ready"
    (tmp_path / "test_waiting.py").write_text(WAITING_TEST.format(ready=str(ready)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "tests.conftest", str(tmp_path / "test_waiting.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # As a terminal's Ctrl-C finds it, even under a shell that ignores it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        wait_for(ready.exists, timeout=60, what="the test to start waiting")
        os.killpg(run.pid, signal.SIGINT)
        output, _ = run.communicate(timeout=45)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
    assert "KeyboardInterrupt" in output, output
    assert run.returncode == pytest.ExitCode.INTERRUPTED, output

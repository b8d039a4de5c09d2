"""
What an operator sees when starting and driving a node: the next steps
scripts/run prints once the node is ready, the warning for a public_url
no listener serves, and clickpass-ctl writing into a pipe whose reader
has gone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.support.node import BIN, NodeProcess, free_port, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
WARNING = "is served by none of this node's listeners"


def test_public_url_served_by_no_listener_is_one_warning(tmp_path: Path) -> None:
    """
    A node whose public_url names a port it does not listen on starts, and
    logs one warning line naming the public_url and its listeners.
    """
    port, elsewhere = free_port(), free_port()
    config = write_config(tmp_path, port)
    config.write_text(
        config.read_text().replace(
            f'public_url = "http://127.0.0.1:{port}/"',
            f'public_url = "http://127.0.0.1:{elsewhere}/"',
        )
    )
    node = NodeProcess(tmp_path, config, port=port).start()
    try:
        warned = [line for line in node.log().splitlines() if WARNING in line]
        assert len(warned) == 1, node.log()[-3000:]
        assert f"http://127.0.0.1:{elsewhere}/" in warned[0]
        assert f"tcp:{port}:interface=127.0.0.1" in warned[0]
    finally:
        node.stop()


@pytest.fixture
def plain_node(shared_node: NodeProcess) -> NodeProcess:
    """
    The module's shared node (its public_url on its own listener), for the
    tests that only read its log or ask it its status; checked running
    before each.
    """
    assert shared_node.process is not None and shared_node.process.poll() is None
    return shared_node


def test_matching_public_url_gives_no_warning(plain_node: NodeProcess) -> None:
    """A node serving its public_url's port says nothing about it."""
    node = plain_node
    assert "ready: serving" in node.log()
    assert WARNING not in node.log()


def test_ctl_into_a_closed_pipe_ends_quietly(plain_node: NodeProcess) -> None:
    """
    clickpass-ctl writing its answer into a pipe whose reader is gone (as
    in `clickpass-ctl status | head`) prints no traceback and exits 0.
    """
    node = plain_node
    config = node.config
    assert config is not None
    for args in (["status"], ["--json", "status"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader has gone before anything is written
        try:
            done = subprocess.run(
                [str(BIN / "clickpass-ctl"), "--config", str(config), *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        finally:
            os.close(write_end)
        assert done.stderr == "", done.stderr
        assert done.returncode == 0
    # Into head, as an operator types it: ctl | head -n 1.
    ctl = subprocess.Popen(
        [str(BIN / "clickpass-ctl"), "--config", str(config), "--json", "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert ctl.stdout is not None and ctl.stderr is not None
    head = subprocess.run(
        ["head", "-n", "1"], stdin=ctl.stdout, capture_output=True, text=True, timeout=60
    )
    ctl.stdout.close()
    assert ctl.wait(60) == 0
    assert head.stdout == "{\n"
    assert b"Traceback" not in ctl.stderr.read()


def test_scripts_run_prints_the_next_steps(tmp_path: Path) -> None:
    """
    scripts/run, once its node is ready, prints the three next steps: the
    URL to open and create an account at, the partner console's URL, and a
    clickpass-ctl status command for this node, which works as printed.
    """
    port = free_port()
    config = write_config(tmp_path, port)
    out = tmp_path / "run.out"
    env = {**os.environ, "CLICKPASS_VENV": str(BIN.parent)}
    with open(out, "wb") as sink:
        run = subprocess.Popen(
            [str(ROOT / "scripts" / "run"), "--config", str(config)],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and "clickpass-ctl --socket" not in text:
            assert run.poll() is None, out.read_text()
            time.sleep(0.1)
            text = out.read_text()
        url = f"http://127.0.0.1:{port}/"
        lines = text.splitlines()
        ready = next(i for i, line in enumerate(lines) if f"ready: serving {url}" in line)
        steps = [line.strip() for line in lines[ready + 1 :] if line.strip()]
        assert steps[0] == "Clickpass is ready. Next steps:"
        assert steps[1] == f"1. Open {url} and create an account: {url}signup"
        assert steps[2] == f"2. Register a partner site in the partner console: {url}partners"
        step3 = re.fullmatch(r"3\. Ask the node how it is: (\S+) --socket (\S+) status", steps[3])
        assert step3 is not None, steps[3]
        assert step3.group(2) == str((tmp_path / "data" / "control.sock").resolve())
        status = subprocess.run(
            [step3.group(1), "--socket", step3.group(2), "status"],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert url in status.stdout
        assert requests.get(url + "partners", timeout=10).ok
    finally:
        # scripts/run execs twistd: the script's pid is the node's.
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(20)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait(10)

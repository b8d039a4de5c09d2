"""
A real node for the front's integration tests: C{twistd -n clickpass} with
its workers serving the small test application (or the real Clickpass
application), driven over raw sockets and clickpass-ctl.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import waiting
from tests.support.node import PORT_ATTEMPTS, PORT_TAKEN, free_port

VENV_BIN = Path(sys.executable).parent
TESTAPP = "devtools.testapp:build_site"


class Node:
    """A running twistd clickpass node."""

    def __init__(self, directory: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.port = port
        self.process = process
        self.config = directory / "node.toml"
        self.log = directory / "node.log"

    def ctl(self, *args: str) -> Any:
        out = subprocess.run(
            [str(VENV_BIN / "clickpass-ctl"), "--config", str(self.config), "--json", *args],
            capture_output=True,
            timeout=60,
            check=True,
            cwd=self.directory,
        )
        return json.loads(out.stdout)

    def workers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.ctl("workers")
        return result

    def ready_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.workers() if w["state"] == "ready"]

    def request(self, raw: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes on a new connection; read until the server closes or times out."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(raw)
            chunks = []
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except TimeoutError:
                chunks.append(b"<timeout>")
            return b"".join(chunks)

    def get(self, path: str, headers: str = "", timeout: float = 5.0) -> bytes:
        return self.request(
            f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n".encode(),
            timeout,
        )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """L{waiting.wait_for}; a node still starting or stopping counts as "not yet"."""
    waiting.wait_for(
        predicate, timeout, what, ignore=(OSError, subprocess.SubprocessError, ValueError)
    )


def launch(directory: Path, config: str, port: int) -> Node:
    """Write C{config} (listening on C{port}) and start a node on it; wait for its log."""
    (directory / "node.toml").write_text(config)
    with open(directory / "node.log", "ab") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "clickpass", "--config", "node.toml"],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    node = Node(directory, port, process)
    wait_for(
        lambda: b"ready: serving" in node.log.read_bytes() or process.poll() is not None,
        60,
        "the node to start",
    )
    return node


def node_starter(base: Path, nodes: list[Node]) -> Callable[..., Node]:
    """
    A function that starts a node in a new directory under C{base} (each
    one appended to C{nodes}, for L{stop_nodes}) and waits for its workers.
    """

    def start(workers: int = 2, app: str = TESTAPP, balancer: str = "", web: str = "") -> Node:
        directory = base / f"node{len(nodes)}"
        directory.mkdir()
        app_line = f'app = "{app}"' if app else ""
        for _ in range(PORT_ATTEMPTS):
            # free_port races with every other process: a taken port is tried again.
            port = free_port()
            config = (
                f'[node]\ndata_dir = "{directory}/data"\n'
                f'[web]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n{web}\n'
                f"[workers]\ncount = {workers}\n{app_line}\n"
                f"[balancer]\n{balancer}\n"
            )
            node = launch(directory, config, port)
            nodes.append(node)
            if node.process.poll() is None or PORT_TAKEN not in node.log.read_text():
                break
        assert node.process.poll() is None, node.log.read_text()
        wait_for(lambda: len(node.ready_workers()) == workers, 30, "every worker to be ready")
        return node

    return start


def stop_nodes(nodes: list[Node]) -> None:
    """SIGTERM each node still running, SIGKILL one that does not stop within 30 s."""
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start nodes for one test (L{node_starter}); they are stopped after it."""
    nodes: list[Node] = []
    yield node_starter(tmp_path, nodes)
    stop_nodes(nodes)


@pytest.fixture(scope="module")
def start_shared_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Node]]:
    """
    L{start_node} for a test module: for nodes that several of its tests
    only send requests to, started once and stopped after the module.
    """
    nodes: list[Node] = []
    yield node_starter(tmp_path_factory.mktemp("shared-nodes"), nodes)
    stop_nodes(nodes)

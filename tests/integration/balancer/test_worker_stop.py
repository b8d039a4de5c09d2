"""
A worker asked to stop (its stdin closed, or SIGTERM) while a request is
inside the application: it stops listening, lets the request finish, and
only then closes the storage and exits by itself. Before, the reactor
joined its thread pool while a handler in a pool thread waited for the
reactor (C{blockingCallFromThread}), and the worker hung until SIGKILL.

The workers run the small application below (C{--app
tests.integration.balancer.test_worker_stop:build_site}), on the real
L{Router} and the real storage (SQLite).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Site

from clickpass.web.routing import Router

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
APP = "tests.integration.balancer.test_worker_stop:build_site"
# Where the application says a handler has started, so the test stops the
# worker only once its request is inside the application.
STARTED_DIR = "CLICKPASS_TEST_STARTED_DIR"
# How long the threaded handler sleeps before it calls back into the reactor.
THREAD_DELAY = 0.5


def build_site(reactor: Any, settings: Any, storage: Any, secret: bytes) -> Site:
    """The worker's application: C{/threaded} and C{/hang}."""
    started = Path(os.environ[STARTED_DIR])
    router = Router()

    def in_thread() -> bytes:
        time.sleep(THREAD_DELAY)
        # What python3-openid's store does: a database call from a pool
        # thread, which waits for the reactor thread to run it.
        storage.run_blocking(lambda transaction: transaction.execute("SELECT 1"))
        return b"finished in a thread\n"

    async def threaded(request: Any) -> bytes:
        (started / "threaded").touch()
        return await deferToThreadPool(reactor, reactor.getThreadPool(), in_thread)

    async def hang(request: Any) -> bytes:
        (started / "hang").touch()
        never: Deferred[bytes] = Deferred()
        return await never

    router.add("GET", "/threaded", threaded)
    router.add("GET", "/hang", hang)
    return Site(router)


class Worker:
    """A C{python -m clickpass.worker} process on a private socket."""

    def __init__(self, directory: Path, kill_timeout: float) -> None:
        self.directory = directory
        self.socket_path = directory / "w.sock"
        self.started = directory / "started"
        self.started.mkdir()
        (directory / "secret.key").write_text("ab" * 32 + "\n")
        config = directory / "node.toml"
        config.write_text(
            f'[node]\ndata_dir = "{directory}"\n'
            f'[secrets]\nsecret_file = "{directory / "secret.key"}"\n'
            f"[workers]\nkill_timeout = {kill_timeout}\n"
        )
        self.stderr_path = directory / "worker.log"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "clickpass.worker",
                    "--socket",
                    str(self.socket_path),
                    "--config",
                    str(config),
                    "--app",
                    APP,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=REPO,
                env={**os.environ, STARTED_DIR: str(self.started)},
            )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline() if ready else b""
        assert line.startswith(b"ready "), f"worker did not start: {self.log()}"

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send(self, path: str) -> socket.socket:
        """Send a GET for C{path} on a new connection and return it."""
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(self.socket_path))
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: w\r\n\r\n".encode())
        return client

    def wait_until_started(self, name: str) -> None:
        deadline = time.monotonic() + 10
        while not (self.started / name).exists():
            assert time.monotonic() < deadline, f"{name} never started: {self.log()}"
            time.sleep(0.01)

    def ask_to_stop(self, how: str) -> None:
        if how == "stdin":
            assert self.process.stdin is not None
            self.process.stdin.close()
        else:
            self.process.send_signal(signal.SIGTERM)


def read_all(client: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := client.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        chunks.append(b"<timeout>")
    return b"".join(chunks)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def start(kill_timeout: float = 10.0) -> Worker:
        worker = Worker(tmp_path, kill_timeout)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()
        for pipe in (worker.process.stdin, worker.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("how", ["stdin", "sigterm"])
def test_a_request_in_a_thread_finishes_before_the_worker_exits(
    start_worker: Any, how: str
) -> None:
    """
    Stopped while a handler in a pool thread is about to call back into the
    reactor, the worker answers that request in full and exits with status
    0 by itself, within a few seconds.
    """
    worker: Worker = start_worker()
    client = worker.send("/threaded")
    worker.wait_until_started("threaded")
    stopped_at = time.monotonic()
    worker.ask_to_stop(how)
    with client:
        response = read_all(client)
    assert response.startswith(b"HTTP/1.1 200 "), (response, worker.log())
    # The whole chunked body, up to its last chunk.
    assert response.endswith(b"\r\n\r\n15\r\nfinished in a thread\n\r\n0\r\n\r\n"), (
        response,
        worker.log(),
    )
    try:
        status = worker.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit by itself: {worker.log()}")
    assert status == 0, worker.log()
    assert time.monotonic() - stopped_at < 5


def test_a_stopping_worker_waits_for_its_requests_only_so_long(start_worker: Any) -> None:
    """
    A request that never finishes holds the stop for 0.8 x [workers]
    kill_timeout at most; the worker says how many requests were still
    running and exits with status 0.
    """
    worker: Worker = start_worker(kill_timeout=1.0)
    client = worker.send("/hang")
    worker.wait_until_started("hang")
    stopped_at = time.monotonic()
    worker.ask_to_stop("stdin")
    status = worker.process.wait(timeout=10)
    waited = time.monotonic() - stopped_at
    client.close()
    assert status == 0, worker.log()
    assert 0.7 < waited < 5, worker.log()
    assert "stopping with 1 requests still running after 0.8s" in worker.log()

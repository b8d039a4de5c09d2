"""
L{clickpass.epoll_reactor.LeanEpollReactor}: Twisted's own reactor tests (TCP,
UNIX sockets, TLS, file descriptor sets, system events, time) pass against it,
a failing C{dataReceived} on its lean read path is logged and loses its
connection as Twisted's dispatch does, and a node and its workers run on it
unless another reactor was chosen.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from clickpass.epoll_reactor import LeanEpollReactor

ROOT = Path(__file__).resolve().parents[2]


def test_twisted_reactor_suites_pass(tmp_path: Path) -> None:
    """
    Every test of Twisted's TCP, UNIX, TLS, descriptor-set, system-event and
    time suites passes for our reactor, none skipped (C{tests/support/reactor_suite.py},
    run in its own process: those tests swap the global reactor's class).
    """
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.reactor_suite"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    ran = int(last.split()[1].rstrip(","))
    assert last == f"ran {ran}, skipped 0"
    assert ran > 100


class _Explodes(Protocol):
    lost: list[Failure]

    def __init__(self) -> None:
        self.lost = []

    def dataReceived(self, data: bytes) -> None:
        raise RuntimeError("boom in dataReceived")

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        self.lost.append(reason)


@pytest.mark.logs_errors("the failure is logged")
def test_a_failing_data_received_is_logged_and_loses_its_connection() -> None:
    """
    An exception from C{dataReceived} on the lean read path is logged as an
    error, in the connection's log context, and the connection is lost with
    that exception, as Twisted's own dispatch does.
    """
    reactor = LeanEpollReactor()
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    ours, theirs = socket.socketpair()
    protocols: list[_Explodes] = []

    def build() -> _Explodes:
        protocols.append(_Explodes())
        return protocols[-1]

    try:
        reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, Factory.forProtocol(build))
        [protocol] = protocols
        theirs.sendall(b"hello")
        for _ in range(40):
            reactor.iterate(0.05)
            if protocol.lost:
                break
        assert protocol.lost, "the connection was not lost"
        assert protocol.lost[0].check(RuntimeError)
        failures = [e for e in events if e.get("isError")]
        assert [str(e["failure"].value) for e in failures] == ["boom in dataReceived"]
        transport: Any = protocol.transport
        assert failures[0]["log_system"] == transport.logPrefix() != "-"
    finally:
        globalLogPublisher.removeObserver(observer)
        ours.close()
        theirs.close()
        reactor.disconnectAll()
        reactor._poller.close()


def _reactor_after_install(prelude: str) -> str:
    """The global reactor's class after C{prelude} and install_unless_chosen()."""
    code = (
        f"{prelude}\n"
        "from clickpass.epoll_reactor import install_unless_chosen\n"
        "install_unless_chosen()\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__module__ + '.' + type(reactor).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_workers_install_the_clickpass_reactor() -> None:
    """What a worker (and makeService) does first, with no reactor chosen yet."""
    assert _reactor_after_install("") == "clickpass.epoll_reactor.LeanEpollReactor"


def test_a_reactor_chosen_already_is_respected() -> None:
    """C{twistd --reactor=poll clickpass}: the chosen reactor stays."""
    prelude = "from twisted.internet import pollreactor; pollreactor.install()"
    assert _reactor_after_install(prelude) == "twisted.internet.pollreactor.PollReactor"


@pytest.mark.parametrize("offset", [-5.0, -0.001, 0.0, 0.25, 3.0, 10_000_000.0])
def test_timeout_is_twisteds(offset: float) -> None:
    """How long the loop may sleep is what Twisted's own timeout() says, timers or none."""
    reactor = LeanEpollReactor()
    try:
        assert reactor.timeout() is None
        call = reactor.callLater(1.0, lambda: None)
        # A timer already due, or due later, than the reactor's own clock.
        call.time = reactor.seconds() + offset
        ours = reactor.timeout()
        theirs = EPollReactor.timeout(reactor)
        assert ours is not None and theirs is not None
        assert abs(ours - theirs) < 0.01
        assert ours == 0 if offset <= 0 else ours > 0
        call.cancel()
    finally:
        reactor.disconnectAll()
        reactor._poller.close()

"""Tests for the heartbeat process's link to the node: pings, node timeout, stdin closing."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from clickpass.cluster.child import ParentLink
from clickpass.cluster.engine import NODE_CHECK


class FakeEngine:
    def __init__(self) -> None:
        self.health: list[tuple[str, bool]] = []
        self.maintenance: list[bool] = []

    def set_health(self, name: str, ok: bool) -> None:
        self.health.append((name, ok))

    def set_maintenance(self, on: bool) -> None:
        self.maintenance.append(on)

    def switchover(self, group: str) -> str:
        raise ValueError(f"group {group} is BACKUP here, not MASTER")

    def status(self) -> dict[str, Any]:
        return {"groups": []}


def link() -> tuple[ParentLink, FakeEngine, Clock, StringTransport]:
    engine, clock, transport = FakeEngine(), Clock(), StringTransport()
    parent = ParentLink(engine, clock, node_timeout=2.0)  # type: ignore[arg-type]
    parent.makeConnection(transport)
    return parent, engine, clock, transport


def test_ready_pings_keep_the_node_check_ok() -> None:
    """While the node pings and says it is ready, the node check passes."""
    parent, engine, clock, _ = link()
    for _ in range(20):
        parent.lineReceived(b'{"op": "ping", "ready": true}')
        clock.advance(0.5)
    assert engine.health == [(NODE_CHECK, True)]


def test_silence_longer_than_node_timeout_faults() -> None:
    """No ping for node_timeout (a frozen node) fails the node check; pings restore it."""
    parent, engine, clock, _ = link()
    parent.lineReceived(b'{"op": "ping", "ready": true}')
    clock.advance(1.9)
    assert engine.health == [(NODE_CHECK, True)]
    clock.advance(0.4)
    assert engine.health[-1] == (NODE_CHECK, False)
    parent.lineReceived(b'{"op": "ping", "ready": true}')
    assert engine.health[-1] == (NODE_CHECK, True)


def test_late_watchdog_reads_the_waiting_ping_before_judging_the_node() -> None:
    """This process was not scheduled for 3 s while the node kept pinging (its pings wait
    unread in our stdin): the late watchdog does not fault the node; reading the pings
    keeps it ok. With nothing waiting, the same silence faults."""
    for waiting in (40, 0):
        engine, clock, transport = FakeEngine(), Clock(), StringTransport()
        parent = ParentLink(
            engine,  # type: ignore[arg-type]
            clock,
            node_timeout=2.0,
            pending=(lambda: 40) if waiting else (lambda: 0),
        )
        parent.makeConnection(transport)
        parent.dataReceived(b'{"op": "ping", "ready": true}\n')
        clock.advance(3.0)  # one late watchdog run, before the waiting bytes are read
        if waiting:
            assert engine.health == [(NODE_CHECK, True)]
            parent.dataReceived(b'{"op": "ping", "ready": true}\n')
            clock.advance(1.0)
            assert engine.health == [(NODE_CHECK, True)]
        else:
            assert engine.health == [(NODE_CHECK, True), (NODE_CHECK, False)]


def test_part_of_a_line_from_the_node_shows_it_is_alive() -> None:
    """Bytes from the node count as word from it, even before a whole line has come."""
    parent, engine, clock, _ = link()
    parent.dataReceived(b'{"op": "ping", "ready": true}\n')
    clock.advance(1.5)
    parent.dataReceived(b'{"op": "pi')
    clock.advance(1.5)
    assert engine.health == [(NODE_CHECK, True)]


def test_not_ready_node_keeps_the_check_failing() -> None:
    """A node that pings but is not ready yet does not let the groups take a VIP."""
    parent, engine, clock, _ = link()
    parent.lineReceived(b'{"op": "ping", "ready": false}')
    clock.advance(1)
    assert (NODE_CHECK, True) not in engine.health


def test_requests_are_answered_and_errors_are_one_line() -> None:
    """Commands with an id get a JSON answer; a refused switchover is an error line."""
    parent, engine, _, transport = link()
    parent.lineReceived(b'{"op": "switchover", "group": "app", "id": 7}')
    parent.lineReceived(b'{"op": "maintenance", "on": true, "id": 8}')
    parent.lineReceived(b"not json")
    answers = [json.loads(line) for line in transport.value().splitlines()]
    assert answers[0] == {"id": 7, "ok": False, "error": "group app is BACKUP here, not MASTER"}
    assert answers[1] == {"id": 8, "ok": True, "result": "maintenance on"}
    assert engine.maintenance == [True]


def test_stdin_closing_finishes_the_process() -> None:
    """When the node goes away (stdin closes) the heartbeat process finishes."""
    parent, _, _, _ = link()
    assert not parent.finished.called
    parent.connectionLost(None)
    assert parent.finished.called

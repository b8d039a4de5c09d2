"""The control protocol, on an in-memory transport."""

from __future__ import annotations

import json
from typing import Any

import pytest

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport

from clickpass.control.protocol import CommandError, CommandRegistry, ControlFactory


def _connect(registry: CommandRegistry, token: bytes | None = None) -> tuple[Any, StringTransport]:
    protocol = ControlFactory(registry, token).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def _answers(transport: StringTransport) -> list[dict[str, Any]]:
    return [json.loads(line) for line in transport.value().splitlines()]


def _registry() -> CommandRegistry:
    registry = CommandRegistry()
    registry.register("echo", lambda args: dict(args))
    registry.register("later", lambda args: succeed({"done": True}))

    def refuse(args: Any) -> None:
        raise CommandError("no, because reasons")

    def crash(args: Any) -> None:
        raise ZeroDivisionError

    registry.register("refuse", refuse)
    registry.register("crash", crash)
    return registry


def test_commands_answer_one_line_each() -> None:
    """Each request line gets one answer line, synchronous or Deferred."""
    protocol, transport = _connect(_registry())
    protocol.dataReceived(b'{"command": "echo", "args": {"a": 1}}\n{"command": "later"}\r\n')
    assert _answers(transport) == [
        {"ok": True, "result": {"a": 1}},
        {"ok": True, "result": {"done": True}},
    ]


@pytest.mark.logs_errors("a command that crashes is logged with its traceback")
def test_bad_requests_get_one_error_line_and_the_connection_goes_on() -> None:
    """Malformed, unknown, refused and crashing commands each answer one error line."""
    protocol, transport = _connect(_registry())
    protocol.dataReceived(
        b'garbage\n"str"\n{"command": 1}\n{"command": "echo", "args": []}\n'
        b'{"command": "nope"}\n{"command": "refuse"}\n{"command": "crash"}\n'
        b'{"command": "echo"}\n'
    )
    answers = _answers(transport)
    assert [a["ok"] for a in answers] == [False] * 7 + [True]
    assert answers[0]["error"] == "malformed request: not a JSON object"
    assert answers[2]["error"] == 'malformed request: needs a "command" string'
    assert answers[3]["error"] == 'malformed request: "args" must be an object'
    assert answers[4]["error"].startswith("unknown command 'nope' (known: ")
    assert answers[5]["error"] == "no, because reasons"
    assert answers[6]["error"] == "crash: internal error, see the log"
    assert not transport.disconnecting


def test_token_is_required_when_configured() -> None:
    """With a token, a request with the right one is answered."""
    protocol, transport = _connect(_registry(), token=b"tok")
    protocol.dataReceived(
        b'{"command": "echo", "token": "tok"}\n{"command": "echo", "token": "tok"}\n'
    )
    assert [a["ok"] for a in _answers(transport)] == [True, True]
    assert not transport.disconnecting


@pytest.mark.parametrize("given", [b"", b', "token": "bad"', b', "token": 5', b', "token": "to"'])
def test_a_bad_or_missing_token_ends_the_connection(given: bytes) -> None:
    """
    A request without the token or with a wrong one gets one error line and
    the connection is closed: the requests pipelined after it on the same
    connection (here 300 more guesses and then the right token) get no answer.
    """
    protocol, transport = _connect(_registry(), token=b"tok")
    guesses = b'{"command": "echo", "token": "guess"}\n' * 300
    protocol.dataReceived(
        b'{"command": "echo"' + given + b"}\n" + guesses + b'{"command": "echo", "token": "tok"}\n'
    )
    assert _answers(transport) == [{"ok": False, "error": "not authorised: bad or missing token"}]
    assert transport.disconnecting


def test_oversized_request_closes_the_connection() -> None:
    """A line longer than the limit gets an error and the connection is closed."""
    protocol, transport = _connect(_registry())
    protocol.dataReceived(b"x" * (70 * 1024))
    assert _answers(transport)[0]["error"].startswith("request longer than")
    assert transport.disconnecting


def test_answer_after_disconnect_is_dropped() -> None:
    """A slow command whose client went away does not fail."""
    registry = CommandRegistry()
    pending: Deferred[dict[str, bool]] = Deferred()
    registry.register("slow", lambda args: pending)
    protocol, transport = _connect(registry)
    protocol.dataReceived(b'{"command": "slow"}\n')
    protocol.connectionLost(None)
    protocol.transport = None
    pending.callback({"late": True})
    assert transport.value() == b""


def test_a_name_registers_once() -> None:
    """Registering a command name twice is a programming error."""
    registry = CommandRegistry()
    registry.register("x", lambda args: None)
    try:
        registry.register("x", lambda args: None)
    except ValueError as e:
        assert "already registered" in str(e)
    else:
        raise AssertionError("second registration accepted")

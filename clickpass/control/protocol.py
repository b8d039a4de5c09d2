"""
The control protocol: one JSON object per line, each way.

A request is C{{"command": NAME, "args": {...}}} (plus C{"token"} on the
TCP port); the answer is C{{"ok": true, "result": ...}} or
C{{"ok": false, "error": ONE LINE}}. A malformed or unknown request
gets one error line and the connection (and the node) goes on; a request
with a bad or missing token (on the TCP port) gets one error line and the
connection is closed, so guesses cannot be pipelined on one connection.

Subsystems add commands to a L{CommandRegistry}; this module must never
know what the commands do.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

MAX_LINE = 64 * 1024

JSON = Any
Handler = Callable[[Mapping[str, JSON]], Awaitable[JSON] | JSON]


class CommandError(Exception):
    """A command cannot be carried out; the message is shown to the operator."""


class CommandRegistry:
    """The commands the control port answers, by name."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, str]] = {}

    def register(self, name: str, handler: Handler, help: str = "") -> None:
        """Answer C{name} with C{handler(args)}; a name is registered once."""
        if name in self._handlers:
            raise ValueError(f"control command {name!r} is already registered")
        self._handlers[name] = (handler, help)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def help(self) -> dict[str, str]:
        return {name: self._handlers[name][1] for name in self.names()}

    async def dispatch(self, name: str, args: Mapping[str, JSON]) -> JSON:
        entry = self._handlers.get(name)
        if entry is None:
            raise CommandError(f"unknown command {name!r} (known: {', '.join(self.names())})")
        result = entry[0](args)
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            result = await result
        return result


class ControlProtocol(LineReceiver):
    """One operator connection."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    log = Logger()

    def __init__(self, registry: CommandRegistry, token: bytes | None) -> None:
        self._registry = registry
        self._token = token

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        d = Deferred.fromCoroutine(self._answer(line))
        d.addErrback(self._unexpected)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._send({"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
        if self.transport is not None:
            self.transport.loseConnection()

    async def _answer(self, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError:
            self._send({"ok": False, "error": "malformed request: not a JSON object"})
            return
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            self._send({"ok": False, "error": 'malformed request: needs a "command" string'})
            return
        if self._token is not None:
            given = request.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode("utf-8"), self._token
            ):
                # One answer and the connection ends: a client that does not
                # know the token gets no second guess on this connection, and
                # the log one line per connection, not one per guess.
                peer = self.transport.getPeer() if self.transport is not None else None
                self.log.warn(
                    "control: refused a request with a bad token from {peer}; "
                    "closing the connection",
                    peer=str(getattr(peer, "host", peer)),
                )
                self._send({"ok": False, "error": "not authorised: bad or missing token"})
                if self.transport is not None:
                    self.transport.loseConnection()
                return
        args = request.get("args", {})
        if not isinstance(args, dict):
            self._send({"ok": False, "error": 'malformed request: "args" must be an object'})
            return
        try:
            result = await self._registry.dispatch(request["command"], args)
        except CommandError as e:
            self._send({"ok": False, "error": str(e)})
            return
        except Exception:
            self.log.failure("control command {command} failed", command=request["command"])
            self._send({"ok": False, "error": f"{request['command']}: internal error, see the log"})
            return
        self._send({"ok": True, "result": result})

    def _send(self, answer: JSON) -> None:
        if self.transport is not None:
            self.sendLine(json.dumps(answer, default=str).encode("utf-8"))

    def _unexpected(self, failure: Any) -> None:
        self.log.failure("control protocol error", failure)


class ControlFactory(Factory):
    """Makes a L{ControlProtocol} for each connection."""

    def __init__(self, registry: CommandRegistry, token: bytes | None = None) -> None:
        self.registry = registry
        self.token = token

    def buildProtocol(self, addr: object) -> ControlProtocol:
        return ControlProtocol(self.registry, self.token)

"""
A small router for twisted.web: method + path pattern -> async handler.

Handlers are C{async def handler(request, **params) -> bytes}; the router
runs them, finishes the request with what they return, and turns
L{HTTPError} into a plain error page. Every redirect target a handler sets
goes out percent-encoded where it holds control or non-ASCII bytes
(L{safe_location}), whoever built it. An unexpected exception is logged and
answered with a 500 page: it never takes the process down. It keeps the
handlers still running, so a stopping worker can wait for them
(L{Router.when_idle}) before it closes the storage they use.

This module must never know about any particular page.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from clickpass.i18n import N_

Handler = Callable[..., Awaitable[bytes | None]]
ErrorPage = Callable[[Request, int, str], bytes]
UNMATCHED = "(unmatched)"
# The Server header of every answer: no software name or version to fingerprint.
SERVER = b"Clickpass"
# Bytes a Location value may not hold as they are: controls, space, DEL, non-ASCII.
_NOT_IN_LOCATION = re.compile(rb"[^\x21-\x7e]")


def safe_location(value: bytes) -> bytes:
    """
    C{value} (a redirect target, UTF-8) with every byte outside visible ASCII
    percent-encoded. A target such as C{/\x7f/x} (from a C{next} parameter)
    would otherwise go out raw: an invalid header that the front refuses
    (502, and the session cookie of the same answer lost) and that browsers
    read each in their own way. Escapes already there are left as they are.
    """
    return _NOT_IN_LOCATION.sub(_percent, value)


def _percent(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


class RequestObserver(Protocol):
    """Counts answered requests (L{clickpass.monitor.metrics.RequestMetrics})."""

    def clock(self) -> float: ...

    def observe(self, route: str, method: str, status: int, started: float) -> None: ...


class HTTPError(Exception):
    """Answer with C{status} and a one-line C{message} for the person."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Route:
    method: bytes
    pattern: re.Pattern[str]
    handler: Handler
    path: str = ""


_PARAM = re.compile(r"\{([a-z_]+)\}")


def _compile(path: str) -> re.Pattern[str]:
    regex = ""
    last = 0
    for m in _PARAM.finditer(path):
        regex += re.escape(path[last : m.start()]) + f"(?P<{m.group(1)}>[^/]+)"
        last = m.end()
    regex += re.escape(path[last:])
    return re.compile(f"^{regex}$")


def _plain_error(request: Request, status: int, message: str) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return message.encode("utf-8") + b"\n"


class Router(Resource):
    """The root resource: dispatches every request to a registered route."""

    isLeaf = True
    log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self._routes: list[Route] = []
        self.error_page: ErrorPage = _plain_error
        # Called first in each handler's own context (a handler runs in a
        # copy of the context, so what this sets there stays with the
        # request): the application picks the request's language here.
        self.on_request: Callable[[Request], object] | None = None
        # Per-route request counts and latency, labelled by the route's
        # pattern (never the raw path, so the label set stays bounded).
        self.observer: RequestObserver | None = None
        # Headers every answer carries (Strict-Transport-Security behind https).
        self.headers: list[tuple[bytes, bytes]] = []
        # Handlers that have not finished yet, and who waits for there to be none.
        self._running: set[Deferred[None]] = set()
        self._idle_waiters: list[Deferred[None]] = []

    @property
    def in_flight(self) -> int:
        """How many handlers are still running."""
        return len(self._running)

    def when_idle(self) -> Deferred[None]:
        """
        A Deferred that fires once no handler is running (at once if none
        is). Cancelling it only stops the wait.
        """
        if not self._running:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._idle_waiters.remove)
        self._idle_waiters.append(waiter)
        return waiter

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Route C{method} requests for C{path} (with C{{name}} parameters) to C{handler}."""
        self._routes.append(Route(method.upper().encode("ascii"), _compile(path), handler, path))

    def render(self, request: Request) -> int | bytes:
        # twisted.web names itself and its version in Server; say only who answers.
        request.setHeader(b"server", SERVER)
        for name, value in self.headers:
            request.setHeader(name, value)
        observer = self.observer
        started = observer.clock() if observer is not None else 0.0
        result = self._dispatch(request, started)
        if observer is not None and result is not NOT_DONE_YET:
            observer.observe(UNMATCHED, "-", request.code, started)
        return result

    def _dispatch(self, request: Request, started: float) -> int | bytes:
        try:
            path = request.path.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(request, HTTPError(400, N_("The address is not valid UTF-8.")))
        allowed: list[bytes] = []
        for route in self._routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            method = request.method
            if method == b"HEAD" and route.method == b"GET":
                method = b"GET"
            if route.method != method:
                allowed.append(route.method)
                continue
            d = Deferred.fromCoroutine(self._run(route.handler, request, m.groupdict()))
            d.addErrback(self._unexpected, request)
            if self.observer is not None:
                d.addBoth(self._observe, route, request, started)
            if not d.called:
                self._running.add(d)
                d.addBoth(self._handler_done, d)
            return NOT_DONE_YET
        if allowed:
            request.setHeader(b"allow", b", ".join(sorted(set(allowed))))
            return self._error(request, HTTPError(405, N_("That method is not allowed here.")))
        return self._error(request, HTTPError(404, N_("There is nothing at this address.")))

    async def _run(self, handler: Handler, request: Request, params: dict[str, Any]) -> None:
        if self.on_request is not None:
            self.on_request(request)
        try:
            body = await handler(request, **params)
        except HTTPError as e:
            body = self._error(request, e)
        if request.finished or request._disconnected:
            return
        headers = request.responseHeaders
        location = headers.getRawHeaders(b"location")
        if location is not None:
            headers.setRawHeaders(b"location", [safe_location(v) for v in location])
        if body:
            request.write(body)
        request.finish()

    def _handler_done(self, result: object, d: Deferred[None]) -> object:
        self._running.discard(d)
        if not self._running and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def _observe(self, result: object, route: Route, request: Request, started: float) -> object:
        if self.observer is not None:
            self.observer.observe(route.path, route.method.decode("ascii"), request.code, started)
        return result

    def _error(self, request: Request, error: HTTPError) -> bytes:
        request.setResponseCode(error.status)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return self.error_page(request, error.status, error.message)

    def _unexpected(self, failure: Failure, request: Request) -> None:
        self.log.failure(
            "unhandled error serving {method} {path}",
            failure,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
        )
        if request.finished or request._disconnected:
            return
        if request.startedWriting:
            request.loseConnection()
            return
        body = self._error(
            request, HTTPError(500, N_("Something went wrong on our side. Please try again."))
        )
        request.write(body)
        request.finish()

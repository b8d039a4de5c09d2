"""
A tiny web application for the balancer's tests and benchmark, served by
real workers in place of the Clickpass application
(C{[workers] app = "devtools.testapp:build_site"}).

It must never be used in production: C{/hang} never answers and
C{/exit} ends the worker.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

SMALL = b"hello from a worker\n"


class _Root(Resource):
    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor

    def render_GET(self, request: Request) -> bytes | int:
        path = request.path
        if path == b"/healthz":
            return b"ok\n"
        if path == b"/pid":
            return b"%d\n" % os.getpid()
        if path == b"/headers":
            lines = [
                k.lower() + b": " + b",".join(v)
                for k, v in sorted(request.requestHeaders.getAllRawHeaders())
            ]
            return b"\n".join(lines) + b"\n"
        if path == b"/sleep":
            seconds = float(request.args.get(b"s", [b"1"])[0])
            d = deferLater(self.reactor, seconds, lambda: None)
            d.addCallback(lambda _: (request.write(b"slept\n"), request.finish()))
            d.addErrback(lambda _: None)
            return NOT_DONE_YET
        if path == b"/hang":
            return NOT_DONE_YET
        if path == b"/big":
            size = int(request.args.get(b"n", [b"1000000"])[0])
            return b"x" * size
        if path == b"/stream":
            # No Content-Length: chunked to HTTP/1.1 clients.
            request.write(b"part one\n")
            request.write(b"part two\n")
            request.finish()
            return NOT_DONE_YET
        if path == b"/exit":
            os._exit(3)
        request.setHeader(b"content-type", b"text/plain")
        return SMALL

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        if request.path == b"/exit":
            os._exit(3)
        return b"got %d bytes: %s" % (len(body), body[:64])


def build_site(reactor: Any, settings: Any, storage: Any, secret: bytes) -> Site:
    """The [workers] app entry point."""
    if os.environ.get("CLICKPASS_TESTAPP_FAIL"):
        raise SystemExit("the test app was told to fail at start")
    fail_while = os.environ.get("CLICKPASS_TESTAPP_FAIL_WHILE")
    if fail_while and os.path.exists(fail_while):
        # Crash-loop tests: fail at start until the test removes the file.
        raise SystemExit(f"the test app fails at start while {fail_while} exists")
    site = Site(_Root(reactor))
    site.displayTracebacks = False
    return site

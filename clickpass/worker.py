"""
A worker process: serves the web application on its own unix socket, for
the node's front to balance requests to.

    python -m clickpass.worker --socket PATH [--config FILE] [--id ID] [--app MOD:FUNC]

The front spawns it with a pipe on stdin and one on stdout. The worker
opens the storage itself, builds the Site, listens on PATH and then writes
C{ready PID} on stdout. When stdin closes (the front is gone) or on SIGTERM
it stops: it stops listening at once, waits for the requests already inside
the application to finish and closes its connections once their answers are
sent (all within 0.8 x C{[workers] kill_timeout}, so that it exits by itself
before the front's SIGKILL), then closes the storage and lets the reactor
stop. The reactor and its thread pool keep running until then: a handler in
a pool thread may still call back into the reactor
(C{blockingCallFromThread}), and joining the pool under it would deadlock.
Log lines go to stderr, which the front relays into its log.
When the front writes C{metrics} on stdin, the worker answers with one
line, C{metrics JSON}: its metrics registry's snapshot (the front adds the
workers' snapshots up for /metrics).

A worker must never run migrations (the node did them before spawning it),
never listen anywhere but its own socket, and never print anything else on
stdout: that pipe is the front's control channel.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, stdio
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from clickpass import config as configmod
from clickpass.balancer._http1 import MAX_REQUEST_LINE

log = Logger()

SiteFactory = Callable[[Any, configmod.Settings, Any, bytes], Site]
# More listening ports for the worker's Site, opened once it listens on its
# socket and stopped with it: for tools that run a worker outside a front
# (devtools.worker serves it on TCP for the benchmarks); the node never
# passes any.
AlsoServe = Callable[[Any, Site], Awaitable[list[IListeningPort]]]

# The share of [workers] kill_timeout a stopping worker gives its requests;
# the rest is for closing the storage before the front's SIGKILL.
FINISH_SHARE = 0.8
# Seconds between looks at the connections a stopping worker is closing.
CLOSE_POLL = 0.01


class FrontChannel(Protocol):
    """
    stdin/stdout to the front: we say ready and answer requests for our
    metrics; stdin closing means stop.
    """

    def __init__(self, on_lost: Callable[[], None], metrics: Any = None) -> None:
        self.on_lost = on_lost
        self.metrics = metrics
        self._buf = b""

    def dataReceived(self, data: bytes) -> None:
        *lines, self._buf = (self._buf + data).split(b"\n")
        self._buf = self._buf[-1024:]
        for line in lines:
            if line.strip() == b"metrics" and self.transport is not None:
                snapshot = self.metrics.snapshot() if self.metrics is not None else {}
                self.transport.write(
                    b"metrics " + json.dumps(snapshot, separators=(",", ":")).encode() + b"\n"
                )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.on_lost()


# Room above [balancer] max_header_bytes for what the front adds to a head it
# passes on (X-Forwarded-For, -Proto, -Host and the client's address).
FORWARDING_ROOM = 4096


def take_what_the_front_passes(site: Site, max_header_bytes: int) -> None:
    """
    Let C{site} read every request head the front passes on. Twisted's
    HTTPChannel refuses a line, or a head, above 16 KiB (a 400 and a closed
    connection, which the front would answer as a failed worker); the front
    takes request lines up to L{MAX_REQUEST_LINE} and heads up to
    C{max_header_bytes}, and refuses longer ones itself (414, 431).
    """
    limit = max(max_header_bytes, MAX_REQUEST_LINE) + FORWARDING_ROOM

    class FrontsChannel(HTTPChannel):
        MAX_LENGTH = limit
        totalHeadersSize = limit

    # Twisted types HTTPFactory.protocol as its HTTP/2-negotiating factory
    # (a function); it is the class attribute ServerFactory.buildProtocol
    # calls, meant to be set, and a worker speaks HTTP/1.1 to the front only.
    site.protocol = FrontsChannel  # type: ignore[method-assign,assignment]


def load_app(spec: str) -> SiteFactory:
    """Import C{module:function}."""
    module, _, name = spec.partition(":")
    factory: SiteFactory = getattr(importlib.import_module(module), name)
    return factory


def _default_app(reactor: Any, settings: configmod.Settings, storage: Any, secret: bytes) -> Site:
    from clickpass.application import build_site

    return build_site(reactor, settings, storage, secret)


async def serve(
    reactor: Any, args: argparse.Namespace, also_serve: AlsoServe | None = None
) -> None:
    settings = configmod.load(args.config)
    secret = configmod.master_secret(settings, create=False)
    from clickpass.storage.sql import open_storage

    storage = open_storage(reactor, settings)
    factory = load_app(args.app) if args.app else _default_app
    site = factory(reactor, settings, storage, secret)
    take_what_the_front_passes(site, settings.balancer.max_header_bytes)
    # The front keeps these connections open and closes them itself.
    site.timeOut = None
    if not args.access_log:
        # The front counts requests; a log line per request costs a worker
        # more than the request does. Twisted's Site has no switch for its
        # access log, and the Site may be any application's ([workers] app),
        # so this instance's log is replaced.
        site.log = lambda request: None  # type: ignore[method-assign]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    port: IListeningPort = await UNIXServerEndpoint(
        reactor, args.socket, backlog=1024, mode=0o600
    ).listen(site)
    ports = [port]
    if also_serve is not None:
        ports.extend(await also_serve(reactor, site))
    done: Deferred[None] = Deferred()

    def stop() -> None:
        if not done.called:
            done.callback(None)

    channel = FrontChannel(stop, getattr(site, "metrics", None))
    stdio.StandardIO(channel, reactor=reactor)

    stopped: Deferred[None] = Deferred()

    def shutdown() -> Deferred[None]:
        # SIGTERM stops the reactor: hold its shutdown (and the join of its
        # thread pool) until the requests in flight have finished.
        stop()
        waiter: Deferred[None] = Deferred()
        stopped.addBoth(lambda _: waiter.callback(None))
        return waiter

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    assert channel.transport is not None
    channel.transport.write(b"ready %d\n" % os.getpid())
    log.info("worker {id} ready on {socket}", id=args.id, socket=args.socket)
    await done
    try:
        deadline = reactor.seconds() + settings.workers.kill_timeout * FINISH_SHARE
        for listening in ports:
            await maybeDeferred(listening.stopListening)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
        await finish_requests(reactor, site, deadline)
        storage.close()
    finally:
        stopped.callback(None)


async def finish_requests(reactor: Any, site: Site, deadline: float) -> None:
    """
    Let the requests already inside the application finish, until
    C{deadline} at the latest: wait for the handlers still running, then
    close the site's connections once what they have to send is sent (the
    reactor's shutdown would drop it). Sites whose root resource does not
    keep its handlers (no C{when_idle}, like devtools.testapp, the balancer's test
    application) only get the second step.
    """
    resource = site.resource
    when_idle = getattr(resource, "when_idle", None)
    if when_idle is not None:
        timeout = max(0.0, deadline - reactor.seconds())
        try:
            await when_idle().addTimeout(timeout, reactor)
        except defer.TimeoutError:
            log.info(
                "stopping with {count} requests still running after {timeout:.1f}s",
                count=getattr(resource, "in_flight", "?"),
                timeout=timeout,
            )
    connections = _connections(reactor, site)
    for connection in connections:
        # Sends what is queued first, then closes.
        connection.loseConnection()
    # Only while stopping: a transport says nothing when it is gone.
    while any(not c.disconnected for c in connections) and reactor.seconds() < deadline:
        await deferLater(reactor, CLOSE_POLL, lambda: None)


def _connections(reactor: Any, site: Site) -> list[Any]:
    """The open connections of C{site}, from the reactor's own lists."""
    return [
        selectable
        for selectable in {*reactor.getReaders(), *reactor.getWriters()}
        if getattr(getattr(selectable, "protocol", None), "factory", None) is site
    ]


def _observer(worker_id: str, verbose: bool) -> ILogObserver:
    def format(event: Any) -> str | None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        return text + "\n" if text else None

    # Per-request events are logged at debug: kept only with --access-log,
    # since every line a worker writes is relayed by the front.
    level = LogLevel.debug if verbose else LogLevel.info
    return FilteringLogObserver(
        FileLogObserver(sys.stderr, format),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )


def main(argv: list[str] | None = None, also_serve: AlsoServe | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clickpass.worker")
    parser.add_argument("--socket", required=True, help="unix socket path to serve on")
    parser.add_argument("--config", default=None, help="the node's configuration file")
    parser.add_argument("--id", default="?", help="the worker's id, for the logs")
    parser.add_argument("--app", default="", help="module:function building the Site")
    parser.add_argument(
        "--access-log", action="store_true", help="log every request and per-request events"
    )
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo(
        [_observer(args.id, args.access_log)], redirectStandardIO=False
    )

    def run(reactor: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(serve(reactor, args, also_serve))

        def failed(failure: Failure) -> Failure:
            if failure.check(configmod.ConfigError):
                sys.stderr.write(f"worker cannot start: configuration error: {failure.value}\n")
                raise SystemExit(1)
            return failure

        d.addErrback(failed)
        return d

    from clickpass.epoll_reactor import install_unless_chosen

    install_unless_chosen()
    from twisted.internet.task import react

    react(run)


if __name__ == "__main__":
    main()

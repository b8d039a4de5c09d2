"""
One request and its response, from a client of the front to a worker and
back (L{Exchange}): the request as read whole by the client side, the
response as relayed by the worker connection, and what happens when either
side fails, times out or goes away.

What an exchange needs of the client connection it belongs to and of the
worker connection that carries it are the Protocols L{ClientSide} and
L{WorkerSide}, owned here: this module imports neither of those modules.
It must never block and never run application code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from clickpass.balancer.answers import local_response
from clickpass.balancer.pool import IDEMPOTENT, Backend, Pool, WorkerLink
from clickpass.balancer.stats import Counters
from clickpass.balancer.twisted_internals import send_now

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class ClientSide(Protocol):
    """What an exchange needs of its client's connection (the front's client side)."""

    pool: Pool
    counters: Counters
    transport: Any

    def account(self, exchange: Exchange) -> None:
        """Count the exchange's response (status and time)."""

    def exchange_done(self, exchange: Exchange) -> None:
        """The exchange's request was read and its response written."""

    def close_now(self) -> None:
        """Close the client's connection once what is queued is sent."""

    def abort(self) -> None:
        """Close the client's connection at once."""


class WorkerSide(WorkerLink, Protocol):
    """What an exchange needs of the connection to a worker that carries it."""

    exchange: Exchange | None


class Exchange:
    """One request and its response, from the client to a worker and back."""

    __slots__ = (
        "abandoned",
        "attempts",
        "backend",
        "body",
        "buffered",
        "chunked",
        "client",
        "close_after",
        "deferred_local",
        "dispatched",
        "has_body",
        "head",
        "http10",
        "keep_alive",
        "local",
        "method",
        "out",
        "queued_at",
        "request_done",
        "response_done",
        "response_started",
        "sent",
        "started",
        "status",
        "url",
        "worker",
    )

    def __init__(
        self,
        client: ClientSide,
        method: bytes,
        url: bytes,
        keep_alive: bool,
        http10: bool,
        started: float,
    ) -> None:
        self.client = client
        self.out: Any = client.transport
        self.method = method
        self.url = url
        self.keep_alive = keep_alive
        self.http10 = http10
        self.started = started
        self.head = b""
        self.body: list[bytes] | None = None
        self.buffered = 0
        self.has_body = False
        self.chunked = False
        self.local: bytes | None = None
        # A response the front makes itself but not at once (/metrics).
        self.deferred_local: Deferred[bytes] | None = None
        self.backend: Backend | None = None
        self.worker: WorkerSide | None = None
        self.dispatched = 0.0
        self.queued_at = 0.0
        self.attempts = 0
        self.status = 0
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.close_after = False
        self.abandoned = False
        self.sent = False

    def path_for_log(self) -> str:
        return self.url.split(b"?", 1)[0][:200].decode("latin-1")

    # The request side.

    def request_body(self, data: bytes) -> None:
        """Body bytes (decoded from chunks): kept until the whole body is in."""
        if self.body is None:
            self.body = [data]
        else:
            self.body.append(data)
        self.buffered += len(data)

    def attached(self, worker: WorkerSide) -> None:
        """A connection to the chosen worker is ready: send the whole request."""
        self.worker = worker
        self.sent = True
        transport = worker.transport
        assert transport is not None
        if self.body:
            send_now(transport, b"".join([self.head, *self.body]))
            self.body = None
        else:
            send_now(transport, self.head)

    # The response side.

    def write(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            send_now(out, data)

    def response_complete(self, worker: WorkerSide | None, reusable: bool) -> None:
        self.response_done = True
        if not self.request_done:
            # The worker answered before reading the whole request: neither
            # connection can be trusted to be at a message boundary.
            reusable = False
            self.close_after = True
        self.worker = None
        client = self.client
        client.account(self)
        client.pool.finished(self, worker, reusable)
        if self.request_done:
            client.exchange_done(self)
        elif not self.abandoned:
            client.close_now()

    def fail(self, status: int, kind: str, retry_after: int | None = None) -> None:
        """Answer with an error from the front (no worker answered)."""
        self.worker = None
        if self.abandoned:
            return
        if self.response_started:
            self.client.abort()
            return
        extra = b"Retry-After: %d\r\n" % retry_after if retry_after is not None else b""
        text = {
            502: "The service had a problem answering; please try again.",
            503: "The service is busy; please try again shortly.",
            504: "The service took too long to answer; please try again.",
        }.get(status, "The service could not answer.")
        close = not self.request_done or not self.keep_alive
        self.close_after = self.close_after or close
        self.response_started = True
        self.response_done = True
        self.status = status
        self.write(local_response(status, text, close, extra, self.method == b"HEAD"))
        self.client.account(self)
        if self.request_done:
            self.client.exchange_done(self)
        else:
            self.client.close_now()

    def worker_lost(self, worker: WorkerSide, why: str, got_bytes: bool) -> None:
        """The worker connection died before the response was complete."""
        client = self.client
        pool = client.pool
        pool.connection_failed(worker, why)
        self.worker = None
        if (
            not self.response_started
            and not got_bytes
            and self.method in IDEMPOTENT
            and self.request_done
            and not self.has_body
        ):
            # The worker sent nothing back; repeating a bodiless idempotent
            # request is safe even if it did arrive (a POST never is).
            pool.unreached(self)
            return
        pool.finished(self, None, False)
        if self.backend is None and self.abandoned:
            return
        self.client.counters.error("upstream_failed")
        if self.response_started:
            client.abort()
        else:
            self.fail(502, "upstream_failed")

    def time_out(self) -> None:
        """The worker did not answer in time: 504, and forget the worker side."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.exchange = None
            worker.abort()
        self.client.pool.finished(self, None, False)
        self.fail(504, "timeout")

    def abandon(self) -> None:
        """The client went away: stop everything this exchange started."""
        if self.abandoned:
            return
        self.abandoned = True
        self.out = None
        worker, self.worker = self.worker, None
        pool = self.client.pool
        if self.backend is not None:
            if not self.response_done:
                self.client.counters.error("client_gone")
            if worker is not None:
                worker.exchange = None
                worker.abort()
            pool.finished(self, None, False)
        else:
            pool.abandoned(self)


__all__ = ["ClientSide", "Exchange", "WorkerSide"]

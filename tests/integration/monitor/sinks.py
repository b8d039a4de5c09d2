"""
Loopback receivers for alert tests: an SMTP sink and a webhook receiver,
each serving in its own thread (so tests that block, waiting for a node
process, still receive), recording what arrives.

They listen on 127.0.0.1 only, on free ports, and stop when the fixture ends;
L{sinks_in_netns} starts them inside a network namespace the test created
(for nodes that run in one), on an address of that namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import email
import email.policy
import json
import os
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from clickpass.monitor.alerts import verify_signature

WEBHOOK_SECRET = "webhook-secret-for-tests"


@dataclass
class Received:
    """Everything a sink got, in order, safe to read from the test thread."""

    items: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.items)

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 20.0) -> list[Any]:
        """Poll until C{predicate(items)} holds (bounded); return the items."""
        deadline = time.monotonic() + timeout
        while True:
            items = self.snapshot()
            if predicate(items):
                return items
            if time.monotonic() > deadline:
                raise AssertionError(f"not received within {timeout}s; got {items!r}")
            time.sleep(0.05)


class _SMTPHandler(socketserver.StreamRequestHandler):
    server: _SMTPServer

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self._reply("220 sink ESMTP ready")
        mail_from, rcpt_to = "", list[str]()
        while True:
            raw = self.rfile.readline(65536)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._reply("250 sink")
            elif verb == "MAIL":
                mail_from, rcpt_to = line.split(":", 1)[1].strip(), []
                self._reply("250 ok")
            elif verb == "RCPT":
                rcpt_to.append(line.split(":", 1)[1].strip())
                self._reply("250 ok")
            elif verb == "DATA":
                self._reply("354 go ahead")
                data = bytearray()
                while True:
                    chunk = self.rfile.readline(65536)
                    if not chunk or chunk in (b".\r\n", b".\n"):
                        break
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                message = email.message_from_bytes(bytes(data), policy=email.policy.default)
                self.server.received.add((mail_from, rcpt_to, message))
                self._reply("250 queued")
            elif verb == "RSET":
                self._reply("250 ok")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 not implemented")


class _SMTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    received: Received


@dataclass
class SMTPSink:
    port: int
    received: Received
    host: str = "127.0.0.1"

    def messages(self) -> list[EmailMessage]:
        return [m for _, _, m in self.received.snapshot()]


class _WebhookHandler(BaseHTTPRequestHandler):
    server: _WebhookServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        valid = verify_signature(
            WEBHOOK_SECRET.encode(),
            self.headers.get("x-clickpass-timestamp", ""),
            body,
            self.headers.get("x-clickpass-signature", ""),
            now=time.time(),
        )
        self.server.received.add({"valid": valid, "json": json.loads(body), "path": self.path})
        status = self.server.status
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads = True
    received: Received
    status: int = 204


@dataclass
class WebhookReceiver:
    port: int
    received: Received
    server: _WebhookServer
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def payloads(self) -> list[dict[str, Any]]:
        return [item["json"] for item in self.received.snapshot()]

    def events(self) -> list[tuple[str, str]]:
        """(status, key) of every event received, in order."""
        return [(e["status"], e["key"]) for p in self.payloads() for e in p["events"]]


def _serve(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return thread


@contextlib.contextmanager
def running_smtp_sink(host: str = "127.0.0.1") -> Iterator[SMTPSink]:
    """An SMTP server on C{host} that accepts and records every message."""
    server = _SMTPServer((host, 0), _SMTPHandler)
    server.received = Received()
    thread = _serve(server)
    try:
        yield SMTPSink(server.server_address[1], server.received, host)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def running_webhook_receiver(host: str = "127.0.0.1") -> Iterator[WebhookReceiver]:
    """An HTTP server on C{host} that records every webhook and checks its signature."""
    server = _WebhookServer((host, 0), _WebhookHandler)
    server.received = Received()
    thread = _serve(server)
    try:
        yield WebhookReceiver(server.server_address[1], server.received, server, host)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def smtp_sink() -> Iterator[SMTPSink]:
    """An SMTP server on 127.0.0.1 that accepts and records every message."""
    with running_smtp_sink() as sink:
        yield sink


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """An HTTP server on 127.0.0.1 that records every webhook and checks its signature."""
    with running_webhook_receiver() as receiver:
        yield receiver


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def _in_netns(namespace: str) -> Iterator[None]:
    """
    Run the block with this thread in network namespace C{namespace} (made
    by C{ip netns add}): sockets created here belong to it for good. Only
    the calling thread moves, and it moves back before the block returns.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(own, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to our own namespace failed")
    finally:
        os.close(own)


@contextlib.contextmanager
def sinks_in_netns(namespace: str, host: str) -> Iterator[tuple[SMTPSink, WebhookReceiver]]:
    """
    The SMTP sink and the webhook receiver listening on C{host} inside
    network namespace C{namespace}, served by threads of this process
    (a listening socket stays in the namespace it was created in).
    """
    with contextlib.ExitStack() as stack:
        with _in_netns(namespace):
            smtp = stack.enter_context(running_smtp_sink(host))
            webhook = stack.enter_context(running_webhook_receiver(host))
        yield smtp, webhook


def alerts_section(directory: Any, smtp: SMTPSink, webhook: WebhookReceiver, **extra: Any) -> str:
    """An [alerts] section sending to the two sinks, gathering for 0.2 s."""
    secret = directory / "webhook-secret"
    secret.write_text(WEBHOOK_SECRET + "\n")
    lines = [
        "[alerts]",
        f'webhook_urls = ["{webhook.url}"]',
        f'webhook_secret_file = "{secret}"',
        f'smtp_host = "{smtp.host}"',
        f"smtp_port = {smtp.port}",
        'mail_from = "clickpass@example.test"',
        'mail_to = ["oncall@example.test"]',
        f"group_wait = {extra.pop('group_wait', 0.2)}",
    ]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"

"""
Webhooks from a real node to a partner endpoint that fails for a while
and then recovers: every event arrives, each person's in order, signed,
with its idempotency id; and deletion requests through the API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.integration.partners.conftest import Partner
from tests.integration.partners.flows import Person
from tests.support.browser import csrf_token
from tests.support.node import METRICS_AUTH, NodeProcess

pytestmark = pytest.mark.integration


class FlakyReceiver:
    """Answers 503 until C{fail_until} (monotonic), then records and answers 200."""

    def __init__(self) -> None:
        receiver = self
        self.fail_until = 0.0
        self.failures = 0
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    if time.monotonic() < receiver.fail_until:
                        receiver.failures += 1
                        self.send_response(503)
                    else:
                        receiver.received.append((dict(self.headers.items()), body))
                        self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[FlakyReceiver]:
    r = FlakyReceiver()
    try:
        yield r
    finally:
        r.stop()


def test_endpoint_down_then_back_gets_everything_in_order(
    node: NodeProcess, partner: Partner, receiver: FlakyReceiver
) -> None:
    api = node.url + "api/v1/"
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    moved = requests.patch(
        api + "site", headers=auth, json={"webhook_url": receiver.url}, timeout=10
    )
    assert moved.status_code == 200
    # Sign up (and confirm the mailed links) first: the events come from the choices.
    people = [Person(node, partner.process.url) for _ in range(3)]
    choices = [person.sign_up_from(person.start()) for person in people]
    receiver.fail_until = time.monotonic() + 4.0
    for i, (person, choice) in enumerate(zip(people, choices, strict=True)):
        person.choose(choice, "register", email=person.email, nickname=f"hook{i}")
    for person, forget in ((people[0], "no"), (people[1], "yes")):
        page = person.session.get(node.url + "account/sites", timeout=10)
        done = person.session.post(
            node.url + "account/sites/disconnect",
            data={
                "csrf_token": csrf_token(page.text),
                "site": partner.site.public_id,
                "forget": forget,
            },
            timeout=10,
        )
        assert done.ok

    def outbox_depth() -> float:
        page = requests.get(node.url + "metrics", headers=METRICS_AUTH, timeout=10).text
        (line,) = [x for x in page.splitlines() if x.startswith("clickpass_webhook_outbox_depth ")]
        return float(line.split()[1])

    # While the endpoint fails, the events wait in the outbox, and /metrics says so.
    waiting = 0.0
    while time.monotonic() < receiver.fail_until and not waiting:
        waiting = outbox_depth()
        time.sleep(0.2)
    assert waiting > 0

    deadline = time.monotonic() + 30
    unique: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        with receiver.lock:
            for _headers, body in receiver.received:
                event = json.loads(body)
                unique[event["id"]] = event
        if len(unique) >= 6:
            break
        time.sleep(0.2)
    assert receiver.failures > 0, "the endpoint never failed: the test proves nothing"
    drained = time.monotonic() + 15
    while outbox_depth() and time.monotonic() < drained:
        time.sleep(0.2)
    assert outbox_depth() == 0
    assert sorted(e["type"] for e in unique.values()) == [
        "user.deleted",
        "user.linked",
        "user.linked",
        "user.linked",
        "user.unlinked",
        "user.unlinked",
    ]
    # In order per person, as received (duplicates of at-least-once are allowed).
    per_person: dict[str, list[str]] = {}
    secret = partner.site.webhook_secret.encode()
    for headers, body in receiver.received:
        event = json.loads(body)
        assert headers["Clickpass-Event-Id"] == event["id"]
        expected = hmac.new(
            secret, headers["Clickpass-Timestamp"].encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        assert headers["Clickpass-Signature"] == "sha256=" + expected
        seen = per_person.setdefault(event["data"]["identifier"], [])
        if event["type"] not in seen:
            seen.append(event["type"])
    orders = sorted(per_person.values(), key=len)
    assert orders == [
        ["user.linked"],
        ["user.linked", "user.unlinked"],
        ["user.linked", "user.unlinked", "user.deleted"],
    ]

    # The deletion request is listed for the partner, who marks it done.
    listed = requests.get(api + "deletion-requests", headers=auth, timeout=10).json()
    (request,) = listed["deletion_requests"]
    deleted = next(e for e in unique.values() if e["type"] == "user.deleted")
    assert request["id"] == deleted["data"]["deletion_request"]
    assert request["identifier"] == deleted["data"]["identifier"]
    done = requests.post(
        api + f"deletion-requests/{request['id']}/complete", headers=auth, timeout=10
    )
    assert done.status_code == 200
    assert requests.get(api + "deletion-requests", headers=auth, timeout=10).json() == {
        "deletion_requests": []
    }

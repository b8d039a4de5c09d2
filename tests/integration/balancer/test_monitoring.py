"""
The front's monitoring with real processes: /metrics adds up the node,
the front and the workers (on a separate listener when configured), and a
worker that keeps dying at start raises workers.crash_loop by webhook and
email, makes /readyz answer 503 at once, and is resolved when it recovers.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.monitor.sinks import (
    SMTPSink,
    WebhookReceiver,
    alerts_section,
    smtp_sink,
    webhook_receiver,
)
from tests.support.node import METRICS_AUTH, NodeProcess, free_port, write_config

pytestmark = pytest.mark.integration

__all__ = ["smtp_sink", "webhook_receiver"]

TESTAPP = "devtools.testapp:build_site"


def fetch(
    url: str, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def sample(page: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text C{page}, or None."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    for line in page.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def metrics_node(tmp_path: Path) -> Iterator[tuple[NodeProcess, int]]:
    port, metrics_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        port,
        "[workers]\ncount = 2\n[balancer]\n"
        f'metrics_listen = "tcp:{metrics_port}:interface=127.0.0.1"\n',
    )
    node = NodeProcess(tmp_path, config, port=port)
    try:
        node.start(timeout=60)
        yield node, metrics_port
    finally:
        node.stop()


def test_metrics_add_up_the_node_the_front_and_the_workers(
    metrics_node: tuple[NodeProcess, int],
) -> None:
    """
    Requests by route and status come from both workers, added up; the
    front's own counters, latency histogram and worker states are there,
    and so is the node's registry. With metrics_listen set, the public
    listener does not serve /metrics and the metrics listener serves nothing else.
    """
    node, metrics_port = metrics_node
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    deadline = time.monotonic() + 30
    while sample(fetch(metrics_url)[1], "clickpass_workers", state="ready") != 2:
        assert time.monotonic() < deadline, "the second worker did not become ready"
        time.sleep(0.1)
    for _ in range(6):
        assert fetch(node.url + "signin")[0] == 200
    public = fetch(node.url + "metrics")
    assert public[0] == 404
    status, page, headers = fetch(metrics_url)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    # Six GETs went to two workers (least outstanding): the page adds them up.
    assert (
        sample(page, "clickpass_http_requests_total", route="/signin", method="GET", status="200")
        == 6
    )
    assert (
        sample(page, "clickpass_http_requests_total", route="(unmatched)", method="-", status="404")
        == 1
    )
    assert sample(page, "clickpass_http_request_seconds_count", route="/signin") == 6
    assert sample(page, "clickpass_metrics_worker_snapshots") == 2
    front_requests = sample(page, "clickpass_front_requests_total")
    assert front_requests is not None and front_requests >= 7
    # The front counts everything it answered, the /metrics polls above included.
    front_2xx = sample(page, "clickpass_front_responses_total", code="2xx")
    assert front_2xx is not None and front_2xx >= 6
    assert sample(page, "clickpass_front_responses_total", code="4xx") == 1
    assert sample(page, "clickpass_front_request_seconds_bucket", le="+Inf") == sample(
        page, "clickpass_front_request_seconds_count"
    )
    assert sample(page, "clickpass_workers", state="ready") == 2
    assert sample(page, "clickpass_worker_restarts_total", slot="0") == 0
    assert sample(page, "clickpass_balancer_routable_workers") == 2
    assert "# TYPE clickpass_alerts_firing gauge" in page  # the node's own registry
    other = fetch(f"http://127.0.0.1:{metrics_port}/signin")
    assert other[0] == 404


def test_a_crash_loop_alerts_and_readyz_says_so(
    tmp_path: Path, smtp_sink: SMTPSink, webhook_receiver: WebhookReceiver
) -> None:
    """
    Workers that die at start: after three failures workers.crash_loop fires
    (webhook and email), /readyz is 503 at once from the front and /metrics
    counts the restarts; once the workers start again and stay up, the
    alert is resolved and /readyz reaches a worker.
    """
    flag = tmp_path / "fail-at-start"
    flag.write_text("until the test removes me\n")
    port = free_port()
    config = write_config(
        tmp_path,
        port,
        f'[workers]\ncount = 1\napp = "{TESTAPP}"\nrespawn_delay_max = 0.5\n'
        + alerts_section(tmp_path, smtp_sink, webhook_receiver),
    )
    node = NodeProcess(tmp_path, config, env={"CLICKPASS_TESTAPP_FAIL_WHILE": str(flag)}, port=port)
    try:
        node.start(timeout=60, wait_for="FrontFactory starting on")
        started = time.monotonic()
        status, text, _ = fetch(node.url + "readyz", timeout=5)
        assert status == 503 and "no worker is taking requests" in text
        assert time.monotonic() - started < 2
        webhook_receiver.received.wait_for(lambda items: len(items) >= 1, timeout=60)
        assert webhook_receiver.events() == [("firing", "workers.crash_loop")]
        assert all(item["valid"] for item in webhook_receiver.received.snapshot())
        event = webhook_receiver.payloads()[0]["events"][0]
        assert "slot 0" in event["summary"] and event["details"]["slots"] == [0]
        (message,) = smtp_sink.received.wait_for(lambda items: len(items) >= 1)
        assert "FIRING workers.crash_loop" in message[2]["subject"]
        _, page, _ = fetch(node.url + "metrics", headers=METRICS_AUTH)
        assert sample(page, "clickpass_workers_crash_looping") == 1
        restarts = sample(page, "clickpass_worker_restarts_total", slot="0")
        assert restarts is not None and restarts >= 2

        flag.unlink()
        node.wait_for_log("ready: serving", timeout=30)
        assert fetch(node.url + "readyz")[0] == 200  # the test app's answer
        webhook_receiver.received.wait_for(lambda items: len(items) >= 2, timeout=30)
        assert webhook_receiver.events()[-1] == ("resolved", "workers.crash_loop")
        _, page, _ = fetch(node.url + "metrics", headers=METRICS_AUTH)
        assert sample(page, "clickpass_workers_crash_looping") == 0
        assert (
            re.search(r'^clickpass_alerts_firing\{key="workers.crash_loop"\}', page, re.M) is None
        )
    finally:
        node.stop()

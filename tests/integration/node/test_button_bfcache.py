"""
The "Sign in with Clickpass" button on a partner's page, in a real
Chromium: pressed, it shows that sign-in has started (aria-busy); when the
person comes back with the Back button and Chromium restores the page from
its back/forward cache, the button is ready again, not stuck busy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.node.conftest import started_node
from tests.support.chromium import WebDriver, WebDriverWait, click, wait_for
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clickpass(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = started_node(tmp_path_factory.mktemp("button-node"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def partner_page(clickpass: NodeProcess) -> Iterator[str]:
    """A partner's page with the snippet of docs/partner-guide.md, cacheable (no no-store)."""
    page = (
        "<!doctype html><html lang=en><title>Partner</title>"
        f"<link rel=stylesheet href='{clickpass.url}static/clickpass-button.css'>"
        f"<a id=clickpass-login href='{clickpass.url}signin' data-clickpass-button>"
        "Sign in with Clickpass</a>"
        f"<script src='{clickpass.url}static/clickpass-button.js' async></script>"
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_back_from_clickpass_leaves_the_button_ready(chrome: WebDriver, partner_page: str) -> None:
    driver = chrome
    driver.get(partner_page)
    button = wait_for(driver, "#clickpass-login.clickpass-button")
    # Marks this document: only a page restored from the cache still has it.
    driver.execute_script("window.__sameDocument = true;")
    click(driver, button)
    wait_for(driver, "form[action='/signin']")
    driver.back()
    wait_for(driver, "#clickpass-login")
    restored = driver.execute_script("return window.__sameDocument === true")
    assert restored, "Chromium did not restore the partner's page from its back/forward cache"
    WebDriverWait(driver, 10).until(
        lambda d: (
            d.execute_script(
                "return document.getElementById('clickpass-login').getAttribute('aria-busy')"
            )
            is None
        )
    )

"""
The authorization endpoint in a real headless Chromium: sign in on
Clickpass's page (the login_hint filled in), consent, and the form_post
answer, whose one script is allowed by its content security policy's
hash, posts the code, state and iss to the client's redirect URI.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest

from clickpass.oidc import keys
from tests.integration.oidc.harness import PASSWORD, Provider
from tests.support.chromium import By, WebDriver, wait_for

pytestmark = pytest.mark.integration


class Callback:
    """A client's redirect URI on loopback that records what is posted to it."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[dict[str, str]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                received.append(dict(parse_qsl(self.rfile.read(length).decode())))
                body = b"<html><body><p id=done>received</p></body></html>"
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callback() -> Iterator[Callback]:
    server = Callback()
    try:
        yield server
    finally:
        server.stop()


def test_form_post_in_chromium(provider: Provider, chrome: WebDriver, callback: Callback) -> None:
    """Sign in, consent, and the form_post page submits itself to the redirect URI."""
    email = f"chromium-{secrets.token_hex(4)}@example.com"
    provider.node.ctl("user", "add", email, "--password-stdin", input=PASSWORD + "\n")
    client = provider.client(callback.url)
    chrome.get(
        provider.authorize_url(
            client, response_mode="form_post", state="st", nonce="nn", login_hint=email
        )
    )
    field = wait_for(chrome, "input#email", timeout=60)  # a fresh node's first page, loaded machine
    assert field.get_attribute("value") == email
    chrome.find_element(By.CSS_SELECTOR, "input#password").send_keys(PASSWORD)
    chrome.find_element(By.CSS_SELECTOR, "form[action='/signin'] button").click()
    wait_for(chrome, "button[value=allow]").click()
    wait_for(chrome, "#done")
    assert len(callback.received) == 1
    answer = callback.received[0]
    assert answer["state"] == "st" and answer["iss"] == provider.issuer
    tokens = provider.token(
        client, grant_type="authorization_code", code=answer["code"], redirect_uri=callback.url
    ).json()
    claims = keys.verify(tokens["id_token"], provider.jwks(), audience=client.client_id)
    assert claims["nonce"] == "nn"

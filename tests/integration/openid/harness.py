"""
Relying-party harnesses for the interop tests: python3-openid's consumer
driven in-process, Perl's Net::OpenID::Consumer driven through rp.pl, a
small web server that publishes a relying party's realm XRDS, and the
person's side of the flow (sign up, consent) in a cookie-keeping browser.
"""

from __future__ import annotations

import html
import re
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from openid.consumer import consumer
from openid.extensions import sreg
from openid.store.memstore import MemoryStore

from tests.support.browser import Browser, csrf_token

RP_PL = Path(__file__).parent / "rp.pl"
TEST_PASSWORD = "correct horse battery"
HIDDEN = re.compile(r'name="(payload|mac)" value="([^"]*)"')


class RelyingPartySite:
    """
    A relying party's web presence on loopback: its realm page publishes an
    XRDS listing C{/return} as its only return_to (relying-party discovery).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.fetches += 1
                body = site.xrds().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/xrds+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = host
        # How many times the provider fetched the realm (discovery).
        self.fetches = 0
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def return_to(self) -> str:
        return self.realm + "return"

    def xrds(self) -> str:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<xrds:XRDS xmlns:xrds="xri://$xrds" xmlns="xri://$xrd*($v*2.0)"><XRD>'
            "<Service><Type>http://specs.openid.net/auth/2.0/return_to</Type>"
            f"<URI>{self.return_to}</URI></Service></XRD></xrds:XRDS>\n"
        )

    def start(self) -> RelyingPartySite:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@dataclass
class PythonRP:
    """A relying party on python3-openid's consumer: stateful or stateless."""

    op_identifier: str
    realm: str
    return_to: str
    stateful: bool = True
    store: MemoryStore | None = None
    session: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stateful and self.store is None:
            self.store = MemoryStore()

    def consumer(self) -> consumer.Consumer:
        return consumer.Consumer(self.session, self.store)

    def begin(self, immediate: bool = False, email: bool = True) -> str:
        """Discover the provider from its OP Identifier; return the URL for the browser."""
        request = self.consumer().begin(self.op_identifier)
        if email:
            request.addExtension(sreg.SRegRequest(required=["email"], optional=["nickname"]))
        return str(request.redirectURL(self.realm, self.return_to, immediate=immediate))

    def complete(self, return_url: str) -> Any:
        """Check the provider's answer as the relying party would."""
        query = dict(parse_qsl(urlsplit(return_url).query, keep_blank_values=True))
        return self.consumer().complete(query, return_url.split("?")[0])


def sreg_email(response: Any) -> str | None:
    data = sreg.SRegResponse.fromSuccessResponse(response)
    return None if data is None else data.get("email")


def perl_rp(*args: str) -> str:
    """Run rp.pl; return its one line of output."""
    result = subprocess.run(
        ["perl", str(RP_PL), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"rp.pl {args[0]} failed: {result.stderr.strip()}")
    return result.stdout.strip()


class Person:
    """Someone with a browser and a Clickpass account, answering the provider's pages."""

    def __init__(self, base_url: str, email: str, password: str = TEST_PASSWORD) -> None:
        self.base_url = base_url
        self.email = email
        self.password = password
        self.browser = Browser(base_url)

    def open(self, url: str) -> Any:
        return self.browser.session.get(url, allow_redirects=False, timeout=30)

    def sign_up_and_continue(self, url: str) -> Any:
        """Open a sign-in URL while signed out: sign up on the way, land on the next page."""
        first = self.open(url)
        assert first.status_code == 303, first.text
        location = first.headers["location"]
        assert location.startswith("/signin?next="), location
        next_url = dict(parse_qsl(urlsplit(location).query))["next"]
        assert next_url.startswith("/openid?")
        return self.browser.sign_up(self.email, self.password, next_url=next_url)

    def decide(self, consent_page: Any, decision: str = "allow") -> Any:
        """Answer a consent page; return the provider's response (not followed)."""
        assert consent_page.status_code == 200, consent_page.text
        fields = {name: html.unescape(value) for name, value in HIDDEN.findall(consent_page.text)}
        assert set(fields) == {"payload", "mac"}, consent_page.text
        fields["csrf_token"] = csrf_token(consent_page.text)
        fields["decision"] = decision
        return self.browser.session.post(
            self.base_url + "openid/decide", data=fields, allow_redirects=False, timeout=30
        )

    def through_consent(self, url: str) -> str:
        """Open an OpenID request while signed in and allow; return the URL sent back."""
        page = self.open(url)
        if page.status_code == 200:
            page = self.decide(page)
        assert page.status_code == 302, page.text
        return str(page.headers["location"])

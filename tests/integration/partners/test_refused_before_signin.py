"""
A misconfigured relying party is refused before the person is asked for a
password, through a real node: a verified partner site's request for a
return_to it did not register, and a plain relying party's request for a
return_to its realm's XRDS does not list, get the page that explains
instead of the sign-in page. A correct request still goes to sign-in, and
a relying party's direct (key-value) requests keep the spec's format.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import pytest
import requests

from tests.integration.partners.conftest import Partner
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

OPENID2 = "http://specs.openid.net/auth/2.0"
SELECT = OPENID2 + "/identifier_select"


def checkid(node: NodeProcess, realm: str, return_to: str) -> requests.Response:
    """A browser arriving with a checkid_setup request, without a Clickpass session."""
    query = {
        "openid.ns": OPENID2,
        "openid.mode": "checkid_setup",
        "openid.claimed_id": SELECT,
        "openid.identity": SELECT,
        "openid.realm": realm,
        "openid.return_to": return_to,
    }
    return requests.get(node.url + "openid?" + urlencode(query), allow_redirects=False, timeout=30)


def assert_refused_without_sign_in(response: requests.Response, explanation: str) -> None:
    assert response.status_code == 400, (response.status_code, response.headers)
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert explanation in response.text, response.text[:3000]
    assert 'type="password"' not in response.text
    assert "/signin" not in response.text.split("<main", 1)[-1]


def test_unregistered_return_to_of_a_partner_is_refused_before_sign_in(
    node: NodeProcess, partner: Partner
) -> None:
    """
    The partner registered only C{<realm>return?*}: a request to come back
    anywhere else in its realm gets the page naming the site and the
    address, not the sign-in page; its registered return_to goes to sign-in.
    """
    realm = partner.process.url
    refused = checkid(node, realm, realm + "elsewhere")
    assert_refused_without_sign_in(refused, "not one of the addresses it registered with Clickpass")
    assert "Example Partner" in refused.text and realm + "elsewhere" in refused.text
    allowed = checkid(node, realm, realm + "return?janrain_nonce=x")
    assert allowed.status_code == 303
    assert allowed.headers["location"].startswith("/signin?next=")


class PublishingRealm:
    """A plain relying party's realm (no partner site) whose XRDS lists one return_to."""

    def __init__(self, host: str) -> None:
        realm_holder: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                realm = realm_holder[0]
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<xrds:XRDS xmlns:xrds="xri://$xrds" xmlns="xri://$xrd*($v*2.0)"><XRD>'
                    "<Service><Type>http://specs.openid.net/auth/2.0/return_to</Type>"
                    f"<URI>{realm}return</URI></Service></XRD></xrds:XRDS>\n"
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/xrds+xml")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.realm = f"http://{host}:{self.httpd.server_address[1]}/"
        realm_holder.append(self.realm)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def publishing_realm() -> Iterator[PublishingRealm]:
    server = PublishingRealm("127.0.0.8")
    try:
        yield server
    finally:
        server.stop()


def test_return_to_the_realm_does_not_publish_is_refused_before_sign_in(
    node: NodeProcess, publishing_realm: PublishingRealm
) -> None:
    """
    Relying-party discovery runs before the sign-in page: a return_to the
    realm's XRDS does not list is refused with the reason; the listed one
    goes to sign-in.
    """
    realm = publishing_realm.realm
    refused = checkid(node, realm, realm + "other")
    assert_refused_without_sign_in(refused, "does not confirm that address")
    allowed = checkid(node, realm, realm + "return")
    assert allowed.status_code == 303
    assert allowed.headers["location"].startswith("/signin?next=")


def test_direct_requests_keep_the_key_value_format(node: NodeProcess) -> None:
    """A relying party's check_authentication is answered in key-value form, not a page."""
    answer = requests.post(
        node.url + "openid",
        data={
            "openid.ns": OPENID2,
            "openid.mode": "check_authentication",
            "openid.assoc_handle": "nothing",
            "openid.sig": "AAAA",
            "openid.signed": "mode",
        },
        timeout=30,
    )
    assert answer.headers["content-type"].startswith("text/plain")
    lines = dict(line.split(":", 1) for line in answer.text.splitlines())
    assert lines["ns"] == OPENID2
    assert lines.get("is_valid") == "false" or "error" in lines, answer.text

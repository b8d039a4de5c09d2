"""
Sector identifier URIs through a real node (SQLite and MariaDB), the
document served by a real loopback HTTP server (the node's trial setting
allows loopback): a client whose redirect URIs lie on two hosts gives a
person one subject on both, the sector identifier URI's host's; a
document that does not list a redirect URI, is not JSON or is not there
refuses the client with one line and stores nothing; registration
(RFC 7591) fetches it too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from clickpass.oidc import keys
from tests.integration.oidc.harness import Client, Person, Provider, query_of

pytestmark = pytest.mark.integration

FIRST = "https://www.sector.example.com/cb"
SECOND = "https://app.sector.example.com/cb"


@pytest.fixture(scope="module")
def documents() -> Iterator[tuple[str, dict[str, tuple[int, bytes]]]]:
    """A loopback server answering each path with a (status, body) set by the test."""
    served: dict[str, tuple[int, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = served.get(self.path, (404, b"not here"))
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def add(provider: Provider, site: str, uris: list[str], sector_uri: str) -> Any:
    args = ["oidc", "clients", "add", site, "--sector-identifier-uri", sector_uri]
    for uri in uris:
        args += ["--redirect-uri", uri]
    return provider.node.ctl("--json", *args, check=False)


def subject(provider: Provider, person: Person, client: Client) -> str:
    code = query_of(person.authorize(provider.authorize_url(client)))["code"]
    answer = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    ).json()
    claims = keys.verify(answer["id_token"], provider.jwks(), audience=client.client_id)
    return str(claims["sub"])


def test_one_subject_across_the_redirect_hosts(
    provider: Provider, documents: tuple[str, dict[str, tuple[int, bytes]]]
) -> None:
    """Both redirect hosts see the person as the same subject; a host's own client does not."""
    base, served = documents
    served["/sector.json"] = (200, json.dumps([FIRST, SECOND]).encode())
    site = provider.site("https://www.sector.example.com/").public_id
    done = add(provider, site, [FIRST, SECOND], base + "/sector.json")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["sector"] == "127.0.0.1" and made["sector_identifier_uri"] == base + "/sector.json"
    person = Person(provider)
    first = Client(made["client_id"], made["client_secret"], FIRST, site, False)
    second = Client(made["client_id"], made["client_secret"], SECOND, site, False)
    assert subject(provider, person, first) == subject(provider, person, second)
    own = provider.client("https://www.sector.example.com/own", site=site)
    assert subject(provider, person, own) != subject(provider, person, first)


@pytest.mark.parametrize(
    ("path", "answer", "message"),
    [
        ("/short.json", (200, json.dumps([FIRST]).encode()),
         f"does not list the redirect URI {SECOND}"),
        ("/html", (200, b"<html>hello</html>"), "does not serve JSON"),
        ("/missing.json", None, "answered HTTP 404, not 200"),
    ],
)  # fmt: skip
def test_a_bad_document_refuses_the_client(
    provider: Provider,
    documents: tuple[str, dict[str, tuple[int, bytes]]],
    path: str,
    answer: tuple[int, bytes] | None,
    message: str,
) -> None:
    base, served = documents
    if answer is not None:
        served[path] = answer
    site = provider.site("https://www.sector.example.com/").public_id
    before = provider.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM oidc_clients"))
    done = add(provider, site, [FIRST, SECOND], base + path)
    assert done.returncode != 0
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert provider.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM oidc_clients")) == before


def test_registration_fetches_the_document(
    provider: Provider, documents: tuple[str, dict[str, tuple[int, bytes]]]
) -> None:
    """RFC 7591 with a sector_identifier_uri: checked the same way, and echoed."""
    base, served = documents
    uris = ["https://one.reg-sector.example.com/cb", "https://two.reg-sector.example.com/cb"]
    served["/reg.json"] = (200, json.dumps(uris).encode())
    _, key = provider.verified_site_with_key("https://*.reg-sector.example.com/")
    headers = {"Authorization": "Bearer " + key}
    made = requests.post(
        provider.url + "oidc/register",
        json={"redirect_uris": uris, "sector_identifier_uri": base + "/reg.json"},
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    assert made.json()["sector_identifier_uri"] == base + "/reg.json"
    refused = requests.post(
        provider.url + "oidc/register",
        json={"redirect_uris": uris, "sector_identifier_uri": base + "/nothing.json"},
        headers=headers,
        timeout=30,
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_client_metadata"
    assert "answered HTTP 404" in refused.json()["error_description"]

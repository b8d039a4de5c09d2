"""
Two nodes on one database: what one node issues, the other verifies, and a
replay refused by one is refused by both. Nothing that matters lives in a
node's memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from openid.consumer import consumer

from tests.integration.openid.harness import Person, PythonRP, RelyingPartySite
from tests.support.node import NodeProcess, free_port

pytestmark = pytest.mark.integration

Pair = tuple[NodeProcess, NodeProcess]


def _config(directory: Path, name: str, port: int, public_port: int, shared: Path) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f"""
[node]
name = "{name}"
data_dir = "{directory / name}"
public_url = "http://127.0.0.1:{public_port}/"

[web]
listen = ["tcp:{port}:interface=127.0.0.1"]

[database]
path = "{shared / "clickpass.sqlite3"}"

[secrets]
secret_file = "{shared / "secret.key"}"

[openid]
allow_private_rp_discovery = true
"""
    )
    return path


@pytest.fixture(scope="module")
def two_nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two nodes, one SQLite database and one master secret; both answer as one provider."""
    tmp = tmp_path_factory.mktemp("two-nodes")
    shared = tmp / "shared"
    shared.mkdir()
    (shared / "secret.key").write_text(secrets.token_hex(32) + "\n")
    port_a, port_b = free_port(), free_port()
    a = NodeProcess(tmp, _config(tmp, "a", port_a, port_a, shared), port=port_a)
    b = NodeProcess(tmp, _config(tmp, "b", port_b, port_a, shared), port=port_b)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_assertion_from_one_node_checks_out_once_on_the_other(
    two_nodes: Pair, rp_site: RelyingPartySite
) -> None:
    """A stateless assertion signed by node a is confirmed by node b, then by neither again."""
    a, b = two_nodes
    person = Person(a.url, f"shared-{secrets.token_hex(4)}@example.com")
    rp = PythonRP(a.url, rp_site.realm, rp_site.return_to, stateful=False)
    location = person.decide(person.sign_up_and_continue(rp.begin())).headers["location"]
    args = dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))
    args["openid.mode"] = "check_authentication"
    on_b = requests.post(b.url + "openid", data=args, timeout=10)
    assert "is_valid:true" in on_b.text
    on_a = requests.post(a.url + "openid", data=args, timeout=10)
    assert "is_valid:false" in on_a.text


def test_association_made_on_one_node_signs_on_the_other(
    two_nodes: Pair, rp_site: RelyingPartySite
) -> None:
    """
    A stateful relying party associates with node a; node b, sharing the
    store, signs with that association and the relying party verifies it.
    """
    a, b = two_nodes
    person = Person(a.url, f"shared-{secrets.token_hex(4)}@example.com")
    rp = PythonRP(a.url, rp_site.realm, rp_site.return_to, stateful=True)
    url = rp.begin()
    assert rp.store is not None and rp.store.getAssociation(a.url + "openid") is not None
    # The person's browser reaches node b instead (same session cookie works there too).
    on_b = url.replace(a.url, b.url, 1)
    consent = person.sign_up_and_continue(url)
    assert consent.status_code == 200
    page = person.open(on_b)
    answer = person.decide(page)
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert "openid.invalidate_handle" not in location
    result = rp.complete(location)
    assert result.status == consumer.SUCCESS, getattr(result, "message", "")

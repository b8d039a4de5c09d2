"""
clickpass-ctl oidc clients add|list|remove against a real node (SQLite
and MariaDB): the secret shown once and stored hashed, bad settings
refused with one line and nothing stored, a removed client refused.
"""

from __future__ import annotations

import json

import pytest

from clickpass.oidc.clients import secret_hash
from tests.integration.oidc.harness import Provider

pytestmark = pytest.mark.integration


def test_add_shows_the_secret_once_and_stores_its_hash(provider: Provider) -> None:
    site = provider.site("https://shop.example.net/").public_id
    printed = provider.node.ctl(
        "oidc", "clients", "add", site, "--redirect-uri", "https://shop.example.net/cb"
    ).stdout
    assert "client secret: " in printed
    secret = printed.split("client secret: ")[1].split()[0]
    client_id = printed.split()[1]
    stored = provider.run(
        lambda tx: tx.fetchone(
            "SELECT secret_hash, redirect_uris, sector FROM oidc_clients WHERE client_id = ?",
            client_id,
        )
    )
    assert stored == (secret_hash(secret), "https://shop.example.net/cb", "shop.example.net")
    listed = json.loads(provider.node.ctl("--json", "oidc", "clients", "list").stdout)
    mine = [c for c in listed["clients"] if c["client_id"] == client_id]
    assert mine and mine[0]["type"] == "confidential" and mine[0]["id_token_alg"] == "RS256"
    assert secret not in json.dumps(listed) and secret_hash(secret) not in json.dumps(listed)
    assert client_id in provider.node.ctl("oidc", "clients", "list").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redirect-uri", "http://shop.example.net/cb"], "must use https"),
        (["--redirect-uri", "https://shop.example.net/cb#x"], "fragment"),
        (["--redirect-uri", "https://a.example.net/", "--redirect-uri", "https://b.example.net/"],
         "one host"),
        (["--redirect-uri", "https://shop.example.net/cb", "--alg", "none"], "unknown ID token"),
        (["--redirect-uri", "https://shop.example.net/cb", "--alg", "HS256"], "unknown ID token"),
        (["--redirect-uri", "https://shop.example.net/cb", "--scope", "admin"], "unknown scope"),
        (["--redirect-uri", "not a url"], "spaces"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_with_one_line(
    provider: Provider, args: list[str], message: str
) -> None:
    site = provider.site("https://shop.example.net/").public_id
    before = provider.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM oidc_clients"))
    result = provider.node.ctl("oidc", "clients", "add", site, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert provider.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM oidc_clients")) == before


def test_unknown_site_is_refused(provider: Provider) -> None:
    result = provider.node.ctl(
        "oidc", "clients", "add", "site_nosuch", "--redirect-uri", "https://x.example/cb",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "no partner site" in result.stderr


def test_loopback_http_and_public_clients_are_allowed(provider: Provider) -> None:
    client = provider.client("http://[::1]:8000/cb", public=True, alg="ES256")
    assert client.secret == ""
    listed = json.loads(provider.node.ctl("--json", "oidc", "clients", "list").stdout)
    mine = next(c for c in listed["clients"] if c["client_id"] == client.client_id)
    assert (mine["type"], mine["id_token_alg"]) == ("public", "ES256")


def test_a_removed_client_is_refused(provider: Provider) -> None:
    client = provider.client("https://gone.example.net/cb")
    printed = provider.node.ctl("oidc", "clients", "remove", client.client_id).stdout
    assert "removed client" in printed
    response = provider.token(client, grant_type="refresh_token", refresh_token="x")
    assert response.status_code == 401
    again = provider.node.ctl("oidc", "clients", "remove", client.client_id, check=False)
    assert again.returncode != 0 and "no OpenID Connect client" in again.stderr

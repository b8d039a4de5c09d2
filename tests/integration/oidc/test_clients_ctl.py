"""
clickpass-ctl oidc clients add|list|show|set|rotate-secret|remove|delete
against a real node (SQLite and MariaDB): the secret shown once and
stored hashed, bad settings refused with one line and nothing stored, a
removed client refused, token lifetimes that the tokens then have, and a
rotated secret whose predecessor works for the grace period only.
"""

from __future__ import annotations

import json

import pytest

from clickpass.oidc import keys
from clickpass.oidc.clients import secret_hash
from tests.integration.oidc.harness import Client, Person, Provider, query_of

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


def tokens_for(provider: Provider, client: Client) -> dict[str, object]:
    code = query_of(Person(provider).authorize(provider.authorize_url(client)))["code"]
    answer = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri
    )
    assert answer.status_code == 200, answer.text
    found: dict[str, object] = answer.json()
    return found


def test_lifetimes_set_by_the_operator_are_the_tokens(provider: Provider) -> None:
    """set changes the lifetimes of tokens issued next: expires_in, the ID token's exp."""
    client = provider.client("https://lifetimes.example.net/cb")
    before = tokens_for(provider, client)
    assert before["expires_in"] == 3600
    printed = provider.node.ctl(
        "oidc", "clients", "set", client.client_id,
        "--access-token-lifetime", "300", "--id-token-lifetime", "120",
    ).stdout  # fmt: skip
    assert "access token 300s" in printed and "ID token 120s" in printed
    after = tokens_for(provider, client)
    assert after["expires_in"] == 300
    claims = keys.verify(str(after["id_token"]), provider.jwks(), audience=client.client_id)
    assert claims["exp"] - claims["iat"] == 120
    shown = json.loads(
        provider.node.ctl("--json", "oidc", "clients", "show", client.client_id).stdout
    )
    assert shown["lifetimes"] == {"access_token": 300, "refresh_token": 30 * 86400, "id_token": 120}
    bad = provider.node.ctl(
        "oidc", "clients", "set", client.client_id, "--id-token-lifetime", "100000", check=False
    )
    assert bad.returncode != 0 and "from 60 to 86400" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_rotated_secret_overlaps_for_the_grace_period(provider: Provider) -> None:
    """
    After rotate-secret both secrets authenticate (the new one printed once,
    only its hash stored); after a rotation with --grace 0 the previous one
    is refused at once.
    """
    client = provider.client("https://rotate.example.net/cb")
    printed = provider.node.ctl("oidc", "clients", "rotate-secret", client.client_id).stdout
    assert "the previous secret works until" in printed
    new = printed.split("new client secret: ")[1].split()[0]
    stored = provider.run(
        lambda tx: tx.scalar(
            "SELECT secret_hash FROM oidc_clients WHERE client_id = ?", client.client_id
        )
    )
    assert stored == secret_hash(new)
    old_client, new_client = client, Client(client.client_id, new, client.redirect_uri, "", False)
    for c in (old_client, new_client):
        refused = provider.token(c, grant_type="refresh_token", refresh_token="nope")
        assert refused.json()["error"] == "invalid_grant", refused.text  # authenticated
    assert (
        "previous secret good until"
        in provider.node.ctl("oidc", "clients", "show", client.client_id).stdout
    )
    printed = provider.node.ctl(
        "oidc", "clients", "rotate-secret", client.client_id, "--grace", "0"
    ).stdout
    assert "the previous secret no longer works" in printed
    newest = printed.split("new client secret: ")[1].split()[0]
    for stale in (old_client, new_client):
        response = provider.token(stale, grant_type="refresh_token", refresh_token="nope")
        assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    fresh = Client(client.client_id, newest, client.redirect_uri, "", False)
    assert tokens_for(provider, fresh)["access_token"]


def test_rotate_secret_of_a_public_client_is_refused(provider: Provider) -> None:
    client = provider.client("https://public-rotate.example.net/cb", public=True)
    result = provider.node.ctl("oidc", "clients", "rotate-secret", client.client_id, check=False)
    assert result.returncode != 0 and "no secret to rotate" in result.stderr


def test_delete_is_remove(provider: Provider) -> None:
    client = provider.client("https://deleted.example.net/cb")
    assert (
        "removed client" in provider.node.ctl("oidc", "clients", "delete", client.client_id).stdout
    )
    shown = provider.node.ctl("oidc", "clients", "show", client.client_id, check=False)
    assert shown.returncode != 0 and "no OpenID Connect client" in shown.stderr

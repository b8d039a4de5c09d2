"""Client settings: redirect URIs (https, or http on loopback; one host), algorithms, scopes."""

from __future__ import annotations

import pytest

from clickpass.oidc import clients
from clickpass.oidc.clients import ClientError


@pytest.mark.parametrize(
    "uri",
    [
        "https://shop.example/cb",
        "https://shop.example:8443/cb?x=1",
        "http://127.0.0.1:9/cb",
        "http://[::1]/cb",
        "http://localhost:3000/cb",
    ],
)
def test_accepted_redirect_uris(uri: str) -> None:
    assert clients.check_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://shop.example/cb", "must use https"),
        ("http://127.0.0.1.example/cb", "must use https"),
        ("https://shop.example/cb#frag", "fragment"),
        ("https:///cb", "no host"),
        ("https://shop.example/c b", "spaces"),
        ("https://shop.example:99999/", "not a URL"),
        ("https://shop.example/" + "a" * 2100, "longer than"),
        ("javascript:alert(1)", "no host"),
        # A private-use scheme (native apps) is not accepted yet.
        ("com.example.app:/oauth", "no host"),
    ],
)
def test_refused_redirect_uris(uri: str, message: str) -> None:
    with pytest.raises(ClientError, match=message):
        clients.check_redirect_uri(uri)


def test_settings_need_one_host_a_known_alg_and_known_scopes() -> None:
    ok = clients.check_settings(
        ["https://a.example/1", "https://a.example/2"], id_token_alg="ES256"
    )
    assert ok.id_token_alg == "ES256" and ok.scopes == frozenset(clients.SCOPES)
    assert clients.check_settings(["https://a.example/"], scopes=["email"]).scopes == {
        "openid",
        "email",
    }
    with pytest.raises(ClientError, match="one host"):
        clients.check_settings(["https://a.example/", "https://b.example/"])
    with pytest.raises(ClientError, match="at least one"):
        clients.check_settings([])
    for alg in ("none", "HS256", "RS512"):
        with pytest.raises(ClientError, match="unknown ID token algorithm"):
            clients.check_settings(["https://a.example/"], id_token_alg=alg)
    with pytest.raises(ClientError, match="unknown scope"):
        clients.check_settings(["https://a.example/"], scopes=["offline_access"])


def test_a_public_client_never_authenticates_with_a_secret() -> None:
    client = clients.Client(
        "oidc_1", 1, "site_1", "Shop", "https://a/", "a", ("https://a/cb",), True, "RS256",
        frozenset({"openid"}), 0, secret_hash="",
    )  # fmt: skip
    assert not client.authenticates("", 0)
    confidential = clients.Client(
        "oidc_2", 1, "site_1", "Shop", "https://a/", "a", ("https://a/cb",), False, "RS256",
        frozenset({"openid"}), 0, secret_hash=clients.secret_hash("s3cret"),
    )  # fmt: skip
    assert confidential.authenticates("s3cret", 0)
    assert not confidential.authenticates("s3cret ", 0)
    assert "s3cret" not in repr(confidential.describe())

"""
The consent page's choices, as pure functions: which scope asked for a
value, which scopes a client is told it got once the person unticked
some values, and how a client is named (verified or not).
"""

from __future__ import annotations

from clickpass.oidc import web
from clickpass.oidc.clients import Client


def _client(verified: bool, name: str = "Shop") -> Client:
    return Client(
        client_id="oidc_1", site_id=1, site_public_id="site_1",
        site_name=name if verified else "shop.example", realm="https://shop.example/",
        sector="shop.example", redirect_uris=("https://shop.example/cb",), public=False,
        id_token_alg="RS256", scopes=frozenset({"openid", "email", "profile"}), created=0,
        registered_name=name, site_verified=verified,
    )  # fmt: skip


def test_each_value_names_the_scope_that_asked_for_it() -> None:
    scopes = ("openid", "profile", "email")
    assert web.scope_of("email", scopes) == "email"
    assert web.scope_of("nickname", scopes) == "profile"
    assert web.scope_of("fullname", ("openid",)) == ""


def test_a_scope_whose_every_value_was_declined_is_not_granted() -> None:
    scopes = ("openid", "email", "profile")
    assert web.granted_scopes(scopes, frozenset()) == scopes
    assert web.granted_scopes(scopes, frozenset({"email"})) == ("openid", "profile")
    # One profile value kept: the scope stays (the other value is not released).
    assert web.granted_scopes(scopes, frozenset({"nickname"})) == scopes
    assert web.granted_scopes(scopes, frozenset({"nickname", "fullname", "email"})) == ("openid",)


def test_a_verified_site_is_named_by_its_name() -> None:
    label = web.client_label(_client(True), "https://shop.example/cb?x=1")
    assert label == {"name": "Shop", "host": "shop.example", "unverified": ""}


def test_an_unverified_name_is_marked_and_the_host_given() -> None:
    label = web.client_label(_client(False, "Your Bank"), "https://shop.example/cb")
    assert label == {"name": "Your Bank", "host": "shop.example", "unverified": "yes"}
    nameless = web.client_label(_client(False, ""), "https://shop.example/cb")
    assert nameless["name"] == "shop.example" and nameless["unverified"] == "yes"

"""
The authorization request, read and checked without I/O: what is never
redirected (unknown client, unregistered redirect URI), what goes back to
the client as the spec's error, and what a valid request holds.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs

import pytest

from clickpass.oidc import authorize
from clickpass.oidc.authorize import AuthorizeErrorAt, NotForClient
from clickpass.oidc.clients import Client

CHALLENGE = "E" * 43


def client(public: bool = False, scopes: frozenset[str] = frozenset({"openid", "email"})) -> Client:
    return Client(
        client_id="oidc_1", site_id=1, site_public_id="site_1", site_name="Shop",
        realm="https://shop.example/", sector="shop.example",
        redirect_uris=("https://shop.example/cb",), public=public, id_token_alg="RS256",
        scopes=scopes, created=0,
    )  # fmt: skip


def params(**extra: str | list[str]) -> dict[str, list[str]]:
    base: dict[str, str | list[str]] = {
        "client_id": "oidc_1",
        "redirect_uri": "https://shop.example/cb",
        "response_type": "code",
        "scope": "openid",
        **extra,
    }
    return {k: v if isinstance(v, list) else [v] for k, v in base.items()}


def checked(c: Client | None = None, **extra: str | list[str]) -> authorize.AuthorizationRequest:
    p = params(**extra)
    the_client = c or client()
    return authorize.check(p, authorize.destination(p, the_client))


def refused(c: Client | None, extra: dict[str, str | list[str]]) -> AuthorizeErrorAt:
    with pytest.raises(AuthorizeErrorAt) as e:
        checked(c, **extra)
    return e.value


@pytest.mark.parametrize(
    "extra",
    [
        {"redirect_uri": "https://shop.example/cb/"},
        {"redirect_uri": "https://SHOP.example/cb"},
        {"redirect_uri": "https://shop.example/cb?next=/"},
        {"redirect_uri": ["https://shop.example/cb", "https://shop.example/cb"]},
        {"redirect_uri": ""},
        {"client_id": "oidc_2"},
        {"client_id": ["oidc_1", "oidc_1"]},
    ],
)
def test_never_redirected(extra: dict[str, str | list[str]]) -> None:
    """An unregistered, repeated or missing redirect URI, or another client: NotForClient."""
    p = params(**extra)
    with pytest.raises(NotForClient):
        authorize.destination(p, client())


def test_unknown_client_is_never_redirected() -> None:
    with pytest.raises(NotForClient):
        authorize.destination(params(), None)


def test_oversized_or_undecodable_input_is_never_redirected() -> None:
    with pytest.raises(NotForClient):
        authorize.single_values({b"client_id": [b"x" * 20000]})
    with pytest.raises(NotForClient):
        authorize.single_values({b"state": [b"\xff"]})


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"scope": "email"}, "invalid_scope"),
        ({"prompt": "none login"}, "invalid_request"),
        ({"prompt": "sometimes"}, "invalid_request"),
        ({"max_age": "-1"}, "invalid_request"),
        ({"max_age": "\uff11"}, "invalid_request"),  # a fullwidth digit one
        ({"nonce": "n" * 600}, "invalid_request"),
        ({"nonce": ["a", "b"]}, "invalid_request"),
        ({"code_challenge": CHALLENGE, "code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": CHALLENGE}, "invalid_request"),
        ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
        ({"code_challenge_method": "S256"}, "invalid_request"),
        ({"request": "e30."}, "request_not_supported"),
        ({"request_uri": "https://x/"}, "request_uri_not_supported"),
        ({"registration": "{}"}, "registration_not_supported"),
        ({"response_mode": "fragment"}, "invalid_request"),
    ],
)
def test_errors_for_the_client(extra: dict[str, str | list[str]], error: str) -> None:
    """Each malformed request is the spec's error, sent to the registered redirect URI."""
    e = refused(None, extra)
    assert e.error == error
    assert e.destination.redirect_uri == "https://shop.example/cb"


def test_public_client_must_use_pkce() -> None:
    assert refused(client(public=True), {}).error == "invalid_request"
    ok = checked(client(public=True), code_challenge=CHALLENGE, code_challenge_method="S256")
    assert ok.code_challenge == CHALLENGE


def test_error_parameters_carry_state_and_iss() -> None:
    e = refused(None, {"response_type": "token", "state": "xyz"})
    assert authorize.error_parameters(e, "https://cp.example") == {
        "error": "unsupported_response_type",
        "error_description": "Clickpass answers only response_type=code",
        "state": "xyz",
        "iss": "https://cp.example",
    }


def test_a_valid_request_and_its_fields() -> None:
    """Scopes the client may not ask for are dropped; email maps to the consent field email."""
    auth = checked(
        scope="openid email profile unknown", state="s", nonce="n", prompt="consent",
        max_age="300", login_hint="a@b.example", response_mode="form_post",
    )  # fmt: skip
    assert auth.scopes == ("openid", "email")
    assert auth.fields == frozenset({"email"})
    assert auth.destination.response_mode == "form_post"
    assert (auth.nonce, auth.max_age, auth.prompt) == ("n", 300, frozenset({"consent"}))


def test_query_carries_the_request_and_drops_prompt_login() -> None:
    """The request as carried through the sign-in page reads back the same, minus prompt=login."""
    auth = checked(scope="openid email", state="s", prompt="login consent", max_age="0")
    again = parse_qs(auth.query(drop_prompt_login=True, signed_in_after=123))
    assert again["prompt"] == ["consent"]
    assert again[authorize.REAUTH_PARAMETER] == ["123"]
    reread = authorize.check(again, authorize.destination(again, client()))
    assert reread.signed_in_after == 123 and reread.destination.state == "s"
    assert reread.scopes == auth.scopes


def test_redirect_url_keeps_the_registered_query() -> None:
    assert authorize.redirect_url("https://a/cb?x=1", {"code": "c"}) == "https://a/cb?x=1&code=c"
    assert authorize.redirect_url("https://a/cb", {"code": "c d"}) == "https://a/cb?code=c+d"


def test_openid2_realm_must_cover_the_redirect_uri() -> None:
    """openid2_realm: a realm (wildcards too) that covers the redirect URI, not a public suffix."""
    uri = "https://app.shop.example.com/cb"
    shop = dataclasses.replace(client(), redirect_uris=(uri,))

    def realm_of(realm: str) -> str:
        p = params(redirect_uri=uri, openid2_realm=realm)
        return authorize.check(p, authorize.destination(p, shop)).openid2_realm

    assert realm_of("https://app.shop.example.com/") == "https://app.shop.example.com/"
    assert realm_of("https://*.shop.example.com/") == "https://*.shop.example.com/"
    for realm in (
        "https://other.example.com/",
        "https://app.shop.example.com/elsewhere/",
        "https://*.com/",
        "https://*.co.uk/",
        "not a realm",
    ):
        with pytest.raises(AuthorizeErrorAt, match="openid2_realm"):
            realm_of(realm)


def test_acr_values_are_read_and_carried_through_the_step_up() -> None:
    """acr_values keep their order (duplicates dropped); the step-up mark comes back once."""
    multi = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"
    auth = checked(acr_values=f"{multi} 0 {multi}")
    assert auth.acr_values == (multi, "0") and not auth.stepped_up
    back = parse_qs(auth.query(stepped_up=True))
    assert back["acr_values"] == [f"{multi} 0"] and back[authorize.STEP_UP_PARAMETER] == ["1"]
    carried: dict[str, str | list[str]] = {k: v[0] for k, v in back.items() if k not in params()}
    again = checked(None, **carried)
    assert again.stepped_up and again.acr_values == (multi, "0")
    assert authorize.STEP_UP_PARAMETER not in parse_qs(checked().query())


def test_overlong_or_repeated_acr_values_are_invalid_request() -> None:
    """acr_values longer than 1024 characters, or given twice: invalid_request."""
    assert refused(None, {"acr_values": "0" * 1025}).error == "invalid_request"
    assert refused(None, {"acr_values": ["0", "0"]}).error == "invalid_request"


def test_the_acr_values_are_the_second_factors_judges() -> None:
    """The values discovery lists are the ones clickpass.mfa.strength puts in a context."""
    from clickpass.mfa import strength
    from clickpass.oidc import web

    assert web.ACR_MULTI_FACTOR == strength.MULTI_FACTOR
    assert web.ACR_NONE == strength.ACR_NONE

"""
What the OpenID Connect provider refuses, through a real node on SQLite
and MariaDB: each refusal is the spec's error, leaks nothing, and the
node goes on serving. The list, one line each, is in docs/oidc.md.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from tests.integration.oidc.harness import Client, Person, Provider, pkce_pair, query_of

pytestmark = pytest.mark.integration


def signed_in_code(provider: Provider, client: Client, **params: str) -> tuple[Person, str]:
    """A person who signed in and consented, and the code the client got."""
    person = Person(provider)
    back = person.authorize(provider.authorize_url(client, **params))
    return person, query_of(back)["code"]


def exchange(provider: Provider, client: Client, code: str, **params: str) -> requests.Response:
    return provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri,
        **params,
    )  # fmt: skip


def userinfo(provider: Provider, access_token: str) -> requests.Response:
    return requests.get(
        provider.url + "oidc/userinfo",
        headers={"Authorization": "Bearer " + access_token},
        timeout=30,
    )


def error_of(response: requests.Response) -> str:
    body: dict[str, Any] = response.json()
    assert set(body) <= {"error", "error_description"}, body
    return str(body["error"])


def still_serving(provider: Provider) -> None:
    assert requests.get(provider.url + "healthz", timeout=30).status_code == 200


@pytest.fixture(scope="module")
def confidential(provider: Provider) -> Client:
    return provider.client("https://rp.example.com/cb")


@pytest.fixture(scope="module")
def public(provider: Provider) -> Client:
    return provider.client("http://127.0.0.1:9/app", public=True)


def test_unknown_client_id_gets_an_error_page_not_a_redirect(
    provider: Provider, confidential: Client
) -> None:
    """An unknown client_id: a 400 page at Clickpass, never a redirect."""
    url = provider.authorize_url(confidential, client_id="oidc_nosuchclient")
    response = Person(provider).open(url)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "does not know" in response.text


def test_mismatched_redirect_uri_gets_an_error_page_not_a_redirect(
    provider: Provider, confidential: Client
) -> None:
    """A redirect_uri that differs from the registered one by a character: an error page."""
    for uri in ("https://rp.example.com/cb/", "https://rp.example.com/cb?x=1", "https://evil/cb"):
        response = Person(provider).open(provider.authorize_url(confidential, redirect_uri=uri))
        assert response.status_code == 400, uri
        assert "location" not in response.headers
    missing = Person(provider).open(
        provider.url + "oidc/authorize?response_type=code&scope=openid&client_id="
        + confidential.client_id
    )  # fmt: skip
    assert missing.status_code == 400 and "location" not in missing.headers


def test_unsupported_response_type_goes_back_to_the_client(
    provider: Provider, confidential: Client
) -> None:
    """response_type=token (implicit): unsupported_response_type, with state and iss."""
    response = Person(provider).open(
        provider.authorize_url(confidential, response_type="token", state="s")
    )
    assert response.status_code == 302
    answer = query_of(response.headers["location"])
    assert answer["error"] == "unsupported_response_type"
    assert answer["state"] == "s" and answer["iss"] == provider.issuer


def test_scope_without_openid_is_invalid_scope(provider: Provider, confidential: Client) -> None:
    response = Person(provider).open(provider.authorize_url(confidential, scope="email"))
    assert query_of(response.headers["location"])["error"] == "invalid_scope"


def test_public_client_without_pkce_is_refused(provider: Provider, public: Client) -> None:
    """A public client must send a code_challenge: invalid_request at its redirect URI."""
    response = Person(provider).open(provider.authorize_url(public))
    assert query_of(response.headers["location"])["error"] == "invalid_request"


def test_pkce_plain_is_refused(provider: Provider, public: Client) -> None:
    """Only S256: code_challenge_method=plain is invalid_request."""
    _verifier, challenge = pkce_pair()
    response = Person(provider).open(
        provider.authorize_url(public, code_challenge=challenge, code_challenge_method="plain")
    )
    assert query_of(response.headers["location"])["error"] == "invalid_request"


def test_request_object_is_not_supported(provider: Provider, confidential: Client) -> None:
    response = Person(provider).open(provider.authorize_url(confidential, request="e30.e30."))
    assert query_of(response.headers["location"])["error"] == "request_not_supported"


def test_prompt_none_while_signed_out_is_login_required(
    provider: Provider, confidential: Client
) -> None:
    response = Person(provider).open(provider.authorize_url(confidential, prompt="none"))
    assert query_of(response.headers["location"])["error"] == "login_required"


def test_prompt_none_without_consent_is_consent_required(provider: Provider) -> None:
    """Signed in but never asked for this site: consent_required, no page."""
    first = provider.client("https://one.example.com/cb")
    second = provider.client("https://two.example.com/cb")
    person, _code = signed_in_code(provider, first)
    response = person.open(provider.authorize_url(second, prompt="none"))
    assert query_of(response.headers["location"])["error"] == "consent_required"


def test_prompt_none_with_consent_answers_at_once(provider: Provider) -> None:
    """Signed in and consented: prompt=none gets a code without a page."""
    client = provider.client("https://again.example.com/cb")
    person, _code = signed_in_code(provider, client)
    response = person.open(provider.authorize_url(client, prompt="none", state="x"))
    assert response.status_code == 302
    answer = query_of(response.headers["location"])
    assert "code" in answer and answer["state"] == "x"


def test_prompt_login_makes_the_person_sign_in_again(provider: Provider) -> None:
    """prompt=login (and max_age=0) send a signed-in person to the sign-in page."""
    client = provider.client("https://login.example.com/cb")
    person, _code = signed_in_code(provider, client)
    for params in ({"prompt": "login"}, {"max_age": "0"}):
        response = person.open(provider.authorize_url(client, **params))
        assert response.status_code == 303
        assert response.headers["location"].startswith("/signin?")
        back = person.authorize(provider.authorize_url(client, **params))
        assert "code" in query_of(back)


def test_consent_denied_is_access_denied(provider: Provider) -> None:
    client = provider.client("https://deny.example.com/cb")
    back = Person(provider).authorize(provider.authorize_url(client, state="d"), "cancel")
    answer = query_of(back)
    assert answer["error"] == "access_denied" and answer["state"] == "d"


def test_wrong_pkce_verifier_is_invalid_grant(provider: Provider, public: Client) -> None:
    """A code_verifier that does not match the challenge: invalid_grant, and the code is spent."""
    verifier, challenge = pkce_pair()
    _person, code = signed_in_code(
        provider, public, code_challenge=challenge, code_challenge_method="S256"
    )
    wrong = exchange(provider, public, code, code_verifier=pkce_pair()[0])
    assert wrong.status_code == 400 and error_of(wrong) == "invalid_grant"
    right = exchange(provider, public, code, code_verifier=verifier)
    assert error_of(right) == "invalid_grant"


def test_missing_pkce_verifier_is_invalid_grant(provider: Provider, public: Client) -> None:
    _verifier, challenge = pkce_pair()
    _person, code = signed_in_code(
        provider, public, code_challenge=challenge, code_challenge_method="S256"
    )
    assert error_of(exchange(provider, public, code)) == "invalid_grant"


def test_reused_code_is_refused_and_revokes_its_tokens(
    provider: Provider, confidential: Client
) -> None:
    """A code used twice: the second is invalid_grant, and the tokens of the first stop working."""
    _person, code = signed_in_code(provider, confidential)
    first = exchange(provider, confidential, code)
    assert first.status_code == 200, first.text
    access = first.json()["access_token"]
    assert userinfo(provider, access).status_code == 200
    second = exchange(provider, confidential, code)
    assert second.status_code == 400 and error_of(second) == "invalid_grant"
    revoked = userinfo(provider, access)
    assert revoked.status_code == 401
    assert 'error="invalid_token"' in revoked.headers["www-authenticate"]
    refreshed = provider.token(
        confidential, grant_type="refresh_token", refresh_token=first.json()["refresh_token"]
    )
    assert error_of(refreshed) == "invalid_grant"


def test_code_of_another_client_is_invalid_grant(provider: Provider, confidential: Client) -> None:
    """A code presented by a client it was not issued to: invalid_grant."""
    other = provider.client("https://rp.example.com/other", site=confidential.site)
    _person, code = signed_in_code(provider, confidential)
    response = provider.token(
        other, grant_type="authorization_code", code=code, redirect_uri=confidential.redirect_uri
    )
    assert error_of(response) == "invalid_grant"


def test_redirect_uri_of_the_token_request_must_match(
    provider: Provider, confidential: Client
) -> None:
    _person, code = signed_in_code(provider, confidential)
    response = provider.token(
        confidential, grant_type="authorization_code", code=code,
        redirect_uri="https://rp.example.com/elsewhere",
    )  # fmt: skip
    assert error_of(response) == "invalid_grant"


def test_unknown_code_is_invalid_grant(provider: Provider, confidential: Client) -> None:
    assert error_of(exchange(provider, confidential, "A" * 43)) == "invalid_grant"


def test_refresh_token_of_another_client_is_invalid_grant(
    provider: Provider, confidential: Client
) -> None:
    other = provider.client("https://rp.example.com/third", site=confidential.site)
    _person, code = signed_in_code(provider, confidential)
    tokens = exchange(provider, confidential, code).json()
    stolen = provider.token(
        other, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert error_of(stolen) == "invalid_grant"
    # The rightful client still can.
    mine = provider.token(
        confidential, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert mine.status_code == 200, mine.text


def test_reused_refresh_token_revokes_the_family(provider: Provider, confidential: Client) -> None:
    """A rotated refresh token presented again: invalid_grant, and its successors die too."""
    _person, code = signed_in_code(provider, confidential)
    first = exchange(provider, confidential, code).json()
    second = provider.token(
        confidential, grant_type="refresh_token", refresh_token=first["refresh_token"]
    ).json()
    reused = provider.token(
        confidential, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    assert error_of(reused) == "invalid_grant"
    assert userinfo(provider, second["access_token"]).status_code == 401
    successor = provider.token(
        confidential, grant_type="refresh_token", refresh_token=second["refresh_token"]
    )
    assert error_of(successor) == "invalid_grant"


def test_wrong_client_secret_is_invalid_client_401(
    provider: Provider, confidential: Client
) -> None:
    """Bad credentials, basic or post: 401 invalid_client with WWW-Authenticate."""
    bad = Client(confidential.client_id, "wrong", confidential.redirect_uri, "", False)
    for auth in ("basic", "post"):
        response = provider.token(bad, auth, grant_type="authorization_code", code="x")
        assert response.status_code == 401, auth
        assert response.headers["www-authenticate"].startswith("Basic")
        assert error_of(response) == "invalid_client"
    unknown = Client("oidc_nosuch", "x", confidential.redirect_uri, "", False)
    assert provider.token(unknown, grant_type="authorization_code", code="x").status_code == 401


def test_confidential_client_without_secret_is_invalid_client(
    provider: Provider, confidential: Client
) -> None:
    as_public = Client(confidential.client_id, "", confidential.redirect_uri, "", True)
    response = provider.token(as_public, grant_type="authorization_code", code="x")
    assert response.status_code == 401 and error_of(response) == "invalid_client"


def test_two_authentication_methods_are_invalid_request(
    provider: Provider, confidential: Client
) -> None:
    raw = f"{confidential.client_id}:{confidential.secret}".encode()
    response = requests.post(
        provider.url + "oidc/token",
        data={"grant_type": "authorization_code", "code": "x", "client_secret": "y"},
        headers={"Authorization": "Basic " + base64.b64encode(raw).decode()},
        timeout=30,
    )
    assert error_of(response) == "invalid_request"


def test_malformed_token_bodies_are_invalid_request(
    provider: Provider, confidential: Client
) -> None:
    """JSON, no body, repeated parameters, bad UTF-8, unknown grant types: refused; node serves."""
    url = provider.url + "oidc/token"
    raw = f"{confidential.client_id}:{confidential.secret}".encode()
    auth = {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    form = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    cases: list[tuple[dict[str, str], bytes, str]] = [
        ({**auth, "Content-Type": "application/json"}, b'{"grant_type": "x"}', "invalid_request"),
        (form, b"", "invalid_request"),
        (form, b"grant_type=refresh_token&grant_type=refresh_token", "invalid_request"),
        (form, b"grant_type=\xff\xfe", "invalid_request"),
        (form, b"grant_type=password&username=a&password=b", "unsupported_grant_type"),
        (form, b"grant_type=authorization_code", "invalid_request"),
        (form, b"%%%=&&==", "invalid_request"),
    ]
    for headers, body, expected in cases:
        response = requests.post(url, data=body, headers=headers, timeout=30)
        assert response.status_code == 400, (body, response.text)
        assert error_of(response) == expected, body
    still_serving(provider)


def test_oversized_parameters_are_refused(provider: Provider, confidential: Client) -> None:
    """An oversized state, nonce or body: refused with one line, nothing issued, node serves."""
    person = Person(provider)
    long_nonce = person.open(provider.authorize_url(confidential, nonce="n" * 5000))
    assert query_of(long_nonce.headers["location"])["error"] == "invalid_request"
    long_state = person.open(provider.authorize_url(confidential, state="s" * 5000))
    # The state is not echoed back when it is over the limit.
    assert query_of(long_state.headers["location"]) == {
        "error": "invalid_request",
        "error_description": "state is repeated or too long",
        "iss": provider.issuer,
    }
    huge = person.browser.session.post(
        provider.url + "oidc/authorize",
        data={"client_id": confidential.client_id, "login_hint": "h" * 20000},
        allow_redirects=False,
        timeout=30,
    )
    assert huge.status_code == 400 and "location" not in huge.headers
    big_body = provider.token(confidential, grant_type="refresh_token", refresh_token="r" * 20000)
    assert big_body.status_code == 400 and error_of(big_body) == "invalid_request"
    still_serving(provider)


def test_userinfo_needs_a_live_bearer_token(provider: Provider) -> None:
    """No token, a made-up token, a Basic header: 401 with WWW-Authenticate: Bearer."""
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"}):
        response = requests.get(provider.url + "oidc/userinfo", headers=headers, timeout=30)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_introspection_and_revocation(provider: Provider, confidential: Client) -> None:
    """
    Introspection says active for the client's own live token, inactive for
    another's; revoking the refresh token ends the grant's access token.
    """
    other = provider.client("https://rp.example.com/fourth", site=confidential.site)
    _person, code = signed_in_code(provider, confidential)
    tokens = exchange(provider, confidential, code).json()
    mine = provider.post("oidc/introspect", confidential, token=tokens["access_token"]).json()
    assert mine["active"] is True and mine["client_id"] == confidential.client_id
    theirs = provider.post("oidc/introspect", other, token=tokens["access_token"]).json()
    assert theirs == {"active": False}
    assert provider.post("oidc/revoke", other, token=tokens["refresh_token"]).status_code == 200
    assert userinfo(provider, tokens["access_token"]).status_code == 200
    revoked = provider.post("oidc/revoke", confidential, token=tokens["refresh_token"])
    assert revoked.status_code == 200
    assert userinfo(provider, tokens["access_token"]).status_code == 401
    gone = provider.post("oidc/introspect", confidential, token=tokens["access_token"]).json()
    assert gone == {"active": False}


def test_a_disabled_account_gets_no_more_tokens(provider: Provider, confidential: Client) -> None:
    """A disabled account: its refresh token is invalid_grant, its access token dead."""
    person, code = signed_in_code(provider, confidential)
    tokens = exchange(provider, confidential, code).json()
    provider.node.ctl("user", "disable", person.email)
    refreshed = provider.token(
        confidential, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert error_of(refreshed) == "invalid_grant"
    assert userinfo(provider, tokens["access_token"]).status_code == 401

"""
Dynamic client registration (RFC 7591, RFC 7592 read and delete) through
a real node (SQLite and MariaDB), with a partner site's API key as the
initial access token: a registered client signs people in; redirect URIs
outside the site's verified realm, an unverified site, a bad key and bad
metadata are refused.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
import requests

from clickpass.oidc import keys
from tests.integration.oidc.harness import Client, Person, Provider, query_of

pytestmark = pytest.mark.integration

REALM = "https://*.registered.example.com/"


def register(provider: Provider, key: str, metadata: Any) -> requests.Response:
    return requests.post(
        provider.url + "oidc/register",
        json=metadata,
        headers={"Authorization": "Bearer " + key},
        timeout=30,
    )


@pytest.fixture(scope="module")
def api_key(provider: Provider) -> str:
    return provider.verified_site_with_key(REALM)[1]


def test_a_registered_client_signs_people_in_and_is_managed(
    provider: Provider, api_key: str
) -> None:
    uri = "https://app.registered.example.com/cb"
    response = register(
        provider, api_key, {"redirect_uris": [uri], "id_token_signed_response_alg": "ES256"}
    )
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["token_endpoint_auth_method"] == "client_secret_basic"
    assert made["subject_type"] == "pairwise" and made["client_secret"]
    client = Client(made["client_id"], made["client_secret"], uri, "", False)
    code = query_of(Person(provider).authorize(provider.authorize_url(client)))["code"]
    tokens = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=uri
    ).json()
    assert keys.verify(tokens["id_token"], provider.jwks(), audience=client.client_id)
    manage = {"Authorization": "Bearer " + made["registration_access_token"]}
    read = requests.get(made["registration_client_uri"], headers=manage, timeout=30)
    assert read.status_code == 200 and read.json()["redirect_uris"] == [uri]
    assert "client_secret" not in read.json()
    wrong = requests.get(
        made["registration_client_uri"], headers={"Authorization": "Bearer " + api_key},
        timeout=30,
    )  # fmt: skip
    assert wrong.status_code == 401
    deleted = requests.delete(made["registration_client_uri"], headers=manage, timeout=30)
    assert deleted.status_code == 204
    assert provider.token(client, grant_type="refresh_token", refresh_token="x").status_code == 401


def test_public_client_registration(provider: Provider, api_key: str) -> None:
    response = register(
        provider, api_key, {"redirect_uris": ["https://spa.registered.example.com/"],
                            "token_endpoint_auth_method": "none"},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    assert "client_secret" not in response.json()


def test_backchannel_logout_metadata_is_kept(provider: Provider, api_key: str) -> None:
    """A registered back-channel logout URI is stored and read back (RFC 7592)."""
    uri = "https://bc.registered.example.com/backchannel?from=clickpass"
    response = register(
        provider, api_key, {"redirect_uris": ["https://bc.registered.example.com/cb"],
                            "backchannel_logout_uri": uri,
                            "backchannel_logout_session_required": True},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["backchannel_logout_uri"] == uri
    assert made["backchannel_logout_session_required"] is True
    manage = {"Authorization": "Bearer " + made["registration_access_token"]}
    read = requests.get(made["registration_client_uri"], headers=manage, timeout=30).json()
    assert read["backchannel_logout_uri"] == uri


def test_a_registered_client_is_updated_with_put(provider: Provider, api_key: str) -> None:
    """
    RFC 7592 update: new redirect URIs on the same host and another ID token
    algorithm are taken and used; another host, another client_id or a
    wrong secret are refused; the client is unchanged by a refusal.
    """
    uri = "https://put.registered.example.com/cb"
    made = register(provider, api_key, {"redirect_uris": [uri]}).json()
    manage = {"Authorization": "Bearer " + made["registration_access_token"]}
    later = "https://put.registered.example.com/callback"
    changed = {
        "client_id": made["client_id"],
        "redirect_uris": [later],
        "id_token_signed_response_alg": "ES256",
        "client_secret": made["client_secret"],
    }
    for bad in (
        {**changed, "redirect_uris": ["https://other.registered.example.com/cb"]},
        {**changed, "client_id": "oidc_someone_else"},
        {**changed, "client_secret": "not the secret"},
        {**changed, "token_endpoint_auth_method": "none"},
    ):
        refused = requests.put(
            made["registration_client_uri"], json=bad, headers=manage, timeout=30
        )
        assert refused.status_code == 400, refused.text
    assert requests.get(made["registration_client_uri"], headers=manage, timeout=30).json()[
        "redirect_uris"
    ] == [uri]
    answer = requests.put(made["registration_client_uri"], json=changed, headers=manage, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["redirect_uris"] == [later]
    assert answer.json()["id_token_signed_response_alg"] == "ES256"
    assert "client_secret" not in answer.json()
    client = Client(made["client_id"], made["client_secret"], later, "", False)
    code = query_of(Person(provider).authorize(provider.authorize_url(client)))["code"]
    tokens = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=later
    ).json()
    assert keys.verify(tokens["id_token"], provider.jwks(), audience=client.client_id)
    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "ES256"
    wrong = requests.put(
        made["registration_client_uri"],
        json=changed,
        headers={"Authorization": "Bearer " + api_key},
        timeout=30,
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"redirect_uris": ["https://elsewhere.example.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://app.registered.example.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://app.registered.example.com/"}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://app.registered.example.com/"],
          "token_endpoint_auth_method": "client_secret_jwt"}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://app.registered.example.com/"],
          "response_types": ["token"]}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://app.registered.example.com/"],
          "id_token_signed_response_alg": "none"}, "invalid_client_metadata"),
        (["not", "an", "object"], "invalid_client_metadata"),
        ({"redirect_uris": ["https://app.registered.example.com/"],
          "backchannel_logout_uri": "http://app.registered.example.com/bc"},
         "invalid_client_metadata"),
        ({"redirect_uris": ["https://app.registered.example.com/"],
          "backchannel_logout_uri": "https://app.registered.example.com/bc",
          "backchannel_logout_session_required": "yes"}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://app.registered.example.com/"],
          "backchannel_logout_session_required": True}, "invalid_client_metadata"),
    ],
)  # fmt: skip
def test_bad_metadata_is_refused(
    provider: Provider, api_key: str, metadata: Any, error: str
) -> None:
    response = register(provider, api_key, metadata)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error


def test_bad_keys_and_unverified_sites_are_refused(provider: Provider) -> None:
    metadata = {"redirect_uris": ["https://app.registered.example.com/cb"]}
    assert register(provider, "cpk_nosuchkey", metadata).status_code == 401
    no_auth = requests.post(provider.url + "oidc/register", json=metadata, timeout=30)
    assert no_auth.status_code == 401
    site = provider.site("https://unverified.example.com/")
    admin = provider.admin()

    def key_of(tx: Any) -> str:
        from clickpass.partners import sites

        return sites.create_key(tx, site.id, admin, "x", 0)

    unverified_key = provider.run(key_of)
    response = register(
        provider, unverified_key, {"redirect_uris": ["https://unverified.example.com/cb"]}
    )
    assert response.status_code == 403


def consent_page(person: Person, url: str) -> requests.Response:
    """Open an authorization URL and sign in, up to the consent page."""
    response = person.open(url)
    for _ in range(5):
        location = response.headers.get("location", "")
        if response.status_code in (302, 303) and location.startswith("/signin?"):
            response = person.sign_in_from(response)
        elif response.status_code == 303 and location.startswith("/oidc/"):
            response = person.open(person.provider.url + location[1:])
        else:
            break
    assert response.status_code == 200 and 'action="/oidc/decide"' in response.text
    return response


def test_the_client_name_is_kept_read_back_updated_and_shown(
    provider: Provider, api_key: str
) -> None:
    """
    client_name is returned on registration and RFC 7592 reads, replaced by
    an update, shown on the consent page and by clickpass-ctl.
    """
    uri = "https://named.registered.example.com/cb"
    made = register(provider, api_key, {"redirect_uris": [uri], "client_name": " Named App "})
    assert made.status_code == 201, made.text
    assert made.json()["client_name"] == "Named App"
    manage = {"Authorization": "Bearer " + made.json()["registration_access_token"]}
    read = requests.get(made.json()["registration_client_uri"], headers=manage, timeout=30)
    assert read.json()["client_name"] == "Named App"
    client = Client(made.json()["client_id"], made.json()["client_secret"], uri, "", False)
    page = consent_page(Person(provider), provider.authorize_url(client))
    assert 'id="client-name"' in page.text and "<strong>Named App</strong>" in page.text
    updated = requests.put(
        made.json()["registration_client_uri"],
        json={"client_id": client.client_id, "redirect_uris": [uri], "client_name": "Renamed"},
        headers=manage,
        timeout=30,
    )
    assert updated.status_code == 200 and updated.json()["client_name"] == "Renamed", updated.text
    shown = json.loads(
        provider.node.ctl("--json", "oidc", "clients", "show", client.client_id).stdout
    )
    assert shown["client_name"] == "Renamed"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        (42, "client_name must be a string"),
        (["Named"], "client_name must be a string"),
        ("x" * 101, "client_name is longer than 100 characters"),
        ("two\nlines", "client_name must be one line of printable characters"),
    ],
)
def test_a_bad_client_name_is_refused_in_one_line(
    provider: Provider, api_key: str, name: Any, says: str
) -> None:
    """A client_name that is not a short one-line string: 400 invalid_client_metadata."""
    metadata = {"redirect_uris": ["https://named.registered.example.com/cb"], "client_name": name}
    response = register(provider, api_key, metadata)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_client_metadata", "error_description": says}

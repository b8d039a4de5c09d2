"""
Deleting a partner site in the console takes its OpenID Connect clients
with it: the clients, their grants, codes, tokens and signed-in sessions
go in the same transaction, and the approvals that the site's clients and
links made go too, while a person's own OpenID 2.0 approval of the realm
and another site's clients stay. On a real node, on SQLite and MariaDB.
"""

from __future__ import annotations

import secrets
import time

import pytest
import requests

from clickpass.openid import approvals
from clickpass.partners import sites
from clickpass.storage.sql import Transaction
from tests.integration.oidc.harness import PASSWORD, Client, Person, Provider, query_of
from tests.support.browser import Browser, csrf_token

pytestmark = pytest.mark.integration

CLIENT_TABLES = ("oidc_clients", "oidc_grants", "oidc_session_clients")
GRANT_TABLES = ("oidc_codes", "oidc_tokens")


def admin_with_site(provider: Provider, realm: str) -> tuple[Browser, sites.Site]:
    """A person signed in to the console, admin of a new verified site for C{realm}."""
    email = f"admin-{secrets.token_hex(4)}@example.com"
    browser = Browser(provider.url)
    assert browser.sign_up(email, PASSWORD).ok
    settings = sites.SiteSettings(
        name="Doomed", logo_url="", realm=realm, return_to_urls=(realm,), registration_url="",
        connect_url="", requested_fields=(), required_fields=(), webhook_url="",
    )  # fmt: skip

    def create(tx: Transaction) -> sites.Site:
        now = int(time.time())
        admin = int(tx.scalar("SELECT id FROM accounts WHERE email = ?", email))
        site = sites.create_site(tx, settings, admin, now)
        tx.execute("UPDATE partner_verifications SET verified = ? WHERE site_id = ?", now, site.id)
        return site

    site: sites.Site = provider.run(create)
    return browser, site


def signed_in_with_tokens(provider: Provider, person: Person, client: Client) -> dict[str, str]:
    """The person consents to C{client}; the client trades the code for tokens."""
    back = person.authorize(provider.authorize_url(client, scope="openid email"))
    answer = provider.token(
        client, grant_type="authorization_code", code=query_of(back)["code"],
        redirect_uri=client.redirect_uri,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    tokens: dict[str, str] = answer.json()
    return tokens


def rows_of(provider: Provider, client_id: str) -> dict[str, int]:
    """How many rows each OpenID Connect table holds for C{client_id}."""

    def count(tx: Transaction) -> dict[str, int]:
        found = {
            table: int(tx.scalar(f"SELECT COUNT(*) FROM {table} WHERE client_id = ?", client_id))
            for table in CLIENT_TABLES
        }
        for table in GRANT_TABLES:
            found[table] = int(
                tx.scalar(
                    f"SELECT COUNT(*) FROM {table} WHERE grant_id IN "
                    "(SELECT grant_id FROM oidc_grants WHERE client_id = ?)",
                    client_id,
                )
            )
        return found

    counted: dict[str, int] = provider.run(count)
    return counted


def account_id(provider: Provider, email: str) -> int:
    return int(provider.run(lambda tx: tx.scalar("SELECT id FROM accounts WHERE email = ?", email)))


def approved_realms(provider: Provider, email: str) -> set[str]:
    found = provider.run(approvals.remembered, account_id(provider, email))
    return {a.realm for a in found}


def test_deleting_a_site_removes_its_clients_grants_tokens_and_their_approvals(
    provider: Provider,
) -> None:
    """
    After the admin deletes the site: none of its client's rows are left,
    its refresh and access tokens are refused, the consenting person's
    approval of the realm is gone, a bystander's OpenID 2.0 approval of the
    same realm stays, and another site's client still works.
    """
    realm = "https://doomed.example.org/"
    admin, site = admin_with_site(provider, realm)
    client = provider.client(
        "https://doomed.example.org/cb", site=site.public_id,
        backchannel_logout_uri="https://doomed.example.org/logout",
    )  # fmt: skip
    kept_client = provider.client("https://kept.example.org/cb")
    person = Person(provider)
    tokens = signed_in_with_tokens(provider, person, client)
    kept_tokens = signed_in_with_tokens(provider, person, kept_client)
    # Someone who approved the realm on the OpenID 2.0 consent page while it
    # was a plain relying party (before the site was registered).
    bystander = Person(provider)
    assert bystander.browser.sign_up(bystander.email, PASSWORD).ok
    provider.run(
        approvals.remember,
        account_id(provider, bystander.email),
        realm,
        frozenset({"email"}),
        int(time.time()),
    )

    before = rows_of(provider, client.client_id)
    assert all(before[table] >= 1 for table in (*CLIENT_TABLES, *GRANT_TABLES)), before
    assert realm in approved_realms(provider, person.email)
    kept_before = rows_of(provider, kept_client.client_id)

    page = admin.get(f"/partners/{site.public_id}/delete")
    assert page.status_code == 200
    assert "its OpenID Connect clients are removed" in page.text
    deleted = admin.post(
        f"/partners/{site.public_id}/delete",
        {"csrf_token": csrf_token(page.text), "confirm": "doomed.example.org"},
    )
    assert "The site Doomed (doomed.example.org) was deleted." in deleted.text

    assert rows_of(provider, client.client_id) == dict.fromkeys((*CLIENT_TABLES, *GRANT_TABLES), 0)
    refreshed = provider.token(
        client, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert refreshed.status_code in (400, 401), refreshed.text
    info = requests.get(
        provider.url + "oidc/userinfo",
        headers={"Authorization": "Bearer " + tokens["access_token"]},
        timeout=30,
    )
    assert info.status_code == 401, info.text
    assert realm not in approved_realms(provider, person.email)
    assert "https://kept.example.org/" in approved_realms(provider, person.email)
    assert approved_realms(provider, bystander.email) == {realm}

    # The other site's client is untouched, and its tokens still work.
    assert rows_of(provider, kept_client.client_id) == kept_before
    kept_info = requests.get(
        provider.url + "oidc/userinfo",
        headers={"Authorization": "Bearer " + kept_tokens["access_token"]},
        timeout=30,
    )
    assert kept_info.status_code == 200, kept_info.text

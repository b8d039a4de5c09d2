"""
The partner console lists a site's OpenID Connect clients, each with the
name it registered (RFC 7591 client_name) and how its back-channel
logouts fared: delivered, waiting, given up, and the last error. Read
only; another site's clients are not listed. On a real node, on SQLite
and MariaDB.
"""

from __future__ import annotations

import html
import re
import time

import pytest
import requests

from clickpass.oidc import backchannel
from clickpass.partners import sites
from clickpass.storage.sql import Transaction
from tests.integration.oidc.harness import Provider
from tests.integration.oidc.test_site_deletion import admin_with_site

pytestmark = pytest.mark.integration

REALM = "https://console-clients.example.com/"


def row_of(page: str, client_id: str) -> list[str]:
    """The cells of C{client_id}'s row in the console's clients table."""
    found = re.search(rf'<tr id="oidc-client-{client_id}">(.*?)</tr>', page, re.S)
    assert found is not None, page
    return [
        html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in found.group(1).split("</td>")
    ][:-1]


def test_the_console_shows_clients_and_their_back_channel_logouts(provider: Provider) -> None:
    """
    A registered client with a back-channel logout URI: its name and its
    logouts counted by state with the newest error; a client without a
    logout URI says so; another site's client is not on the page.
    """
    browser, site = admin_with_site(provider, REALM)

    def key(tx: Transaction) -> str:
        admin = tx.scalar("SELECT account_id FROM partner_admins WHERE site_id = ?", site.id)
        return sites.create_key(tx, site.id, int(admin), "console test", 0)

    api_key = provider.run(key)
    made = requests.post(
        provider.url + "oidc/register",
        json={
            "redirect_uris": [REALM + "cb"],
            "client_name": "Console <App>",
            "backchannel_logout_uri": REALM + "bc",
        },
        headers={"Authorization": "Bearer " + api_key},
        timeout=30,
    )
    assert made.status_code == 201, made.text
    with_logouts = made.json()["client_id"]
    plain = provider.client(REALM + "plain", site=site.public_id)
    other = provider.client("https://another-console-site.example.com/cb")
    now = int(time.time())

    def logouts(tx: Transaction) -> None:
        for state, error in (
            (backchannel.DELIVERED, ""),
            (backchannel.DELIVERED, ""),
            (backchannel.PENDING, "connection refused"),
            (backchannel.GIVEN_UP, "HTTP 500"),
        ):
            tx.execute(
                "INSERT INTO oidc_logouts (client_id, sid, subject, created, state, last_error) "
                "VALUES (?, 's', 'x', ?, ?, ?)",
                with_logouts, now, state, error,
            )  # fmt: skip

    provider.run(logouts)
    page = browser.get(f"/partners/{site.public_id}")
    assert page.status_code == 200
    assert row_of(page.text, with_logouts) == [
        with_logouts, "Console <App>", "2", "1", "1", "HTTP 500",
    ]  # fmt: skip
    assert row_of(page.text, plain.client_id) == [
        plain.client_id, "", "No back-channel logout URI",
    ]  # fmt: skip
    assert other.client_id not in page.text

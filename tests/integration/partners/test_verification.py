"""
Realm ownership on a real node: a site registered for a host gets no API
key, no partner flow and no linked people until its admins publish the
console's token at /.well-known/clickpass-verification.txt on that host;
until then people signing in to it see a warning (naming its host, not the
name it was registered with) and plain OpenID consent.
"""

from __future__ import annotations

import re
import secrets
from html import unescape

import pytest
import requests
from openid.consumer import consumer

from tests.integration.openid.harness import Person, PythonRP
from tests.integration.partners.conftest import (
    PASSWORD,
    VERIFICATION_TOKEN,
    TokenServer,
    register_site,
)
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _csrf(page: requests.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text[:2000]
    return unescape(found.group(1))


def test_unverified_site_until_token_is_published(
    node: NodeProcess, token_server: TokenServer
) -> None:
    """
    An unverified site: no API key (400, one sentence); Verify without the
    token published fails with the reason; a person signing in to its realm
    sees the warning and ordinary consent, and is not linked to the site.
    Once the token is published, Verify succeeds, a key works with the API,
    and people are sent through the partner flow.
    """
    site = register_site(node, token_server.realm, name="Claimed Shop")
    assert site.api_key == ""
    admin = site.admin
    page = admin.get(f"/partners/{site.public_id}")
    assert "Not verified yet" in page.text
    token = VERIFICATION_TOKEN.search(page.text)
    assert token is not None
    assert token_server.realm + ".well-known/clickpass-verification.txt" in page.text

    # Each refusal is said on the page the form redirects to (POST, redirect, GET).
    refused = admin.post(f"/partners/{site.public_id}/keys", {"csrf_token": _csrf(page)})
    assert [r.status_code for r in refused.history] == [303]
    assert "Verify that you control 127.0.0.3" in refused.text
    assert 'id="new-key"' not in refused.text

    failed = admin.post(f"/partners/{site.public_id}/verify", {"csrf_token": _csrf(page)})
    assert [r.status_code for r in failed.history] == [303]
    assert failed.text.count("could not verify 127.0.0.3: ") == 1
    assert failed.text.count("answered with status 404") == 1
    token_server.token = "clickpass-verify-" + "0" * 32
    failed = admin.post(f"/partners/{site.public_id}/verify", {"csrf_token": _csrf(page)})
    assert [r.status_code for r in failed.history] == [303]
    assert "does not contain this site" in failed.text

    # A person arriving from the unverified site: a warning and plain consent.
    rp = PythonRP(node.url, token_server.realm, token_server.realm + "return")
    person = Person(node.url, f"v{secrets.token_hex(4)}@example.com", PASSWORD)
    consent = person.sign_up_and_continue(rp.begin())
    assert consent.status_code == 200, consent.text[:2000]
    assert 'id="unverified-partner"' in consent.text
    # Named by its host: the name was typed by whoever registered it.
    assert "<strong>127.0.0.3</strong>" in consent.text
    assert "Claimed Shop" not in consent.text
    assert "/partner/register" not in consent.text
    answer = person.decide(consent)
    assert answer.status_code == 302, answer.text[:2000]
    assert rp.complete(answer.headers["location"]).status == consumer.SUCCESS
    sites_page = person.browser.get("/account/sites")
    assert "Claimed Shop" not in sites_page.text

    # The owner publishes the token: verified, keys and the API work.
    token_server.token = token.group(1)
    verified = admin.post(f"/partners/{site.public_id}/verify", {"csrf_token": _csrf(page)})
    assert verified.status_code == 200, verified.text[:2000]
    assert "Verified: you control 127.0.0.3" in verified.text
    keyed = admin.post(f"/partners/{site.public_id}/keys", {"csrf_token": _csrf(verified)})
    key = re.search(r'id="new-key">([^<]+)<', keyed.text)
    assert key is not None, keyed.text[:2000]
    answer = requests.get(
        node.url + "api/v1/site",
        headers={"Authorization": f"Bearer {key.group(1)}"},
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["verified"] is True

    # The next new person from that site gets the partner's own choice.
    newcomer = Person(node.url, f"w{secrets.token_hex(4)}@example.com", PASSWORD)
    choice = newcomer.sign_up_and_continue(rp.begin())
    assert choice.status_code == 200, choice.text[:2000]
    assert 'id="unverified-partner"' not in choice.text
    assert "/partner/register" in choice.text

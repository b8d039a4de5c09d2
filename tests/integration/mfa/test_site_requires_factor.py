"""
A partner site that requires a second factor, through a real node on
SQLite and MariaDB: its admin sets it with the partner API (and sees it
in the console); a person with no second factor signing in to the site is
sent to set one up first; a person whose session had no second factor
(a trusted browser) is asked for it, and once given, goes on to the
site's own flow; checkid_immediate that would need it is answered
setup_needed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from openid.consumer import consumer

from tests.integration.mfa.person import MfaPerson
from tests.integration.mfa.relying_party import BrowserRelyingParty
from tests.integration.mfa.test_pape import enrol_and_trust
from tests.integration.openid.harness import PythonRP
from tests.integration.partners.conftest import RegisteredSite, register_site
from tests.support.browser import csrf_token
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def partner(node: NodeProcess) -> Iterator[tuple[BrowserRelyingParty, RegisteredSite]]:
    """A verified partner site (its realm proven, an API key made) on loopback."""
    rp = BrowserRelyingParty()
    try:
        yield rp, register_site(node, rp.realm, publish=rp.publish, required=())
    finally:
        rp.stop()


def set_required(node: NodeProcess, site: RegisteredSite, value: object) -> requests.Response:
    return requests.patch(
        node.url + "api/v1/site",
        json={"require_second_factor": value},
        headers={"Authorization": f"Bearer {site.api_key}"},
        timeout=30,
    )


def test_required_by_the_api_and_shown_in_the_console(
    node: NodeProcess, partner: tuple[BrowserRelyingParty, RegisteredSite]
) -> None:
    """
    PATCH /site sets it (and only true or false: anything else is a 422
    naming it, nothing changed); GET /site and the console show it.
    """
    _, site = partner
    refused = set_required(node, site, "yes")
    assert refused.status_code == 422, refused.text
    assert "require_second_factor must be true or false" in refused.text
    assert (
        requests.get(
            node.url + "api/v1/site",
            headers={"Authorization": f"Bearer {site.api_key}"},
            timeout=30,
        ).json()["require_second_factor"]
        is False
    )
    answer = set_required(node, site, True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["require_second_factor"] is True
    page = site.admin.get(f"/partners/{site.public_id}")
    assert 'name="required" value="yes" checked' in page.text


def test_a_person_without_a_second_factor_sets_one_up_first(
    node: NodeProcess, partner: tuple[BrowserRelyingParty, RegisteredSite]
) -> None:
    """Signed in with a password alone and no factor: sent to set one up, then back."""
    rp_site, site = partner
    assert set_required(node, site, True).status_code == 200
    person = MfaPerson(node.url, f"s{secrets.token_hex(4)}@example.com")
    person.sign_up()
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to)
    asked = person.browser.session.get(rp.begin(email=False), allow_redirects=False)
    assert asked.status_code == 303, asked.text[:2000]
    location = asked.headers["location"]
    assert location.startswith("/account/mfa?next=%2Fopenid%3F"), location
    page = person.get(location)
    assert 'id="second-factor-required"' in page.text


def test_a_session_without_its_factor_gives_it_then_goes_on(
    node: NodeProcess, partner: tuple[BrowserRelyingParty, RegisteredSite]
) -> None:
    """
    A person with an app, signed in through a trusted browser (no code in
    this session): immediate is setup_needed; otherwise they confirm with
    a code and come back to the site's own flow (its register or connect
    page); with the setting off, no code is asked.
    """
    rp_site, site = partner
    assert set_required(node, site, True).status_code == 200
    person = MfaPerson(node.url, f"t{secrets.token_hex(4)}@example.com")
    enrol_and_trust(person)
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to)
    immediate = person.browser.session.get(
        rp.begin(immediate=True, email=False), allow_redirects=False
    )
    assert immediate.status_code == 302, immediate.text[:2000]
    assert rp.complete(immediate.headers["location"]).status == consumer.SETUP_NEEDED

    asked = person.browser.session.get(rp.begin(email=False), allow_redirects=False)
    assert asked.status_code == 303, asked.text[:2000]
    location = asked.headers["location"]
    assert location.startswith("/account/confirm?next=%2Fopenid%3F"), location
    back = dict(parse_qsl(urlsplit(location).query))["next"]
    page = person.get(location)
    confirmed = person.browser.post(
        "/account/confirm",
        {"code": person.app_code(), "next": back, "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert confirmed.status_code == 303 and confirmed.headers["location"] == back
    onward = person.get(back)
    assert onward.status_code == 200, onward.text[:2000]
    assert 'action="/partner/register"' in onward.text

    # Off again: the same kind of session goes straight to the site's flow.
    assert set_required(node, site, False).status_code == 200
    person.sign_out()
    assert person.sign_in_password("/account").headers["location"] == "/account"
    plain = person.browser.session.get(rp.begin(email=False), allow_redirects=False)
    assert plain.status_code == 200 and 'action="/partner/register"' in plain.text

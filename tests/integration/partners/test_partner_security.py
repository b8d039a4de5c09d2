"""
What a malicious partner, or an outsider with a partner's link, must not
be able to do, on a real node over HTTP: borrow a registered return_to by
its prefix, put words of its own on Clickpass's consent page for a host it
has not proven, make someone an admin without their consent (or learn
whether an email has an account), or store values the partner API does not
promise to accept.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from html import unescape
from urllib.parse import urlencode

import pytest
import requests

from tests.integration.openid.harness import Person, PythonRP
from tests.integration.partners.conftest import PASSWORD, Partner, TokenServer, register_site
from tests.support.browser import Browser, csrf_token
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

OPENID2 = "http://specs.openid.net/auth/2.0"
SELECT = OPENID2 + "/identifier_select"
INVITATION_URL = re.compile(r'id="invitation-url">([^<]+)<')
INVITATION_SECTION = re.compile(r'<section[^>]*id="invitation">.*?</section>', re.DOTALL)


def checkid_setup(realm: str, return_to: str) -> str:
    """The path of a directed-identity checkid_setup request, as a relying party sends it."""
    return "/openid?" + urlencode(
        {
            "openid.ns": OPENID2,
            "openid.mode": "checkid_setup",
            "openid.identity": SELECT,
            "openid.claimed_id": SELECT,
            "openid.realm": realm,
            "openid.return_to": return_to,
        }
    )


def signed_up(node: NodeProcess, email: str = "") -> Browser:
    browser = Browser(node.url)
    response = browser.sign_up(email or f"s{secrets.token_hex(4)}@example.com", PASSWORD)
    assert response.ok, response.text[:2000]
    return browser


@pytest.fixture
def exact_server() -> Iterator[TokenServer]:
    """A partner host of its own (127.0.0.4) that proves it owns its realm."""
    server = TokenServer("127.0.0.4")
    try:
        yield server
    finally:
        server.stop()


def test_return_to_must_match_a_registered_url_exactly(
    node: NodeProcess, exact_server: TokenServer
) -> None:
    """
    A verified partner's registered return_to URLs match exactly: same
    scheme, host, port and path, and the same query, except that a URL
    registered with ?* allows any query on its path. A longer path, an
    unregistered query or another path is refused with the one-line page,
    and nobody is sent there.
    """
    realm = exact_server.realm
    register_site(
        node,
        realm,
        name="Exact Shop",
        publish=exact_server.publish,
        return_tos=("return", "any?*", "fixed?a=1"),
    )
    person = signed_up(node)
    refused = [
        "return/anything",
        "return?x=1",
        "returnx",
        "return/",
        "any/more",
        "anyx?x=1",
        "fixed",
        "fixed?a=1&b=2",
        "fixed?a=2",
    ]
    for path in refused:
        page = person.get(checkid_setup(realm, realm + path), allow_redirects=False)
        assert page.status_code == 400, (path, page.status_code, page.text[:1500])
        assert "not one of the addresses it registered" in page.text, path
        assert "location" not in page.headers
    for path in ("return", "any", "any?x=1&janrain_nonce=2", "fixed?a=1"):
        page = person.get(checkid_setup(realm, realm + path), allow_redirects=False)
        assert page.status_code == 200, (path, page.status_code, page.text[:1500])
        assert "Continue to Exact Shop" in page.text, path


def test_unverified_site_is_shown_by_its_host(node: NodeProcess, token_server: TokenServer) -> None:
    """
    A site registered for a host but not verified is named on Clickpass's
    consent page by that host only: the name its registrant typed (which
    could impersonate anyone) appears on no page the person sees.
    """
    impostor = "Your Bank Security Team"
    register_site(node, token_server.realm, name=impostor)
    rp = PythonRP(node.url, token_server.realm, token_server.realm + "return")
    person = Person(node.url, f"u{secrets.token_hex(4)}@example.com", PASSWORD)
    signin = person.open(rp.begin())
    assert signin.status_code == 303
    signin_page = person.browser.get(signin.headers["location"])
    assert impostor not in signin_page.text
    consent = person.sign_up_and_continue(rp.begin())
    assert consent.status_code == 200, consent.text[:2000]
    assert 'id="unverified-partner"' in consent.text
    assert impostor not in consent.text
    assert "<strong>127.0.0.3</strong>" in consent.text
    answer = person.decide(consent)
    assert answer.status_code == 302, answer.text[:2000]
    assert impostor not in person.browser.get("/account").text


def test_admins_are_invited_and_accept_and_can_be_removed(node: NodeProcess) -> None:
    """
    Inviting an admin answers the same whether or not the email has an
    account, and shows a link for the inviting admin to pass on. Only the
    signed-in person whose account has the invited email can accept it,
    once; nobody becomes an admin before accepting. An admin can remove
    another, but never the last one; a withdrawn invitation stops working.
    """
    realm = f"http://invite-{secrets.token_hex(4)}.example/"
    first = signed_up(node)
    site = register_site(node, realm, name="Team Site", admin=first)
    site_page = f"/partners/{site.public_id}"

    invitee_email = f"i{secrets.token_hex(4)}@example.com"
    invitee = signed_up(node, invitee_email)
    stranger = signed_up(node)
    nobody_email = f"n{secrets.token_hex(4)}@example.com"

    def invite(email: str) -> requests.Response:
        page = first.get(site_page)
        return first.post(
            site_page + "/admins", {"email": email, "csrf_token": csrf_token(page.text)}
        )

    def section(response: requests.Response, email: str) -> str:
        found = INVITATION_SECTION.search(response.text)
        assert found is not None, response.text[:3000]
        url = INVITATION_URL.search(found.group(0))
        assert url is not None
        return found.group(0).replace(email, "EMAIL").replace(url.group(1), "URL")

    with_account = invite(invitee_email)
    without_account = invite(nobody_email)
    # No enumeration: both answers are the same page, but for the email and the link.
    assert with_account.status_code == without_account.status_code == 200
    assert section(with_account, invitee_email) == section(without_account, nobody_email)
    assert "no Clickpass account" not in without_account.text
    link = INVITATION_URL.search(with_account.text)
    assert link is not None
    invitation = unescape(link.group(1))
    assert invitation.startswith(node.url + "partners/invitations/cpi_")

    # Invited is not admitted: the site is not the invitee's until they accept.
    assert invitee.get(site_page).status_code == 404
    # Someone else holding the link cannot use it, and it still works afterwards.
    other = stranger.get(invitation)
    assert other.status_code == 403
    assert "for another email address" in other.text
    assert stranger.get(site_page).status_code == 404
    # Signed out: sign in first, and come back to the invitation.
    away = requests.get(invitation, allow_redirects=False, timeout=30)
    assert away.status_code == 303 and away.headers["location"].startswith("/signin?next=")

    offer = invitee.get(invitation)
    assert offer.status_code == 200, offer.text[:2000]
    assert "Become an admin of" in offer.text and 'id="accept-invitation"' in offer.text
    accepted = invitee.post(
        invitation, {"csrf_token": csrf_token(offer.text)}, allow_redirects=False
    )
    assert accepted.status_code == 303, accepted.text[:2000]
    assert accepted.headers["location"] == site_page
    assert invitee.get(site_page).status_code == 200
    again = invitee.post(invitation, {"csrf_token": csrf_token(offer.text)})
    assert again.status_code == 404 and "cannot be used" in again.text

    # A withdrawn invitation's link stops working.
    page = first.get(site_page)
    pending = re.search(r"/partners/site_[0-9a-f]+/invitations/(\d+)/withdraw", page.text)
    assert pending is not None and nobody_email in page.text
    nobody = signed_up(node, nobody_email)
    withdrawn_link = INVITATION_URL.search(without_account.text)
    assert withdrawn_link is not None
    first.post(pending.group(0), {"csrf_token": csrf_token(page.text)})
    assert nobody.get(unescape(withdrawn_link.group(1))).status_code == 404

    # Removal: the first admin removes the invitee; the last admin stays.
    admin_ids = dict(
        (email, int(account_id))
        for account_id, email in re.findall(r'<li id="admin-(\d+)">([^\s<]+)', page.text)
    )
    assert set(admin_ids) >= {invitee_email}, page.text[:3000]
    removed = first.post(
        f"{site_page}/admins/{admin_ids[invitee_email]}/remove",
        {"csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert removed.status_code == 303
    assert invitee.get(site_page).status_code == 404
    page = first.get(site_page)
    (me,) = re.findall(r'<li id="admin-(\d+)">', page.text)
    last = first.post(f"{site_page}/admins/{me}/remove", {"csrf_token": csrf_token(page.text)})
    assert [r.status_code for r in last.history] == [303]
    assert "at least one admin" in last.text
    assert f'id="admin-{me}"' in last.text
    assert first.get(site_page).status_code == 200


def test_partner_api_refuses_values_its_schema_does_not_allow(
    node: NodeProcess, partner: Partner
) -> None:
    """
    PATCH /site takes each setting only in the JSON type the OpenAPI
    document gives (a string, or an array of strings): anything else is a
    422 naming the setting, in one line. Non-finite numbers are refused
    as not JSON, control characters and IPv6-literal webhook URLs as
    unusable; nothing is stored, and the site is unchanged.
    """
    api = node.url + "api/v1/site"
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    before = requests.get(api, headers=auth, timeout=10).json()

    def patch(body: str) -> requests.Response:
        return requests.patch(
            api,
            headers={**auth, "Content-Type": "application/json"},
            data=body.encode("utf-8"),
            timeout=10,
        )

    cases = [
        ('{"name": ["a"]}', 422, "name must be a string, not an array"),
        ('{"name": {"a": 1}}', 422, "name must be a string, not an object"),
        ('{"name": 5}', 422, "name must be a string, not a number"),
        ('{"name": null}', 422, "name must be a string, not null"),
        ('{"return_to_urls": "http://x/"}', 422, "return_to_urls must be an array of strings"),
        ('{"requested_fields": [1]}', 422, "requested_fields must be an array of strings"),
        ('{"name": 1e999}', 400, "not valid JSON"),
        ('{"name": NaN}', 400, "not valid JSON"),
        ('{"name": -Infinity}', 400, "not valid JSON"),
        ('{"name": "a\\u0000b"}', 422, "name must not contain control characters"),
        ('{"name": "a\\u202eb"}', 422, "name must not contain control characters"),
        ('{"name": "\\ud800"}', 422, "name must not contain control characters"),
        ('{"verified": false}', 422, "Unknown or read-only setting verified"),
        (
            json.dumps({"webhook_url": "http://[::1]:8080/hook"}),
            422,
            "cannot use an IPv6 address literal",
        ),
        (
            json.dumps({"webhook_url": "https://[2001:db8::1]/hook"}),
            422,
            "cannot use an IPv6 address literal",
        ),
    ]
    for body, status, message in cases:
        answer = patch(body)
        assert answer.status_code == status, (body, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert message in error["message"], (body, error)
        assert "\n" not in error["message"]
    assert requests.get(api, headers=auth, timeout=10).json() == before


# A value of another JSON type for each setting PATCH /site takes, as
# SiteChanges in docs/partner-api.openapi.yaml gives them.
WRONG_TYPES = {
    "name": (5, "a number"),
    "logo_url": (True, "a boolean"),
    "realm": (["https://x.example/"], "an array"),
    "registration_url": ({"url": "https://x.example/"}, "an object"),
    "connect_url": (None, "null"),
    "webhook_url": (1.5, "a number"),
}
WRONG_ARRAYS = {
    "return_to_urls": "https://x.example/return",
    "requested_fields": "email",
    "required_fields": ["email", 7],
}


def test_every_writable_endpoint_refuses_wrong_types(node: NodeProcess, partner: Partner) -> None:
    """
    Every setting PATCH /site takes, given another JSON type, is a 422
    naming that setting in one line, and changes nothing; the endpoints
    that change something through their path (DELETE an identifier, POST
    a deletion request complete) answer an id that is not one of the site's
    with a JSON 404; the query parameters that are not text (limit,
    include_completed) are a 400 naming them.
    """
    api = node.url + "api/v1/"
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    before = requests.get(api + "site", headers=auth, timeout=10).json()
    cases: list[tuple[str, object, str]] = (
        [
            (name, value, f"{name} must be a string, not {kind}.")
            for name, (value, kind) in WRONG_TYPES.items()
        ]
        + [
            (name, value, f"{name} must be an array of strings.")
            for name, value in WRONG_ARRAYS.items()
        ]
        + [
            (
                "require_second_factor",
                "yes",
                "require_second_factor must be true or false, not a string.",
            ),
        ]
    )
    assert {name for name, _, _ in cases} == set(before) - {"id", "created", "updated", "verified"}
    for name, value, message in cases:
        answer = requests.patch(
            api + "site",
            headers={**auth, "Content-Type": "application/json"},
            data=json.dumps({name: value}),
            timeout=10,
        )
        assert answer.status_code == 422, (name, answer.text)
        assert answer.json() == {"error": {"code": "invalid", "message": message}}
    assert requests.get(api + "site", headers=auth, timeout=10).json() == before

    for method, path in (
        ("DELETE", "identifiers/12345"),
        ("DELETE", "identifiers/" + "A" * 32),
        ("POST", "deletion-requests/12345/complete"),
        ("POST", "deletion-requests/%7B%7D/complete"),
    ):
        answer = requests.request(method, api + path, headers=auth, timeout=10)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["error"]["code"] == "not_found"

    for path, message in (
        ("identifiers?limit=ten", "limit must be a whole number."),
        ("identifiers?limit=1.5", "limit must be a whole number."),
        ("deletion-requests?include_completed=maybe", "include_completed must be true or false."),
    ):
        answer = requests.get(api + path, headers=auth, timeout=10)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json() == {"error": {"code": "bad_request", "message": message}}
    for flag in ("true", "false", "1", "0"):
        listed = requests.get(
            api + "deletion-requests?include_completed=" + flag, headers=auth, timeout=10
        )
        assert listed.status_code == 200, listed.text

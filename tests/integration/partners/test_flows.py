"""
The partner flows end to end over HTTP (no JavaScript): a real node, the
example partner site (python3-openid's consumer) as a process, a person
with a cookie-keeping client.
"""

from __future__ import annotations

import pytest
import requests

from tests.integration.partners.conftest import Partner, TokenServer, register_site
from tests.integration.partners.flows import Person
from tests.support.browser import csrf_token
from tests.support.node import NodeProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def wait_for_event(partner: Partner, event_type: str, identifier: str = "") -> dict[str, object]:
    """The first webhook event of C{event_type} (for C{identifier}) the partner received."""

    def found() -> dict[str, object] | None:
        for event in partner.process.events():
            data = event["data"]
            assert isinstance(data, dict)
            if event["type"] == event_type and identifier in (data["identifier"], ""):
                return event
        return None

    return wait_for(found, 20, f"a {event_type} event")


def test_register_then_return(node: NodeProcess, partner: Partner) -> None:
    """
    A new person signs up at Clickpass, creates an account at the partner
    through the partner-branded form, and arrives back signed in; the
    next visit (also checkid_immediate) signs them in at once.
    """
    person = Person(node, partner.process.url)
    signin = person.start()
    choice = person.sign_up_from(signin)
    assert "Continue to Example Partner" in choice.text
    assert f'value="{person.email}"' in choice.text  # pre-filled
    done = person.choose(choice, "register", email=person.email, nickname="newbie", fullname="N B")
    assert done.ok, done.text[:2000]
    assert "Signed in as" in done.text and "newbie" in done.text
    # The signed assertion went to the partner's registration URL.
    assert any(r.url.startswith(partner.process.url + "register?") for r in done.history)
    person.partner_signout()
    again = person.start()
    assert "Signed in as" in again.text and "newbie" in again.text
    person.partner_signout()
    immediate = person.start(immediate=True)
    assert "Signed in as" in immediate.text


def test_registration_form_is_validated(node: NodeProcess, partner: Partner) -> None:
    """A bad or missing required field is refused with a message; nothing reaches the partner."""
    person = Person(node, partner.process.url)
    choice = person.sign_up_from(person.start())
    refused = person.choose(choice, "register", email="not-an-email", nickname="")
    assert refused.status_code == 400
    assert "Nickname is required by this site." in refused.text
    # The address is the account's verified one, whatever was typed.
    assert f'value="{person.email}"' in refused.text
    assert "not-an-email" not in refused.text
    assert refused.url.startswith(node.url)


def test_immediate_for_a_new_person_needs_setup(node: NodeProcess, partner: Partner) -> None:
    """checkid_immediate for a person not yet linked falls back to the full flow."""
    person = Person(node, partner.process.url)
    choice = person.sign_up_from(person.start())
    assert "Continue to Example Partner" in choice.text
    fallback = person.start(immediate=True)
    # setup_needed: the partner starts checkid_setup, which shows the choice again.
    assert "Continue to Example Partner" in fallback.text


def test_connect_existing_account(node: NodeProcess, partner: Partner) -> None:
    """
    "I already have an account": the person lands on the partner's connect
    URL, signs in there with the partner's password, and is linked; the
    next Clickpass sign-in goes straight to that account.
    """
    person = Person(node, partner.process.url)
    choice = person.sign_up_from(person.start())
    landed = person.choose(choice, "connect")
    assert landed.url.startswith(partner.process.url + "connect?")
    assert "Connect your Example Partner account" in landed.text
    wrong = person.session.post(
        partner.process.url + "connect", data={"username": "alice", "password": "nope"}
    )
    assert wrong.status_code == 401
    done = person.session.post(
        partner.process.url + "connect", data={"username": "alice", "password": "alice-password"}
    )
    assert "Signed in as" in done.text and ">alice<" in done.text
    person.partner_signout()
    again = person.start()
    assert ">alice<" in again.text


def test_disconnect_from_account_page(node: NodeProcess, partner: Partner) -> None:
    """
    Disconnecting on the account page ends the link (the partner hears of
    it by webhook) and the next visit asks again.
    """
    person = Person(node, partner.process.url)
    choice = person.sign_up_from(person.start())
    person.choose(choice, "register", email=person.email, nickname="leaver")
    api = node.url + "api/v1/identifiers"
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    before = {i["id"] for i in requests.get(api, headers=auth, timeout=10).json()["identifiers"]}
    sites = person.session.get(node.url + "account/sites")
    assert "Example Partner" in sites.text
    account = person.session.get(node.url + "account")
    assert "Example Partner" in account.text, "the account page lists connected sites itself"

    gone = person.session.post(
        node.url + "account/sites/disconnect",
        data={"csrf_token": csrf_token(sites.text), "site": partner.site.public_id, "forget": "no"},
    )
    assert gone.ok and "You have not connected any site yet." in gone.text
    person.partner_signout()
    asked = person.start()
    assert "Continue to Example Partner" in asked.text
    after = {i["id"] for i in requests.get(api, headers=auth, timeout=10).json()["identifiers"]}
    (gone_id,) = before - after
    identifier = node.url + "id/" + gone_id
    assert wait_for_event(partner, "user.linked", identifier)
    unlinked = wait_for_event(partner, "user.unlinked", identifier)
    assert unlinked["data"] == {"identifier": identifier, "by": "person"}


def test_partner_api(node: NodeProcess, partner: Partner, token_server: TokenServer) -> None:
    """
    The API answers with the key's own site and its links; a bad key is
    401; another partner's identifier is 404, as if it did not exist.
    """
    api = node.url + "api/v1/"
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    person = Person(node, partner.process.url)
    person.choose(
        person.sign_up_from(person.start()), "register", email=person.email, nickname="api"
    )
    site = requests.get(api + "site", headers=auth, timeout=10)
    assert site.status_code == 200 and site.json()["id"] == partner.site.public_id
    bad = requests.get(api + "site", headers={"Authorization": "Bearer cpk_nope"}, timeout=10)
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    missing = requests.get(api + "site", timeout=10)
    assert missing.status_code == 401
    listed = requests.get(api + "identifiers", headers=auth, timeout=10).json()
    assert listed["identifiers"], listed
    first = listed["identifiers"][0]
    assert first["identifier"].startswith(node.url + "id/") and first["created"] > 0
    one = requests.get(api + "identifiers/" + first["id"], headers=auth, timeout=10)
    assert one.json()["last_signin"] >= first["created"]

    other = register_site(node, token_server.realm, name="Other", publish=token_server.publish)
    other_auth = {"Authorization": f"Bearer {other.api_key}"}
    theirs = requests.get(api + "identifiers/" + first["id"], headers=other_auth, timeout=10)
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    assert requests.get(api + "identifiers", headers=other_auth, timeout=10).json() == {
        "identifiers": [],
        "next_after": None,
    }
    nothing = requests.get(api + "nowhere", headers=auth, timeout=10)
    assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "not_found"
    patched = requests.patch(
        api + "site", headers=auth, json={"name": "Renamed Partner"}, timeout=10
    )
    assert patched.status_code == 200 and patched.json()["name"] == "Renamed Partner"
    refused = requests.patch(
        api + "site",
        headers=auth,
        json={"realm": "http://x.test/", "return_to_urls": ["http://x.test/r"]},
        timeout=10,
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid"
    requests.patch(api + "site", headers=auth, json={"name": "Example Partner"}, timeout=10)
    unlinked = requests.delete(api + "identifiers/" + first["id"], headers=auth, timeout=10)
    assert unlinked.status_code == 200
    again = requests.get(api + "identifiers/" + first["id"], headers=auth, timeout=10)
    assert again.status_code == 404


def test_signin_page_is_branded_for_a_partner(node: NodeProcess, partner: Partner) -> None:
    """
    A person arriving from a partner sees its name on Clickpass's sign-in
    and sign-up pages ("to continue to PARTNER"); the same request with a
    return_to the partner did not register, or no OpenID request at all,
    shows no partner.
    """
    from urllib.parse import parse_qs, quote, urlencode, urlsplit

    person = Person(node, partner.process.url)
    signin = person.start()
    assert "/signin" in signin.url
    assert 'id="partner-branding"' in signin.text
    assert "to continue to <strong>Example Partner</strong>" in signin.text
    next_url = parse_qs(urlsplit(signin.url).query)["next"][0]
    signup = person.session.get(node.url + "signup?next=" + quote(next_url, safe=""), timeout=30)
    assert "to continue to <strong>Example Partner</strong>" in signup.text

    made_up = "/openid?" + urlencode(
        {
            "openid.ns": "http://specs.openid.net/auth/2.0",
            "openid.mode": "checkid_setup",
            "openid.realm": partner.process.url,
            "openid.return_to": partner.process.url + "elsewhere",
        }
    )
    plain = person.session.get(node.url + "signin?next=" + quote(made_up, safe=""), timeout=30)
    assert plain.status_code == 200
    assert 'id="partner-branding"' not in plain.text
    bare = requests.get(node.url + "signin", timeout=30)
    assert 'id="partner-branding"' not in bare.text

"""
An unverified address reaches no partner by any path, through a real node
(SQLite and MariaDB), the example partner site and the mail the node wrote
to its maildir:

- the partner flow, which requires an email, asks the person to verify
  first, and the mailed link comes back to the same sign-in;
- the registration form sends the account's verified address, never a
  typed one, and "connect" is held back the same way;
- the partner API and the webhooks carry no address at all.
"""

from __future__ import annotations

import json
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.integration.partners.conftest import PASSWORD, Partner
from tests.integration.partners.flows import HIDDEN, Person
from tests.support.browser import csrf_token
from tests.support.node import NodeProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def sign_up_unverified(person: Person) -> requests.Response:
    """Sign up from the partner's sign-in, then sign in without verifying: where it lands."""
    signin = person.start()
    next_url = parse_qs(urlsplit(signin.url).query)["next"][0]
    sent = person.session.post(
        person.node.url + "signup",
        data={
            "email": person.email,
            "password": PASSWORD,
            "password_again": PASSWORD,
            "next": next_url,
            "csrf_token": csrf_token(signin.text),
        },
        timeout=30,
    )
    assert 'id="signup-sent"' in sent.text, sent.text[:2000]
    assert "cp_session" not in person.session.cookies, "sign-up must not sign in"
    page = person.session.get(person.node.url + "signin?next=" + next_url, timeout=30)
    return person.session.post(
        person.node.url + "signin",
        data={
            "email": person.email,
            "password": PASSWORD,
            "next": next_url,
            "csrf_token": csrf_token(page.text),
        },
        timeout=30,
    )


def test_unverified_person_verifies_first_and_comes_back_to_the_same_sign_in(
    node: NodeProcess, partner: Partner
) -> None:
    """
    A person signed in with an unverified address is asked to confirm it
    before the partner (which requires an email) gets anything; the mailed
    link signs them through to the same partner sign-in, and the partner
    receives the now verified address.
    """
    person = Person(node, partner.process.url)
    asked = sign_up_unverified(person)
    assert 'id="verify-first"' in asked.text, asked.text[:2000]
    assert "Example Partner" in asked.text
    assert not asked.url.startswith(partner.process.url)
    choice = person.verify_by_mail()
    assert "Continue to Example Partner" in choice.text, choice.text[:2000]
    assert f'value="{person.email}"' in choice.text
    done = person.choose(choice, "register", email="someone-else@example.com", nickname="ver")
    assert "Signed in as" in done.text, done.text[:2000]
    assert f"({person.email})" in done.text
    assert "someone-else@example.com" not in done.text


def test_resend_link_also_comes_back_to_the_same_sign_in(
    node: NodeProcess, partner: Partner
) -> None:
    """The "send me a new link" on the verify-first page leads back to that sign-in too."""
    person = Person(node, partner.process.url)
    asked = sign_up_unverified(person)
    resent = person.session.post(
        node.url + "verify/resend",
        data={
            "csrf_token": csrf_token(asked.text),
            "next": asked.text.split('name="next" value="', 1)[1]
            .split('"', 1)[0]
            .replace("&amp;", "&"),
        },
        timeout=30,
    )
    assert 'id="resent"' in resent.text, resent.text[:2000]
    choice = person.verify_by_mail(count=2)
    assert "Continue to Example Partner" in choice.text, choice.text[:2000]


def test_an_unverified_account_cannot_post_the_choice_another_was_shown(
    node: NodeProcess, partner: Partner
) -> None:
    """
    Register and connect posted by an unverified account with the choice
    form a verified person was shown are refused (the form is bound to its
    person); asking again still gets the verify-first page, and the
    partner hears of no one.
    """
    verified = Person(node, partner.process.url)
    choice = verified.sign_up_from(verified.start())
    person = Person(node, partner.process.url)
    own_page = sign_up_unverified(person)
    hidden = dict(HIDDEN.findall(choice.text))
    events_before = len(partner.process.events())
    for action in ("register", "connect"):
        stolen = person.session.post(
            node.url + f"partner/{action}",
            data={
                "csrf_token": csrf_token(own_page.text),
                "payload": unescape(hidden["payload"]),
                "mac": unescape(hidden["mac"]),
                "field_email": person.email,
                "field_nickname": "x",
            },
            timeout=30,
        )
        assert stolen.status_code == 400, stolen.text[:2000]
        assert "not yours" in stolen.text
    page = person.start()
    assert 'id="verify-first"' in page.text
    assert len(partner.process.events()) == events_before


def test_partner_api_and_webhooks_carry_no_address(node: NodeProcess, partner: Partner) -> None:
    """
    What the partner API lists and the webhooks deliver about a person
    never holds an email address, verified or not.
    """
    person = Person(node, partner.process.url)
    choice = person.sign_up_from(person.start())
    person.choose(choice, "register", email=person.email, nickname="apiperson")
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    listed = requests.get(node.url + "api/v1/identifiers", headers=auth, timeout=10)
    assert listed.ok
    assert "@" not in listed.text
    # Webhooks go out from the node's outbox, a moment after the change.
    events = wait_for(
        partner.process.events, 30.0, "the registration's user.linked event to be delivered"
    )
    assert "@" not in json.dumps([e["data"] for e in events])

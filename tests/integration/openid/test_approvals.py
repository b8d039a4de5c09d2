"""
Remembered approvals on the account page, against a real node on both
storage backends: a person sees the sites that sign them in without asking
and can forget one; the next sign-in there asks again, and nothing else
changes.
"""

from __future__ import annotations

import html
import re

import pytest
from openid.consumer import consumer

from tests.integration.openid.harness import Person, PythonRP, RelyingPartySite
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

REALM_FIELD = re.compile(r'name="realm" value="([^"]*)"')
FORGET = "/account/approvals/forget"


def listed(person: Person) -> list[str]:
    """The realms the person's account page offers to forget, in its order."""
    page = person.browser.get("/account")
    assert page.status_code == 200, page.text
    assert "Sites that sign you in without asking" in page.text
    return [html.unescape(realm) for realm in REALM_FIELD.findall(page.text)]


def forget(person: Person, realm: str) -> int:
    """Press "Forget" for C{realm} on the account page; the answer's status."""
    answer = person.browser.submit("/account", FORGET, {"realm": realm}, allow_redirects=False)
    if answer.status_code == 303:
        assert answer.headers["location"] == "/account?done=approval-forgotten"
    return answer.status_code


def immediate(person: Person, rp: PythonRP) -> str:
    """What a checkid_immediate at C{rp} comes to for this person."""
    answer = person.open(rp.begin(immediate=True))
    assert answer.status_code == 302, answer.text
    return str(rp.complete(answer.headers["location"]).status)


def test_forgetting_an_approval_makes_that_site_ask_again(
    node: NodeProcess, rp_site: RelyingPartySite, other_site: RelyingPartySite, person: Person
) -> None:
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to, stateful=False)
    other = PythonRP(node.url, other_site.realm, other_site.return_to, stateful=False)
    person.decide(person.sign_up_and_continue(rp.begin()))
    person.through_consent(other.begin())
    assert sorted(listed(person)) == sorted([rp_site.realm, other_site.realm])
    # The relying party asked for the email address (SReg); the page says so in words.
    assert "Shared: Email address;" in person.browser.get("/account").text

    # A form that did not come from our page is refused, and nothing is forgotten.
    forged = person.browser.post(FORGET, {"realm": rp_site.realm}, allow_redirects=False)
    assert forged.status_code == 403
    assert immediate(person, rp) == consumer.SUCCESS

    assert forget(person, rp_site.realm) == 303
    assert listed(person) == [other_site.realm]
    # The person's security log says so, naming the site.
    log = person.browser.get("/account").text
    assert re.search(
        r"Forgot a site&#39;s approval <span class=\"muted\">\(" + re.escape(rp_site.realm), log
    )
    assert immediate(person, rp) == consumer.SETUP_NEEDED
    assert immediate(person, other) == consumer.SUCCESS
    # The next sign-in there shows the consent page again; allowing remembers anew.
    consent = person.open(rp.begin())
    assert consent.status_code == 200 and "Sign in to" in consent.text
    person.decide(consent)
    assert immediate(person, rp) == consumer.SUCCESS

    # Forgetting what is not there: one clear line, nothing else touched.
    assert forget(person, "http://never-approved.example/") == 404
    assert sorted(listed(person)) == sorted([rp_site.realm, other_site.realm])


def test_one_person_cannot_forget_anothers_approval(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to, stateful=False)
    person.decide(person.sign_up_and_continue(rp.begin()))
    stranger = Person(node.url, "x" + person.email)
    stranger.browser.sign_up(stranger.email, stranger.password)
    assert listed(stranger) == []
    assert "No site signs you in without asking." in stranger.browser.get("/account").text
    assert forget(stranger, rp_site.realm) == 404
    assert immediate(person, rp) == consumer.SUCCESS

    # Signed out, the button leads to the sign-in page and forgets nothing.
    person.browser.submit("/account", "/signout", {})
    signed_out = person.browser.submit(
        "/signin", FORGET, {"realm": rp_site.realm}, allow_redirects=False
    )
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/signin?next=%2Faccount"
    person.browser.sign_in(person.email, person.password)
    assert listed(person) == [rp_site.realm]

"""
PAPE 1.0 with python3-openid's consumer against a real node, on SQLite
and MariaDB: a site asking for multi-factor gets the person stepped up (a
fresh code) and a signed answer naming the policy and auth_time; a person
with no second factor is never claimed to meet it; checkid_immediate that
would need a step-up is setup_needed.
"""

from __future__ import annotations

import calendar
import html
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from openid.consumer import consumer
from openid.extensions.draft import pape5 as pape

from tests.integration.mfa.person import RECOVERY, MfaPerson, second_step_next
from tests.integration.openid.harness import HIDDEN, PythonRP, RelyingPartySite
from tests.support.browser import csrf_token
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rp_site() -> Any:
    site = RelyingPartySite("127.0.0.1").start()
    try:
        yield site
    finally:
        site.stop()


def begin(
    rp: PythonRP, policies: list[str], max_auth_age: int | None = None, immediate: bool = False
) -> str:
    request = rp.consumer().begin(rp.op_identifier)
    request.addExtension(pape.Request(policies, max_auth_age=max_auth_age))
    return str(request.redirectURL(rp.realm, rp.return_to, immediate=immediate))


def through_consent(person: MfaPerson, page: Any) -> str:
    """Allow on the consent page; return where the provider sends the browser."""
    assert page.status_code == 200, page.text
    fields = {name: html.unescape(value) for name, value in HIDDEN.findall(page.text)}
    fields["csrf_token"] = csrf_token(page.text)
    fields["decision"] = "allow"
    answer = person.browser.post("/openid/decide", fields, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    return str(answer.headers["location"])


def pape_of(rp: PythonRP, location: str) -> pape.Response:
    response = rp.complete(location)
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    found = pape.Response.fromSuccessResponse(response)
    assert found is not None, "no signed PAPE response"
    return found


def epoch(rfc3339: str) -> int:
    return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def enrol_and_trust(person: MfaPerson) -> None:
    """An authenticator app, then a sign-in through a trusted browser (no code)."""
    person.sign_up()
    person.set_up_totp()
    done = person.confirm_totp(person.app_code())
    person.recovery_codes = RECOVERY.findall(done.text)
    person.sign_out()
    second_step_next(person.sign_in_password())
    assert person.give_code(person.recovery_codes[0], trust=True).status_code == 303
    person.sign_out()
    assert person.sign_in_password("/account").headers["location"] == "/account"


def test_multi_factor_asked_steps_up_and_is_claimed(
    node: NodeProcess, rp_site: RelyingPartySite
) -> None:
    """
    Signed in through a trusted browser (no code this session), a site
    asking for multi-factor sends the person to give a code first, then
    receives the policy and an auth_time of that code, verified by
    python3-openid's consumer.
    """
    person = MfaPerson(node.url, f"p{secrets.token_hex(4)}@example.com")
    enrol_and_trust(person)
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to)
    asked = person.browser.session.get(begin(rp, [pape.AUTH_MULTI_FACTOR]), allow_redirects=False)
    assert asked.status_code == 303, asked.text
    location = asked.headers["location"]
    assert location.startswith("/account/confirm?next=%2Fopenid%3F"), location
    back = dict(parse_qsl(urlsplit(location).query))["next"]
    page = person.get(location)
    assert "fresh code" in page.text
    before = int(time.time())
    confirmed = person.browser.post(
        "/account/confirm",
        {"code": person.app_code(), "next": back, "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert confirmed.status_code == 303 and confirmed.headers["location"] == back
    answer = pape_of(rp, through_consent(person, person.get(back)))
    assert answer.auth_policies == [pape.AUTH_MULTI_FACTOR]
    assert answer.auth_time is not None
    assert before - 1 <= epoch(answer.auth_time) <= int(time.time()) + 1


def test_not_claimed_without_a_second_factor(node: NodeProcess, rp_site: RelyingPartySite) -> None:
    """
    A person with no second factor cannot be stepped up: the site gets its
    answer with no policy claimed (PAPE's none) and the password's time.
    max_auth_age 0 right after signing in does not send them round again.
    """
    person = MfaPerson(node.url, f"q{secrets.token_hex(4)}@example.com")
    signed_up = int(time.time())
    person.sign_up()
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to)
    url = begin(rp, [pape.AUTH_MULTI_FACTOR, pape.AUTH_PHISHING_RESISTANT], max_auth_age=0)
    answer = pape_of(
        rp, through_consent(person, person.browser.session.get(url, allow_redirects=False))
    )
    assert answer.auth_policies == []
    assert answer.auth_time is not None
    assert signed_up - 1 <= epoch(answer.auth_time) <= int(time.time()) + 1


def test_immediate_needing_a_step_up_is_setup_needed(
    node: NodeProcess, rp_site: RelyingPartySite
) -> None:
    """
    With the site approved (so checkid_immediate succeeds without PAPE), an
    immediate request for multi-factor that would need a code first is
    answered setup_needed.
    """
    person = MfaPerson(node.url, f"r{secrets.token_hex(4)}@example.com")
    enrol_and_trust(person)
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to)
    first = person.browser.session.get(rp.begin(email=False), allow_redirects=False)
    assert rp.complete(through_consent(person, first)).status == consumer.SUCCESS
    plain = person.browser.session.get(rp.begin(immediate=True, email=False), allow_redirects=False)
    assert rp.complete(plain.headers["location"]).status == consumer.SUCCESS
    answer = person.browser.session.get(
        begin(rp, [pape.AUTH_MULTI_FACTOR], immediate=True), allow_redirects=False
    )
    assert answer.status_code == 302, answer.text
    response = rp.complete(answer.headers["location"])
    assert response.status == consumer.SETUP_NEEDED


def test_discovery_advertises_the_pape_policies(node: NodeProcess) -> None:
    """
    python3-openid's discovery of the OP Identifier (Yadis XRDS) finds an
    OpenID 2.0 server that supports PAPE and each policy a sign-in here can
    meet: multi-factor, multi-factor-physical and phishing-resistant.
    """
    from openid.consumer.discover import OPENID_IDP_2_0_TYPE, discover

    claimed, endpoints = discover(node.url)
    assert endpoints, claimed
    [server] = [e for e in endpoints if OPENID_IDP_2_0_TYPE in e.type_uris]
    assert server.supportsType(pape.ns_uri)
    for policy in (
        pape.AUTH_MULTI_FACTOR,
        pape.AUTH_MULTI_FACTOR_PHYSICAL,
        pape.AUTH_PHISHING_RESISTANT,
    ):
        assert policy in server.type_uris, server.type_uris

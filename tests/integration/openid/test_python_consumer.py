"""
Interop with python3-openid's consumer against a real node: directed
identity, stateful and stateless, SReg email, single sign-on, and the
attacks that must be refused.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
import requests
from openid.consumer import consumer
from openid.extensions import ax, sreg

from tests.integration.openid.harness import Person, PythonRP, RelyingPartySite, sreg_email
from tests.support.mailbox import link_in, maildir_of, wait_for_message
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


def rp_for(node: NodeProcess, site: RelyingPartySite, stateful: bool) -> PythonRP:
    return PythonRP(node.url, site.realm, site.return_to, stateful=stateful)


@pytest.mark.parametrize("stateful", [True, False], ids=["stateful", "stateless"])
def test_directed_identity_sign_in_with_sreg_email(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person, stateful: bool
) -> None:
    """
    A new person signs up on the way, consents, and the relying party gets a
    verified per-site identifier and their email; the next sign-in at that
    site is immediate (checkid_immediate succeeds, no page shown).
    """
    rp = rp_for(node, rp_site, stateful)
    consent = person.sign_up_and_continue(rp.begin())
    assert "Sign in to" in consent.text and person.email in consent.text
    assert "could not confirm" not in consent.text  # the realm's XRDS lists the return_to
    answer = person.decide(consent)
    assert answer.status_code == 302
    response = rp.complete(answer.headers["location"])
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    claimed = response.identity_url
    assert claimed.startswith(node.url + "id/")
    assert sreg_email(response) == person.email
    if stateful:
        # It associated (DH) and we signed with that association, clean handle and all.
        assert rp.store is not None
        assoc = rp.store.getAssociation(node.url + "openid")
        # python3-openid asks for HMAC-SHA1/DH-SHA1 (Net::OpenID::Consumer, in
        # the Perl tests, for HMAC-SHA256/DH-SHA256): both types are exercised.
        assert assoc is not None and assoc.assoc_type == "HMAC-SHA1"
        assert "b'" not in assoc.handle
        assert answer.headers["location"].count(quote(assoc.handle, safe="")) == 1

    again = PythonRP(node.url, rp_site.realm, rp_site.return_to, stateful, rp.store)
    immediate = person.open(again.begin(immediate=True))
    assert immediate.status_code == 302
    second = again.complete(immediate.headers["location"])
    assert second.status == consumer.SUCCESS, getattr(second, "message", "")
    assert second.identity_url == claimed
    assert sreg_email(second) == person.email


def test_the_identifier_discovers(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """An issued identifier serves XRDS (by Accept) and HTML link discovery."""
    rp = rp_for(node, rp_site, True)
    location = person.decide(person.sign_up_and_continue(rp.begin())).headers["location"]
    claimed = rp.complete(location).identity_url
    xrds = requests.get(claimed, headers={"Accept": "application/xrds+xml"}, timeout=10)
    assert xrds.headers["content-type"].startswith("application/xrds+xml")
    assert "http://specs.openid.net/auth/2.0/signon" in xrds.text
    assert f"<LocalID>{claimed}</LocalID>" in xrds.text
    page = requests.get(claimed, timeout=10)
    assert page.headers["x-xrds-location"] == claimed + "/xrds"
    assert f'<link rel="openid2.local_id" href="{claimed}">' in page.text
    assert f'<link rel="openid2.provider" href="{node.url}openid">' in page.text
    missing = requests.get(node.url + "id/" + "a" * 32, timeout=10)
    assert missing.status_code == 404


def test_op_identifier_discovery(node: NodeProcess) -> None:
    """The site root is the OP Identifier: XRDS by Accept, X-XRDS-Location, HTML links."""
    xrds = requests.get(node.url, headers={"Accept": "application/xrds+xml"}, timeout=10)
    assert xrds.headers["content-type"].startswith("application/xrds+xml")
    assert "http://specs.openid.net/auth/2.0/server" in xrds.text
    assert f"<URI>{node.url}openid</URI>" in xrds.text
    page = requests.get(node.url, timeout=10)
    assert page.headers["x-xrds-location"] == node.url + "openid/xrds"
    assert f'<link rel="openid2.provider" href="{node.url}openid">' in page.text
    document = requests.get(page.headers["x-xrds-location"], timeout=10)
    assert document.text == xrds.text


def test_two_sites_see_different_identifiers(
    node: NodeProcess, rp_site: RelyingPartySite, other_site: RelyingPartySite, person: Person
) -> None:
    """One person signing in at two sites gets two unrelated identifiers."""
    first = rp_for(node, rp_site, True)
    location = person.decide(person.sign_up_and_continue(first.begin())).headers["location"]
    one = first.complete(location)
    second = rp_for(node, other_site, True)
    two = second.complete(person.through_consent(second.begin()))
    assert one.status == two.status == consumer.SUCCESS
    assert one.identity_url != two.identity_url


def test_two_people_differ_at_one_site(node: NodeProcess, rp_site: RelyingPartySite) -> None:
    """Two people at the same site get different identifiers."""
    claimed = []
    for email in ("twin-a@example.com", "twin-b@example.com"):
        person = Person(node.url, email)
        rp = rp_for(node, rp_site, True)
        location = person.decide(person.sign_up_and_continue(rp.begin())).headers["location"]
        claimed.append(rp.complete(location).identity_url)
    assert claimed[0] != claimed[1]


def _tamper(location: str, key: str, value: str) -> str:
    base, _, query = location.partition("?")
    args = dict(parse_qsl(query, keep_blank_values=True))
    assert key in args
    args[key] = value
    return base + "?" + urlencode(args)


@pytest.mark.parametrize("stateful", [True, False], ids=["stateful", "stateless"])
def test_tampered_assertion_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person, stateful: bool
) -> None:
    """Changing a signed field (the released email) makes the assertion fail."""
    rp = rp_for(node, rp_site, stateful)
    location = person.decide(person.sign_up_and_continue(rp.begin())).headers["location"]
    sreg_key = next(k for k in dict(parse_qsl(urlsplit(location).query)) if k.endswith(".email"))
    forged = rp.complete(_tamper(location, sreg_key, "attacker@example.com"))
    assert forged.status == consumer.FAILURE
    # The forgery spoiled nothing: the genuine assertion still verifies.
    assert rp.complete(location).status == consumer.SUCCESS


def test_replayed_nonce_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """A stateful relying party accepts an assertion once; its replay fails on the nonce."""
    rp = rp_for(node, rp_site, True)
    location = person.decide(person.sign_up_and_continue(rp.begin())).headers["location"]
    assert rp.complete(location).status == consumer.SUCCESS
    replay = rp.complete(location)
    assert replay.status == consumer.FAILURE
    assert "nonce" in str(replay.message).lower()


def test_second_check_authentication_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    The provider confirms a stateless assertion once: a second
    check_authentication of it, by the consumer or by hand, is refused.
    """
    rp = rp_for(node, rp_site, False)
    location = person.decide(person.sign_up_and_continue(rp.begin())).headers["location"]
    assert rp.complete(location).status == consumer.SUCCESS
    assert rp_for(node, rp_site, False).complete(location).status == consumer.FAILURE
    args = dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))
    args["openid.mode"] = "check_authentication"
    direct = requests.post(node.url + "openid", data=args, timeout=10)
    assert direct.status_code == 200
    assert "is_valid:false" in direct.text


def test_return_to_outside_the_realm_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """A return_to outside the realm gets an error page, never a redirect there."""
    person.browser.sign_up(person.email, person.password)
    rp = PythonRP(node.url, rp_site.realm, "http://evil.example/steal", stateful=True)
    page = person.open(rp.begin())
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "outside its own realm" in page.text


def test_return_to_not_published_by_the_realm_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """A return_to inside the realm that the realm's XRDS does not list is refused."""
    person.browser.sign_up(person.email, person.password)
    rp = PythonRP(node.url, rp_site.realm, rp_site.realm + "redirector", stateful=True)
    page = person.open(rp.begin())
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "does not confirm that address" in page.text


def test_immediate_before_approval_needs_setup(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """checkid_immediate answers setup_needed when the person has not approved the site."""
    rp = rp_for(node, rp_site, True)
    signed_out = person.open(rp.begin(immediate=True))
    assert signed_out.status_code == 302
    assert rp.complete(signed_out.headers["location"]).status == consumer.SETUP_NEEDED
    person.browser.sign_up(person.email, person.password)
    signed_in = person.open(rp.begin(immediate=True))
    assert signed_in.status_code == 302
    assert rp.complete(signed_in.headers["location"]).status == consumer.SETUP_NEEDED


def test_cancel_is_a_negative_assertion(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """Cancelling on the consent page sends the relying party a cancel, and remembers nothing."""
    rp = rp_for(node, rp_site, True)
    answer = person.decide(person.sign_up_and_continue(rp.begin()), decision="cancel")
    assert answer.status_code == 302
    assert rp.complete(answer.headers["location"]).status == consumer.CANCEL
    later = person.open(rp.begin(immediate=True))
    assert rp.complete(later.headers["location"]).status == consumer.SETUP_NEEDED


def test_forged_consent_form_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """A consent form whose request was altered, or posted without CSRF token, is refused."""
    rp = rp_for(node, rp_site, True)
    consent = person.sign_up_and_continue(rp.begin())
    assert consent.status_code == 200
    body = consent.text.replace('name="mac" value="', 'name="mac" value="0')
    consent._content = body.encode()
    assert person.decide(consent).status_code == 400
    no_csrf = person.browser.session.post(
        node.url + "openid/decide", data={"decision": "allow"}, allow_redirects=False, timeout=10
    )
    assert no_csrf.status_code == 403


def test_no_encryption_association_refused_over_http(node: NodeProcess) -> None:
    """Over plain HTTP, the provider refuses to send an association secret in clear."""
    answer = requests.post(
        node.url + "openid",
        data={
            "openid.ns": "http://specs.openid.net/auth/2.0",
            "openid.mode": "associate",
            "openid.assoc_type": "HMAC-SHA256",
            "openid.session_type": "no-encryption",
        },
        timeout=10,
    )
    assert "error_code:unsupported-type" in answer.text
    assert "session_type:DH-SHA256" in answer.text
    assert "mac_key" not in answer.text


def test_garbage_is_one_clear_line(node: NodeProcess) -> None:
    """Nonsense at the endpoint is a plain refusal, and the node carries on."""
    page = requests.get(node.url + "openid", params={"openid.mode": "checkid_setup"}, timeout=10)
    assert page.status_code == 400
    assert "Traceback" not in page.text
    direct = requests.post(node.url + "openid", data={"openid.mode": "frobnicate"}, timeout=10)
    assert direct.status_code == 400
    assert requests.get(node.url + "readyz", timeout=10).status_code == 200


def test_existing_account_signs_in_on_the_way(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """Someone with an account, signed out, signs in on the way and lands on the consent page."""
    person.browser.sign_up(person.email, person.password)
    signed_out = Person(node.url, person.email, person.password)
    rp = rp_for(node, rp_site, True)
    first = signed_out.open(rp.begin())
    assert first.status_code == 303
    next_url = dict(parse_qsl(urlsplit(first.headers["location"]).query))["next"]
    consent = signed_out.browser.sign_in(person.email, person.password, next_url=next_url)
    assert "Sign in to" in consent.text
    result = rp.complete(signed_out.decide(consent).headers["location"])
    assert result.status == consumer.SUCCESS
    assert sreg_email(result) == person.email


def _raw_checkid(node: NodeProcess, site: RelyingPartySite, mode: str, **fields: str) -> str:
    """A checkid request built by hand, for what the consumer library never sends."""
    query = {
        "openid.ns": "http://specs.openid.net/auth/2.0",
        "openid.mode": mode,
        "openid.return_to": site.return_to,
        "openid.realm": site.realm,
        **{"openid." + key: value for key, value in fields.items()},
    }
    return node.url + "openid?" + urlencode(query)


def test_request_for_no_identifier(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    OpenID 2 allows a checkid with no identifier (extensions only). Signed
    out or in, checkid_immediate answers setup_needed, with a setup URL that
    names no identifier; checkid_setup is refused with a page that says why.
    Neither is an internal error (python-openid asserts on the first).
    """
    for signed_in in (False, True):
        if signed_in:
            person.browser.sign_up(person.email, person.password)
        immediate = person.open(_raw_checkid(node, rp_site, "checkid_immediate"))
        assert immediate.status_code == 302, immediate.text[:300]
        answer = dict(parse_qsl(urlsplit(immediate.headers["location"]).query))
        assert answer["openid.mode"] == "setup_needed"
        setup = dict(parse_qsl(urlsplit(answer["openid.user_setup_url"]).query))
        assert setup == {
            "openid.ns": "http://specs.openid.net/auth/2.0",
            "openid.mode": "checkid_setup",
            "openid.return_to": rp_site.return_to,
            "openid.realm": rp_site.realm,
        }
        page = person.open(_raw_checkid(node, rp_site, "checkid_setup"))
        assert page.status_code == 400 and "location" not in page.headers
        assert "asks for no identifier" in page.text


def test_request_with_no_return_address(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    A checkid with a realm but no return_to is refused with a page, signed
    out or in, not an internal error (python-openid cannot answer it).
    """
    select = "http://specs.openid.net/auth/2.0/identifier_select"
    for signed_in in (False, True):
        if signed_in:
            person.browser.sign_up(person.email, person.password)
        for mode in ("checkid_immediate", "checkid_setup"):
            url = _raw_checkid(node, rp_site, mode, identity=select, claimed_id=select)
            url = url.replace("openid.return_to=" + quote(rp_site.return_to, safe=""), "x=1")
            assert "return_to" not in url
            page = person.open(url)
            assert page.status_code == 400 and "location" not in page.headers
            assert "no return address" in page.text


def test_sreg_alias_mapped_to_another_namespace_is_ignored(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    A request that maps "sreg" to a namespace of its own gets the consent
    page, not an error page, and nothing is asked for through it. (A
    checkid_immediate from a realm the person never approved is answered
    setup_needed before its extensions are read.)
    """
    select = "http://specs.openid.net/auth/2.0/identifier_select"
    person.browser.sign_up(person.email, person.password)
    url = _raw_checkid(
        node,
        rp_site,
        "checkid_setup",
        identity=select,
        claimed_id=select,
        **{"ns.sreg": "http://other.example/", "sreg.required": "email"},
    )
    logged = len(node.log())
    answer = person.open(url)
    assert answer.status_code == 200, answer.text[:300]
    assert "Sign in to" in answer.text and "Nothing else about you is shared." in answer.text
    # The operator can see why that site got no registration data.
    node.wait_for_log(
        f"openid request from {rp_site.realm}: the site's simple registration request was"
        " malformed",
        after=logged,
    )


def test_unverified_email_is_released_by_neither_sreg_nor_ax(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    Someone signed in with an address they have not verified: the consent
    page shows no email, and the relying party gets none by SReg or AX;
    once the address is verified through the mailed link, it is released.
    """
    person.browser.sign_up(person.email, person.password, verify=False)
    person.browser.sign_in(person.email, person.password)

    def ask() -> tuple[PythonRP, str]:
        rp = rp_for(node, rp_site, stateful=False)
        request = rp.consumer().begin(node.url)
        request.addExtension(sreg.SRegRequest(required=["email"], optional=["fullname"]))
        fetch = ax.FetchRequest()
        fetch.add(ax.AttrInfo("http://axschema.org/contact/email", required=True))
        request.addExtension(fetch)
        return rp, request.redirectURL(rp_site.realm, rp_site.return_to)

    rp, url = ask()
    consent = person.open(url)
    assert consent.status_code == 200, consent.text[:2000]
    assert person.email not in consent.text.split("<main", 1)[1].split("</main>", 1)[0]
    response = rp.complete(person.decide(consent).headers["location"])
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    assert sreg_email(response) is None
    fetched = ax.FetchResponse.fromSuccessResponse(response)
    assert fetched is None or not fetched.get("http://axschema.org/contact/email")

    message = wait_for_message(maildir_of(node), person.email, "Confirm your email address")
    person.browser.verify(link_in(message, "verify"), person.email, person.password)
    rp, url = ask()
    page = person.open(url)
    location = person.decide(page).headers["location"] if page.status_code == 200 else ""
    response = rp.complete(location or page.headers["location"])
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    assert sreg_email(response) == person.email

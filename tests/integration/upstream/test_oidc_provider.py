"""
Sign-in through a real, independently written OpenID Connect provider (the
npm package oidc-provider, over TLS from a test CA), driven the way a
browser would: Clickpass's button, the provider's login and consent pages,
the redirect back, and a Clickpass session at the end.
"""

from __future__ import annotations

import re
import sqlite3
from html import unescape
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest
import requests

from tests.integration.upstream.conftest import UpstreamSetup
from tests.support.browser import Browser, csrf_token

pytestmark = pytest.mark.integration

FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"', re.IGNORECASE)


def _rows(setup: UpstreamSetup, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(setup.database) as db:
        return list(db.execute(sql))


def _browser(setup: UpstreamSetup) -> Browser:
    browser = Browser(setup.node.url)
    browser.session.verify = str(setup.ca.ca_pem)
    # A CA bundle named in the environment would override the session's own.
    browser.session.trust_env = False
    return browser


def _form_action(page: requests.Response) -> str:
    m = FORM_ACTION.search(page.text)
    assert m is not None, page.text[:2000]
    return urljoin(page.url, unescape(m.group(1)))


def start_signin(browser: Browser, next_url: str = "/account") -> requests.Response:
    """Press the provider's button on Clickpass's sign-in page."""
    page = browser.get("/signin")
    assert "/upstream/testop/start" in page.text
    assert "Test OP" in page.text
    return browser.post(
        "/upstream/testop/start",
        {"csrf_token": csrf_token(page.text), "next": next_url},
    )


def through_provider(browser: Browser, page: requests.Response, login: str) -> requests.Response:
    """Log in and consent at oidc-provider's pages, as often as it asks."""
    for _ in range(4):
        if 'name="login"' in page.text:
            page = browser.session.post(
                _form_action(page),
                data={"prompt": "login", "login": login, "password": "anything"},
                timeout=30,
            )
        elif 'name="prompt" value="consent"' in page.text:
            page = browser.session.post(_form_action(page), data={"prompt": "consent"}, timeout=30)
        else:
            return page
    raise AssertionError("the provider kept asking:\n" + page.text[:2000])


def callback_url(page: requests.Response) -> str:
    for response in [*page.history, page]:
        location = response.headers.get("location", "")
        if "/upstream/testop/callback" in location:
            return urljoin(response.url, location)
    raise AssertionError("no redirect to the callback")


def test_first_signin_creates_account_and_second_finds_it(upstream_setup: UpstreamSetup) -> None:
    """
    A first sign-in through the provider creates a Clickpass account with the
    provider's verified email and starts a session; signing in again later
    (fresh browser) finds the same account; replaying the provider's
    redirect is refused and creates nothing.
    """
    browser = _browser(upstream_setup)
    page = through_provider(browser, start_signin(browser), "alice")
    assert page.status_code == 200, page.text[:2000]
    assert page.url == upstream_setup.node.url + "account"
    assert "alice@example.test" in page.text
    accounts = _rows(upstream_setup, "SELECT id, email, password_hash FROM accounts")
    assert len(accounts) == 1
    assert accounts[0][1:] == ("alice@example.test", None)
    identities = _rows(
        upstream_setup,
        "SELECT account_id, provider, email, email_verified FROM upstream_identities",
    )
    assert identities == [(accounts[0][0], "testop", "alice@example.test", 1)]
    replay = callback_url(page)

    other = _browser(upstream_setup)
    page = through_provider(other, start_signin(other), "alice")
    assert page.url == upstream_setup.node.url + "account"
    assert "alice@example.test" in page.text
    assert len(_rows(upstream_setup, "SELECT id FROM accounts")) == 1

    again = browser.session.get(replay, timeout=30)
    assert again.status_code == 400
    assert "already used" in again.text
    assert len(_rows(upstream_setup, "SELECT id FROM accounts")) == 1
    assert len(_rows(upstream_setup, "SELECT id FROM upstream_identities")) == 1


def test_unverified_email_is_not_trusted(upstream_setup: UpstreamSetup) -> None:
    """An email the provider did not verify does not become the account's email."""
    browser = _browser(upstream_setup)
    page = through_provider(browser, start_signin(browser), "unverified-bob")
    assert page.url == upstream_setup.node.url + "account"
    (email,) = _rows(upstream_setup, "SELECT email FROM accounts")[0]
    assert isinstance(email, str) and email.endswith("@upstream.invalid")
    assert _rows(upstream_setup, "SELECT email, email_verified FROM upstream_identities") == [
        ("unverified-bob@example.test", 0)
    ]


def test_matching_email_is_never_linked_silently(upstream_setup: UpstreamSetup) -> None:
    """
    A provider sign-in whose verified email belongs to an existing account
    is refused with advice (nothing created); once signed in to that account,
    linking the provider works, and the provider then signs in to it; an
    account with a password may unlink the provider.
    """
    owner = _browser(upstream_setup)
    owner.sign_up("carol@example.test", "a long enough password")

    stranger = _browser(upstream_setup)
    page = through_provider(stranger, start_signin(stranger), "carol")
    assert page.status_code == 409
    assert "Sign in to it first" in page.text
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM upstream_identities") == [(0,)]
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM accounts") == [(1,)]

    manage = owner.get("/account/upstream")
    assert "Link Test OP" in manage.text
    start = owner.post("/upstream/testop/link", {"csrf_token": csrf_token(manage.text)})
    page = through_provider(owner, start, "carol")
    assert page.url == upstream_setup.node.url + "account/upstream"
    assert "carol@example.test" in page.text
    assert len(_rows(upstream_setup, "SELECT id FROM upstream_identities")) == 1

    fresh = _browser(upstream_setup)
    page = through_provider(fresh, start_signin(fresh), "carol")
    assert page.url == upstream_setup.node.url + "account"
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM accounts") == [(1,)]

    (identity_id,) = _rows(upstream_setup, "SELECT id FROM upstream_identities")[0]
    manage = owner.get("/account/upstream")
    done = owner.post(
        "/account/upstream/unlink",
        {"csrf_token": csrf_token(manage.text), "identity": str(identity_id)},
    )
    assert done.status_code == 200
    assert "was unlinked" in done.text
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM upstream_identities") == [(0,)]


def test_last_sign_in_method_cannot_be_unlinked(upstream_setup: UpstreamSetup) -> None:
    """An account made through the provider (no password) keeps its only link."""
    browser = _browser(upstream_setup)
    through_provider(browser, start_signin(browser), "dave")
    (identity_id,) = _rows(upstream_setup, "SELECT id FROM upstream_identities")[0]
    manage = browser.get("/account/upstream")
    refused = browser.post(
        "/account/upstream/unlink",
        {"csrf_token": csrf_token(manage.text), "identity": str(identity_id)},
    )
    assert refused.status_code == 409
    assert "only way to sign in" in refused.text
    assert len(_rows(upstream_setup, "SELECT id FROM upstream_identities")) == 1


def test_openid_assertion_for_an_upstream_identity(upstream_setup: UpstreamSetup) -> None:
    """
    End to end: a relying party (python3-openid) sends someone to Clickpass
    asking for email, nickname and full name (SReg) and the full name (AX);
    they sign in through the OpenID Connect provider, see the provider's
    name and nickname on the consent page, consent, and the relying party
    receives a verified per-site OpenID with the provider's verified email,
    its name and its nickname.
    """
    from openid.consumer import consumer
    from openid.extensions import ax, sreg

    from tests.integration.openid.harness import HIDDEN, PythonRP, RelyingPartySite

    site = RelyingPartySite("127.0.0.1").start()
    try:
        node = upstream_setup.node
        rp = PythonRP(node.url, site.realm, site.return_to)
        auth_request = rp.consumer().begin(node.url)
        auth_request.addExtension(
            sreg.SRegRequest(required=["email"], optional=["nickname", "fullname"])
        )
        fetch = ax.FetchRequest()
        fetch.add(ax.AttrInfo("http://axschema.org/namePerson", required=True))
        auth_request.addExtension(fetch)
        browser = _browser(upstream_setup)
        first = browser.session.get(
            auth_request.redirectURL(site.realm, site.return_to),
            allow_redirects=False,
            timeout=30,
        )
        assert first.status_code == 303, first.text[:2000]
        location = first.headers["location"]
        next_url = dict(parse_qsl(urlsplit(location).query))["next"]
        assert next_url.startswith("/openid?"), location

        consent = through_provider(browser, start_signin(browser, next_url), "frank")
        assert consent.status_code == 200, consent.text[:2000]
        assert "Test frank" in consent.text and "frank-nick" in consent.text
        fields = {name: unescape(value) for name, value in HIDDEN.findall(consent.text)}
        assert set(fields) == {"payload", "mac"}, consent.text[:2000]
        fields["csrf_token"] = csrf_token(consent.text)
        fields["decision"] = "allow"
        answer = browser.session.post(
            node.url + "openid/decide", data=fields, allow_redirects=False, timeout=30
        )
        assert answer.status_code == 302, answer.text[:2000]
        response = rp.complete(answer.headers["location"])
        assert response.status == consumer.SUCCESS, getattr(response, "message", "")
        assert response.identity_url.startswith(node.url + "id/")
        assert "frank" not in response.identity_url
        released = sreg.SRegResponse.fromSuccessResponse(response)
        assert released is not None
        assert dict(released.items()) == {
            "email": "frank@example.test",
            "nickname": "frank-nick",
            "fullname": "Test frank",
        }
        fetched = ax.FetchResponse.fromSuccessResponse(response)
        assert fetched is not None
        assert fetched.get("http://axschema.org/namePerson") == ["Test frank"]
    finally:
        site.stop()


def test_unverified_email_is_not_released_to_a_relying_party(
    upstream_setup: UpstreamSetup,
) -> None:
    """
    A person whose provider did not verify their email gets no email on the
    consent page or at the relying party (neither the provider's nor the
    placeholder), but their provider name still goes through.
    """
    from openid.consumer import consumer
    from openid.extensions import sreg

    from tests.integration.openid.harness import HIDDEN, PythonRP, RelyingPartySite

    site = RelyingPartySite("127.0.0.1").start()
    try:
        node = upstream_setup.node
        rp = PythonRP(node.url, site.realm, site.return_to)
        auth_request = rp.consumer().begin(node.url)
        auth_request.addExtension(sreg.SRegRequest(optional=["email", "fullname"]))
        browser = _browser(upstream_setup)
        first = browser.session.get(
            auth_request.redirectURL(site.realm, site.return_to),
            allow_redirects=False,
            timeout=30,
        )
        next_url = dict(parse_qsl(urlsplit(first.headers["location"]).query))["next"]
        consent = through_provider(browser, start_signin(browser, next_url), "unverified-gil")
        assert consent.status_code == 200, consent.text[:2000]
        shared = consent.text.split('class="release"', 1)[1].split("</ul>", 1)[0]
        assert "Test unverified-gil" in shared
        assert "@" not in shared, shared
        fields = {name: unescape(value) for name, value in HIDDEN.findall(consent.text)}
        fields["csrf_token"] = csrf_token(consent.text)
        fields["decision"] = "allow"
        answer = browser.session.post(
            node.url + "openid/decide", data=fields, allow_redirects=False, timeout=30
        )
        response = rp.complete(answer.headers["location"])
        assert response.status == consumer.SUCCESS, getattr(response, "message", "")
        released = sreg.SRegResponse.fromSuccessResponse(response)
        assert released is not None
        assert dict(released.items()) == {"fullname": "Test unverified-gil"}
    finally:
        site.stop()


def test_provider_down_gives_a_502_page_and_creates_nothing(
    upstream_setup: UpstreamSetup,
) -> None:
    """
    With the provider gone, pressing its button on a real node answers a 502
    error page with one sentence (no traceback), creates nothing, and the
    node goes on serving.
    """
    from tests.integration.upstream.conftest import stop_process

    stop_process(upstream_setup.provider.process)
    browser = _browser(upstream_setup)
    page = start_signin(browser)
    assert page.status_code == 502, page.text[:2000]
    assert "Sign-in did not work" in page.text
    assert "Test OP" in page.text
    assert "Traceback" not in page.text
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM accounts") == [(0,)]
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM upstream_pending") == [(0,)]
    assert browser.get("/signin").status_code == 200


def test_provider_error_answer_gives_a_502_page(upstream_setup: UpstreamSetup) -> None:
    """
    A provider that sends the person back with an error of its own (not a
    refusal by the person) gets a 502 page naming the provider, and the
    pending sign-in cannot be used again.
    """
    browser = _browser(upstream_setup)
    at_provider = start_signin(browser)
    assert at_provider.url.startswith(upstream_setup.provider.issuer), at_provider.url
    authorize = at_provider.history[0].headers["location"]
    state = dict(parse_qsl(urlsplit(authorize).query))["state"]
    callback = f"{upstream_setup.node.url}upstream/testop/callback"
    page = browser.session.get(
        callback, params={"state": state, "error": "server_error"}, timeout=30
    )
    assert page.status_code == 502, page.text[:2000]
    assert "Test OP could not sign you in (server_error)" in page.text
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM accounts") == [(0,)]
    again = browser.session.get(callback, params={"state": state, "code": "x"}, timeout=30)
    assert again.status_code == 400
    assert "already used" in again.text


def test_verified_owner_takes_the_address_from_an_unverified_account(
    upstream_setup: UpstreamSetup,
) -> None:
    """
    Someone signs up with an address they do not own and never verifies
    it; the owner arrives through the provider, which verified the address:
    they get a new account holding it (verified), and the squatting account
    loses it and is signed out.
    """
    squatter = _browser(upstream_setup)
    squatter.sign_up("hana@example.test", "a long enough password", verify=False)
    squatter.sign_in("hana@example.test", "a long enough password")
    assert squatter.get("/account").url.endswith("/account")

    owner = _browser(upstream_setup)
    page = through_provider(owner, start_signin(owner), "hana")
    assert page.url == upstream_setup.node.url + "account", page.text[:2000]
    assert 'data-verified="yes"' in page.text and "hana@example.test" in page.text
    rows = _rows(
        upstream_setup, "SELECT email, email_verified, password_hash IS NULL FROM accounts"
    )
    assert ("hana@example.test", 1, 1) in rows
    (lost,) = [r for r in rows if r[2] == 0]
    assert str(lost[0]).endswith("@released.invalid") and lost[1] == 0
    assert "/signin" in squatter.get("/account").url, "the squatter was signed out"
    refused = _browser(upstream_setup).sign_in("hana@example.test", "a long enough password")
    assert refused.status_code == 401
    logged = _rows(
        upstream_setup,
        "SELECT e.kind, e.detail FROM security_events e JOIN accounts a ON a.id = e.account_id "
        "WHERE a.email LIKE '%@released.invalid'",
    )
    assert ("email_lost", "hana@example.test, verified at Test OP") in logged, logged


def test_no_identity_is_linked_into_an_unverified_account(
    upstream_setup: UpstreamSetup,
) -> None:
    """
    Linking the provider into an account whose address is unverified is
    refused with advice, and links nothing; once verified, it links.
    """
    person = _browser(upstream_setup)
    person.sign_up("ivan@example.test", "a long enough password", verify=False)
    person.sign_in("ivan@example.test", "a long enough password")
    manage = person.get("/account/upstream")
    start = person.post("/upstream/testop/link", {"csrf_token": csrf_token(manage.text)})
    page = through_provider(person, start, "ivan")
    assert page.status_code == 403, page.text[:2000]
    assert "Confirm your Clickpass address first" in page.text
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM upstream_identities") == [(0,)]
    assert "A sign-in provider was not linked" in person.get("/account").text
    upstream_setup.node.ctl("user", "verify", "ivan@example.test")
    manage = person.get("/account/upstream")
    start = person.post("/upstream/testop/link", {"csrf_token": csrf_token(manage.text)})
    page = through_provider(person, start, "ivan")
    assert page.url == upstream_setup.node.url + "account/upstream", page.text[:2000]
    assert _rows(upstream_setup, "SELECT COUNT(*) FROM upstream_identities") == [(1,)]

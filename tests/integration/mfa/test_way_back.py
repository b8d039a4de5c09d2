"""
The way back through setting up a second factor, through a real node on
SQLite and MariaDB: a person with no factor, sent from a partner site that
requires one, sets up an authenticator app (pyotp), acknowledges the
recovery codes and goes on, with no link followed by hand, to the OpenID
request that was waiting, which completes at the site (python3-openid's
consumer). A way back to another host is never carried nor followed.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from html import unescape
from urllib.parse import parse_qsl, quote, urlsplit

import pyotp
import pytest
from openid.consumer import consumer

from tests.integration.mfa.person import RECOVERY, SECRET, MfaPerson
from tests.integration.mfa.relying_party import BrowserRelyingParty
from tests.integration.mfa.test_site_requires_factor import set_required
from tests.integration.openid.harness import PythonRP
from tests.integration.partners.conftest import RegisteredSite, register_site
from tests.support.browser import csrf_token
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

HIDDEN = re.compile(r'name="(payload|mac)" value="([^"]*)"')
NEXT_FIELD = re.compile(r'name="next" value="([^"]*)"')
# Ways back that lead off this site: each must be ignored everywhere.
OFF_SITE = ["//evil.example", "https://evil.example", "/\\evil.example", "http:/evil.example"]


@pytest.fixture(scope="module")
def partner(node: NodeProcess) -> Iterator[tuple[BrowserRelyingParty, RegisteredSite]]:
    """A verified partner site that requires a second factor of everyone."""
    rp = BrowserRelyingParty()
    try:
        site = register_site(node, rp.realm, publish=rp.publish, required=())
        assert set_required(node, site, True).status_code == 200
        yield rp, site
    finally:
        rp.stop()


def wrong_code(secret: str) -> str:
    """A six-digit code the app shows for no step near now."""
    app = pyotp.TOTP(secret)
    near = {app.at(time.time() + d * 30) for d in range(-2, 3)}
    return next(
        c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c not in near
    )


def next_fields(html: str) -> list[str]:
    return [unescape(v) for v in NEXT_FIELD.findall(html)]


def test_setting_up_an_app_goes_on_to_the_site(
    node: NodeProcess, partner: tuple[BrowserRelyingParty, RegisteredSite]
) -> None:
    """
    Sent to set up a factor, the person sets up an app: every set-up page
    carries the way back, and acknowledging the recovery codes goes on to
    the waiting request, which the site's consumer receives as a success.
    """
    rp_site, _ = partner
    person = MfaPerson(node.url, f"w{secrets.token_hex(4)}@example.com")
    person.sign_up()
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to)
    asked = person.browser.session.get(rp.begin(email=False), allow_redirects=False)
    assert asked.status_code == 303, asked.text[:2000]
    location = asked.headers["location"]
    assert location.startswith("/account/mfa?next=%2Fopenid%3F"), location
    back = dict(parse_qsl(urlsplit(location).query))["next"]

    manage = person.get(location)
    assert 'id="second-factor-required"' in manage.text
    # The app's form and the key links carry it on.
    assert next_fields(manage.text) == [back]
    assert f"/account/mfa/keys/new?kind=passkey&amp;next={quote(back)}" in manage.text
    keys_page = person.get("/account/mfa/keys/new?kind=key&next=" + quote(back, safe=""))
    assert keys_page.status_code == 200, keys_page.text[:2000]
    assert next_fields(keys_page.text) == [back]

    begun = person.browser.post(
        "/account/mfa/totp/begin",
        {"next": back, "csrf_token": csrf_token(manage.text)},
        allow_redirects=False,
    )
    assert begun.status_code == 303, begun.text[:2000]
    assert begun.headers["location"] == "/account/mfa/totp?next=" + quote(back, safe="")
    setup = person.get(begun.headers["location"])
    assert setup.status_code == 200, setup.text[:2000]
    assert next_fields(setup.text) == [back]
    found = SECRET.search(setup.text)
    assert found is not None, setup.text[:2000]
    person.secret = found.group(1).replace(" ", "")

    # A wrong code keeps the way back on the page it shows again.
    wrong = person.browser.post(
        "/account/mfa/totp/confirm",
        {"code": wrong_code(person.secret), "next": back, "csrf_token": csrf_token(setup.text)},
        allow_redirects=False,
    )
    assert wrong.status_code == 400, wrong.text[:2000]
    assert next_fields(wrong.text) == [back]

    codes = person.browser.post(
        "/account/mfa/totp/confirm",
        {"code": person.app_code(), "next": back, "csrf_token": csrf_token(setup.text)},
        allow_redirects=False,
    )
    assert codes.status_code == 200, codes.text[:2000]
    assert len(RECOVERY.findall(codes.text)) == 10
    assert 'id="codes-saved"' in codes.text
    assert next_fields(codes.text) == [back]

    onward = person.browser.post(
        "/account/mfa/continue",
        {"next": back, "csrf_token": csrf_token(codes.text)},
        allow_redirects=False,
    )
    assert onward.status_code == 303 and onward.headers["location"] == back, onward.text[:2000]
    # The waiting request goes on: the code just given is this session's
    # second factor, so the site's own choice follows, not another gate.
    choice = person.get(back)
    assert choice.status_code == 200, choice.text[:2000]
    assert 'action="/partner/register"' in choice.text
    hidden = dict(HIDDEN.findall(choice.text))
    answer = person.browser.post(
        "/partner/register",
        {
            "csrf_token": csrf_token(choice.text),
            "payload": unescape(hidden["payload"]),
            "mac": unescape(hidden["mac"]),
        },
        allow_redirects=False,
    )
    assert answer.status_code == 302, answer.text[:2000]
    assert answer.headers["location"].startswith(rp_site.realm), answer.headers["location"]
    response = rp.complete(answer.headers["location"])
    assert response.status == consumer.SUCCESS, getattr(response, "message", response)


@pytest.mark.parametrize("elsewhere", OFF_SITE)
def test_a_way_back_to_another_host_is_ignored(node: NodeProcess, elsewhere: str) -> None:
    """
    C{next} naming another host (absolute, protocol-relative, or a
    backslash a browser reads as a slash) is carried by no set-up page and
    followed by none: the person stays on Clickpass's own pages.
    """
    person = MfaPerson(node.url, f"e{secrets.token_hex(4)}@example.com")
    person.sign_up()
    asked = "?next=" + quote(elsewhere, safe="")

    manage = person.get("/account/mfa" + asked)
    assert manage.status_code == 200, manage.text[:2000]
    assert 'id="second-factor-required"' not in manage.text
    assert "evil.example" not in manage.text
    keys_page = person.get("/account/mfa/keys/new?kind=key&next=" + quote(elsewhere, safe=""))
    assert keys_page.status_code == 200 and "evil.example" not in keys_page.text

    begun = person.browser.post(
        "/account/mfa/totp/begin",
        {"next": elsewhere, "csrf_token": csrf_token(manage.text)},
        allow_redirects=False,
    )
    assert begun.status_code == 303 and begun.headers["location"] == "/account/mfa/totp"
    setup = person.get("/account/mfa/totp" + asked)
    assert setup.status_code == 200 and "evil.example" not in setup.text
    found = SECRET.search(setup.text)
    assert found is not None, setup.text[:2000]
    person.secret = found.group(1).replace(" ", "")
    codes = person.browser.post(
        "/account/mfa/totp/confirm",
        {"code": person.app_code(), "next": elsewhere, "csrf_token": csrf_token(setup.text)},
        allow_redirects=False,
    )
    assert codes.status_code == 200 and len(RECOVERY.findall(codes.text)) == 10
    assert "evil.example" not in codes.text and 'id="codes-saved"' not in codes.text
    assert '<a href="/account/mfa">Done</a>' in codes.text

    # Posted by hand anyway, it goes to the factors' page, not off the site.
    onward = person.browser.post(
        "/account/mfa/continue",
        {"next": elsewhere, "csrf_token": csrf_token(codes.text)},
        allow_redirects=False,
    )
    assert onward.status_code == 303 and onward.headers["location"] == "/account/mfa"

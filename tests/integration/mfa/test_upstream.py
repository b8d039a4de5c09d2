"""
A sign-in through an upstream OpenID Connect provider (oidc-provider, a
real one, over TLS) is a first factor only: a person who set up an
authenticator app is asked for its code after it, as after a password.
"""

from __future__ import annotations

import re
import time

import pyotp
import pytest

from tests.integration.mfa.person import SECRET
from tests.integration.upstream.conftest import UpstreamSetup, test_ca, upstream_setup
from tests.integration.upstream.test_oidc_provider import _browser, start_signin, through_provider
from tests.support.browser import csrf_token

pytestmark = pytest.mark.integration

__all__ = ["test_ca", "upstream_setup"]  # the fixtures this module uses


def test_provider_sign_in_then_the_code(upstream_setup: UpstreamSetup) -> None:
    """
    Someone who signed up through the provider sets up an app; signing in
    through the provider again stops at the code page with no session; a
    wrong code is refused; the app's code lets them in.
    """
    node = upstream_setup.node
    browser = _browser(upstream_setup)
    page = through_provider(browser, start_signin(browser), "erin")
    assert page.url == node.url + "account"
    manage = browser.get("/account/mfa")
    begun = browser.post("/account/mfa/totp/begin", {"csrf_token": csrf_token(manage.text)})
    found = SECRET.search(begun.text)
    assert found is not None, begun.text[:2000]
    totp = pyotp.TOTP(found.group(1).replace(" ", ""))
    step = int(time.time() // 30)
    done = browser.post(
        "/account/mfa/totp/confirm",
        {"code": totp.at(step * 30), "csrf_token": csrf_token(begun.text)},
    )
    assert done.text.count("<li><code>") == 10, done.text[:2000]

    fresh = _browser(upstream_setup)
    page = through_provider(fresh, start_signin(fresh), "erin")
    assert page.url.startswith(node.url + "signin/code?next="), page.url
    assert fresh.get("/account", allow_redirects=False).status_code == 303
    token = csrf_token(page.text)
    wrong = fresh.post("/signin/code", {"code": "12345x", "next": "/account", "csrf_token": token})
    assert wrong.status_code == 401
    right = fresh.post(
        "/signin/code",
        {"code": totp.at((step + 1) * 30), "next": "/account", "csrf_token": token},
        allow_redirects=False,
    )
    assert right.status_code == 303 and right.headers["location"] == "/account"
    assert re.search("erin@example.test", fresh.get("/account").text)

"""
Step-up through an upstream provider, on a real node (SQLite and MariaDB)
and the real oidc-provider over TLS: an account that signs in only through
a provider, whose sign-in is older than the step-up window, confirms it is
them by signing in again at the provider (which is asked to make them,
and does), then exports its data. Another identity at the provider, a
provider that does not make the person sign in again (its auth_time is
stale), and a person with a second factor are each refused, nothing
marked fresh. The security log names the provider of an upstream sign-in,
also when a second factor follows it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import pyotp
import pytest
import requests

from tests.integration.mfa.person import RECOVERY, SECRET
from tests.integration.upstream.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    OIDCProvider,
    start_oidc_provider,
    stop_process,
    test_ca,
)
from tests.support.browser import Browser, csrf_token
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, free_port, mariadb_config, write_config
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.integration

__all__ = ["test_ca"]  # the fixture this module uses

# Sign-ins count as fresh for step-up this many seconds (long enough to set
# up an app right after signing up on a busy machine).
WINDOW = 4
FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"', re.IGNORECASE)
ERROR = re.compile(r'<p class="error"[^>]*>([^<]*)</p>')
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


@dataclass
class ReauthSetup:
    node: NodeProcess
    ca: TestCA
    # "testop" makes a person sign in again when asked; "lazyop" does not.
    providers: dict[str, OIDCProvider]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA
) -> Iterator[ReauthSetup]:
    """A node signing in through two oidc-providers, with a short step-up window."""
    tmp: Path = tmp_path_factory.mktemp("reauth")
    port = free_port()
    providers: dict[str, OIDCProvider] = {}
    node: NodeProcess | None = None
    server: MariaDBServer | None = None
    database = ""
    try:
        for name in ("testop", "lazyop"):
            providers[name] = start_oidc_provider(
                tmp,
                test_ca,
                f"http://127.0.0.1:{port}/upstream/{name}/callback",
                ignore_reauth=name == "lazyop",
            )
        secret_file = tmp / "client-secret"
        secret_file.write_text(CLIENT_SECRET + "\n")
        extra = f"""
[mfa]
step_up_window = {WINDOW}

[upstream]
ca_bundle = "{test_ca.ca_pem}"
timeout = 5.0
clock_skew = 1
"""
        for name, provider in providers.items():
            extra += f"""
[[upstream.provider]]
name = "{name}"
kind = "oidc"
display_name = "{name.capitalize()}"
issuer = "{provider.issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret_file}"
"""
        if request.param == "mysql":
            server = request.getfixturevalue("mariadb_server")
            database = f"{server.database}_reauth{secrets.token_hex(4)}"
            server.create_database(database)
            extra += mariadb_config(tmp, server, database)
        node = NodeProcess(tmp, write_config(tmp, port, extra), port=port)
        node.start()
        yield ReauthSetup(node, test_ca, providers)
    finally:
        if node is not None:
            node.stop()
        for provider in providers.values():
            stop_process(provider.process)
        if server is not None and database:
            server.drop_database(database)


def browser_for(setup: ReauthSetup) -> Browser:
    browser = Browser(setup.node.url)
    browser.session.verify = str(setup.ca.ca_pem)
    browser.session.trust_env = False
    return browser


def form_action(page: requests.Response) -> str:
    found = FORM_ACTION.search(page.text)
    assert found is not None, page.text[:2000]
    return urljoin(page.url, unescape(found.group(1)))


def at_provider(
    browser: Browser, page: requests.Response, login: str
) -> tuple[requests.Response, bool]:
    """
    Log in and consent at oidc-provider's pages as often as it asks; the
    page it ends on, and whether it asked the person to log in.
    """
    asked = False
    for _ in range(6):
        if 'name="login"' in page.text:
            asked = True
            page = browser.session.post(
                form_action(page),
                data={"prompt": "login", "login": login, "password": "anything"},
                timeout=30,
            )
        elif 'name="prompt" value="consent"' in page.text:
            page = browser.session.post(form_action(page), data={"prompt": "consent"}, timeout=30)
        elif 'name="logout" value="yes"' in page.text:
            # Another account than the provider's session: it ends that
            # session first, by a form its page submits with a script.
            fields = {k: unescape(v) for k, v in HIDDEN.findall(page.text)}
            page = browser.session.post(form_action(page), data=fields, timeout=30)
        else:
            return page, asked
    raise AssertionError("the provider kept asking:\n" + page.text[:2000])


def sign_up_through(setup: ReauthSetup, provider: str, login: str) -> Browser:
    """A new account made by signing in through C{provider} as C{login}; signed in."""
    browser = browser_for(setup)
    page = browser.get("/signin")
    started = browser.post(
        f"/upstream/{provider}/start", {"csrf_token": csrf_token(page.text), "next": "/account"}
    )
    done, _ = at_provider(browser, started, login)
    assert done.url == setup.node.url + "account", (done.url, done.text[:2000])
    assert f"{login}@example.test" in done.text
    return browser


def stale(browser: Browser) -> None:
    """Wait until the sign-in is older than the step-up window."""
    time.sleep(WINDOW + 1.5)
    asked = browser.get("/account/export", allow_redirects=False)
    assert asked.status_code == 303, asked.text[:500]
    assert asked.headers["location"] == "/account/confirm?next=" + quote("/account/export", safe="")


def confirm_through(
    browser: Browser, provider: str, login: str, back: str = "/account/export"
) -> tuple[requests.Response, bool]:
    """Press "Confirm with ..." on the confirm page and sign in at the provider as C{login}."""
    page = browser.get("/account/confirm?next=" + quote(back, safe=""))
    assert page.status_code == 200, page.text[:2000]
    started = browser.post(
        f"/upstream/{provider}/reauth", {"csrf_token": csrf_token(page.text), "next": back}
    )
    return at_provider(browser, started, login)


def export(browser: Browser) -> dict[str, Any]:
    answer = browser.get("/account/export", allow_redirects=False)
    assert answer.status_code == 200, (answer.status_code, answer.headers, answer.text[:500])
    found: dict[str, Any] = json.loads(answer.text)
    return found


def sign_ins(data: dict[str, Any]) -> list[str]:
    return [e["detail"] for e in data["security_events"] if e["kind"] == "signin"]


def refusals(data: dict[str, Any]) -> list[str]:
    return [e["detail"] for e in data["security_events"] if e["kind"] == "reauth_refused"]


def test_an_upstream_only_account_confirms_through_its_provider(setup: ReauthSetup) -> None:
    """
    Past the window, the confirm page of an account with no password offers
    its provider and no password field; the provider is made to ask for a
    sign-in again, and on return the export opens, the session fresh. The
    security log names the provider of the sign-in, never a password.
    """
    login = f"r{secrets.token_hex(4)}"
    browser = sign_up_through(setup, "testop", login)
    stale(browser)
    page = browser.get("/account/confirm?next=%2Faccount%2Fexport")
    assert 'action="/upstream/testop/reauth"' in page.text, page.text[:3000]
    assert "Confirm with Testop" in page.text
    assert 'name="password"' not in page.text
    done, asked = confirm_through(browser, "testop", login)
    assert asked, "the provider did not ask the person to sign in again"
    assert done.status_code == 200 and done.url == setup.node.url + "account/export", done.url
    data = json.loads(done.text)
    assert data["account"]["email"] == f"{login}@example.test"
    assert sign_ins(data) == ["testop"]
    assert refusals(data) == []
    # Fresh now: the delete page opens without asking again, and the address
    # form asks for no password the account does not have; the new address
    # is mailed its link.
    assert browser.get("/account/delete", allow_redirects=False).status_code == 200
    form = browser.get("/account/email", allow_redirects=False)
    assert form.status_code == 200 and 'name="current_password"' not in form.text
    new = f"n{secrets.token_hex(4)}@example.org"
    sent = browser.post("/account/email", {"email": new, "csrf_token": csrf_token(form.text)})
    assert sent.ok and 'id="email-sent"' in sent.text, ERROR.findall(sent.text)
    assert new in sent.text


def test_an_upstream_only_account_changes_its_address_after_confirming(
    setup: ReauthSetup,
) -> None:
    """
    The address form of an account with no password asks for step-up once
    the sign-in is stale (a form posted then changes nothing); through the
    provider it opens, and the change is asked for with no password.
    """
    login = f"e{secrets.token_hex(4)}"
    browser = sign_up_through(setup, "testop", login)
    stale(browser)
    back = "/account/confirm?next=" + quote("/account/email", safe="")
    asked = browser.get("/account/email", allow_redirects=False)
    assert asked.status_code == 303 and asked.headers["location"] == back
    page = browser.get("/account")
    refused = browser.post(
        "/account/email",
        {"email": f"z{secrets.token_hex(4)}@example.org", "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert refused.status_code == 303 and refused.headers["location"] == back
    done, _ = confirm_through(browser, "testop", login, "/account/email")
    assert done.url == setup.node.url + "account/email", done.url
    new = f"n{secrets.token_hex(4)}@example.org"
    sent = browser.post("/account/email", {"email": new, "csrf_token": csrf_token(done.text)})
    assert sent.ok and 'id="email-sent"' in sent.text, ERROR.findall(sent.text)
    data = export(browser)
    assert [
        e["detail"] for e in data["security_events"] if e["kind"] == "email_change_requested"
    ] == [new]


def test_another_identity_at_the_provider_is_refused(setup: ReauthSetup) -> None:
    """
    Signing in at the provider as someone else is refused with one line,
    logged for the owner, and marks nothing fresh: the export still asks.
    """
    login = f"o{secrets.token_hex(4)}"
    browser = sign_up_through(setup, "testop", login)
    stale(browser)
    done, asked = confirm_through(browser, "testop", f"x{secrets.token_hex(4)}")
    assert asked
    assert done.status_code == 403, done.text[:2000]
    assert "That Testop account is not the one linked to your Clickpass account" in done.text
    assert browser.get("/account/export", allow_redirects=False).status_code == 303
    # Confirming as the right person then works, and the refusal is in the log.
    done, _ = confirm_through(browser, "testop", login)
    assert done.url == setup.node.url + "account/export", done.url
    data = json.loads(done.text)
    assert refusals(data) == ["Testop: an account not linked to yours"]
    assert [i["provider"] for i in data["upstream_identities"]] == ["testop"]


def test_a_provider_that_does_not_ask_again_is_refused(setup: ReauthSetup) -> None:
    """
    A provider that ignores prompt=login and max_age signs the person in
    from its session without asking: its auth_time is older than the
    re-authentication, which is refused and logged; nothing is fresh.
    """
    login = f"s{secrets.token_hex(4)}"
    browser = sign_up_through(setup, "lazyop", login)
    stale(browser)
    done, asked = confirm_through(browser, "lazyop", login)
    assert not asked, "this provider was meant not to ask again"
    assert done.status_code == 403, done.text[:2000]
    assert "Lazyop did not ask you to sign in again" in done.text
    assert browser.get("/account/export", allow_redirects=False).status_code == 303


def test_a_person_with_a_second_factor_must_give_it(setup: ReauthSetup) -> None:
    """
    Once an app is set up, the confirm page asks for its code and offers no
    provider; the provider's step-up is refused before the provider; the
    code works. A later sign-in through the provider and a (recovery) code
    is logged under the provider's name.
    """
    login = f"m{secrets.token_hex(4)}"
    browser = sign_up_through(setup, "testop", login)
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
    recovery_codes = RECOVERY.findall(done.text)
    assert len(recovery_codes) == 10, done.text[:2000]
    stale(browser)
    page = browser.get("/account/confirm?next=%2Faccount%2Fexport")
    assert 'name="code"' in page.text
    assert "/upstream/testop/reauth" not in page.text
    refused = browser.post(
        "/upstream/testop/reauth",
        {"csrf_token": csrf_token(page.text), "next": "/account/export"},
        allow_redirects=False,
    )
    assert refused.status_code == 403, refused.text[:2000]
    assert "confirm it is you with it, not with a sign-in provider" in refused.text
    assert browser.get("/account/export", allow_redirects=False).status_code == 303
    given = browser.post(
        "/account/confirm",
        {"code": totp.at((step + 1) * 30), "next": "/account/export",
         "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )  # fmt: skip
    assert given.status_code == 303 and given.headers["location"] == "/account/export"

    again = browser_for(setup)
    signin = again.get("/signin")
    started = again.post(
        "/upstream/testop/start", {"csrf_token": csrf_token(signin.text), "next": "/account"}
    )
    code_page, _ = at_provider(again, started, login)
    assert code_page.url.startswith(setup.node.url + "signin/code?next="), code_page.url
    signed = again.post(
        "/signin/code",
        {"code": recovery_codes[0], "next": "/account/export",
         "csrf_token": csrf_token(code_page.text)},
        allow_redirects=False,
    )  # fmt: skip
    assert signed.status_code == 303, ERROR.findall(signed.text)
    assert sign_ins(export(again)) == ["testop", "testop"]

"""
The OpenID Connect consent page through a real node, on SQLite and
MariaDB: the person may untick a value (it is then in neither UserInfo
nor the token response's scope, and the remembered approval keeps it
back next time), may ask to be asked every time, and sees the client
named by its partner site's verified name, or by its host with the
name its owner typed marked as unverified (on the sign-in page too).
"""

from __future__ import annotations

import html
import re
import secrets
from urllib.parse import urlencode

import pytest
import requests

from tests.integration.oidc.harness import PASSWORD, Client, Person, Provider, query_of
from tests.integration.oidc.test_browser import Callback
from tests.support.chromium import By, WebDriver, wait_for

pytestmark = pytest.mark.integration

HEADING = re.compile(r'<h1 id="consent-heading">([^<]*)</h1>')


def _tokens(provider: Provider, client: Client, back: str) -> dict[str, str]:
    response = provider.token(
        client, grant_type="authorization_code", code=query_of(back)["code"],
        redirect_uri=client.redirect_uri,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def _userinfo(provider: Provider, access_token: str) -> dict[str, object]:
    response = requests.get(
        provider.url + "oidc/userinfo",
        headers={"Authorization": "Bearer " + access_token},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    info: dict[str, object] = response.json()
    return info


def _approval(provider: Provider, person: Person) -> tuple[str, str, int]:
    def read(tx: object) -> tuple[str, str, int]:
        row = tx.fetchone(  # type: ignore[attr-defined]
            "SELECT a.fields, a.declined, a.always_ask FROM approvals a"
            " JOIN accounts p ON p.id = a.account_id WHERE p.email = ?",
            person.email,
        )
        return str(row[0]), str(row[1]), int(row[2])

    found: tuple[str, str, int] = provider.run(read)
    return found


def test_an_unticked_address_is_not_released_now_or_next_time(provider: Provider) -> None:
    client = provider.client("http://127.0.0.1:9/cb")
    person = Person(provider)
    url = provider.authorize_url(client, state="s", nonce="n", scope="openid email")
    first = _tokens(provider, client, person.authorize(url, share=[]))
    info = _userinfo(provider, first["access_token"])
    assert info == {"sub": info["sub"]}
    # The client is told it did not get the email scope.
    assert first["scope"] == "openid"
    assert _approval(provider, person) == ("", "email", 0)

    # Remembered: no consent page, and still nothing but the subject.
    again = person.open(url)
    assert again.status_code == 302, again.text[:2000]
    second = _tokens(provider, client, again.headers["location"])
    assert _userinfo(provider, second["access_token"]) == {"sub": info["sub"]}

    # Asked again (prompt=consent), ticked this time: the address goes.
    page = person.open(url + "&prompt=consent")
    assert 'name="share" value="email" checked' in page.text
    assert "the <code>email</code> scope" in page.text
    third = _tokens(provider, client, person.consent(page).headers["location"])
    assert third["scope"] == "openid email"
    assert _userinfo(provider, third["access_token"])["email"] == person.email
    assert _approval(provider, person) == ("email", "", 0)


def test_always_ask_shows_the_consent_page_every_time(provider: Provider) -> None:
    client = provider.client("http://127.0.0.1:9/cb")
    person = Person(provider)
    url = provider.authorize_url(client, state="s", nonce="n", scope="openid email")
    back = person.authorize(url, always_ask=True)
    assert _userinfo(provider, _tokens(provider, client, back)["access_token"])["email"] == (
        person.email
    )
    assert _approval(provider, person) == ("email", "", 1)
    page = person.open(url)
    assert page.status_code == 200 and 'action="/oidc/decide"' in page.text, page.text[:2000]
    # prompt=none cannot ask: the client hears consent_required.
    refused = person.open(url + "&prompt=none")
    assert refused.status_code == 302
    assert query_of(refused.headers["location"])["error"] == "consent_required"
    # Unticking "always ask" goes back to signing in at once.
    person.consent(page)
    assert _approval(provider, person) == ("email", "", 0)
    assert person.open(url).status_code == 302


def _signin_page(provider: Provider, person: Person, url: str) -> str:
    to_signin = person.open(url)
    assert to_signin.status_code in (302, 303), to_signin.text[:2000]
    page = person.open(provider.url + to_signin.headers["location"].lstrip("/"))
    assert page.status_code == 200, page.text[:2000]
    return page.text


def test_a_verified_site_is_named_on_the_sign_in_and_consent_pages(provider: Provider) -> None:
    site, _key = provider.verified_site_with_key("http://localhost:9/")
    client = provider.client("http://localhost:9/cb", site=site.public_id)
    person = Person(provider)
    url = provider.authorize_url(client, state="s", scope="openid email")
    signin = _signin_page(provider, person, url)
    assert "to continue to <strong>Test Partner</strong>" in signin
    assert '<span class="realm">(localhost)</span>' in signin
    assert "unverified-name" not in signin
    page = person.open(url)
    if page.status_code != 200:
        page = person.open(provider.url + person.sign_in_from(page).headers["location"][1:])
    assert HEADING.findall(page.text) == ["Sign in to Test Partner?"]
    assert "unverified-client" not in page.text


def test_an_unverified_site_is_named_by_its_host(provider: Provider) -> None:
    client = provider.client("http://127.0.0.1:9/cb?from=clickpass")
    person = Person(provider)
    url = provider.authorize_url(client, state="s", scope="openid email")
    signin = _signin_page(provider, person, url)
    assert "to continue to <strong>Test Partner</strong>" in signin
    assert '<span class="realm">(127.0.0.1)</span>' in signin
    assert 'id="unverified-name"' in signin
    # A redirect URI not registered for the client borrows no name.
    other = provider.authorize_url(
        Client(client.client_id, "", "http://127.0.0.1:9/elsewhere", "", False)
    )
    next_url = other[len(provider.url) - 1 :]
    made_up = requests.get(provider.url + "signin?" + urlencode({"next": next_url}), timeout=30)
    assert made_up.status_code == 200, made_up.text[:2000]
    assert "Test Partner" not in made_up.text
    page = person.open(url)
    if page.status_code != 200:
        page = person.open(provider.url + person.sign_in_from(page).headers["location"][1:])
    assert HEADING.findall(page.text) == ["Sign in to 127.0.0.1?"]
    warning = html.unescape(page.text.split('id="unverified-client"', 1)[1].split("</p>", 1)[0])
    assert "Test Partner" in warning and "127.0.0.1" in warning
    # The return address is shown without its query.
    assert '<code id="return-to">http://127.0.0.1:9/cb</code>' in page.text


def test_unticking_in_chromium(provider: Provider, chrome: WebDriver) -> None:
    """
    In a real browser: the address's box starts ticked; unticked, with
    "always ask" ticked, the client gets a code whose UserInfo has no
    address, and the approval keeps both choices.
    """
    callback = Callback()
    try:
        email = f"untick-{secrets.token_hex(4)}@example.com"
        provider.node.ctl(
            "user", "add", email, "--verified", "--password-stdin", input=PASSWORD + "\n"
        )
        client = provider.client(callback.url)
        chrome.delete_all_cookies()
        chrome.get(
            provider.authorize_url(
                client, response_mode="form_post", state="st", scope="openid email",
                login_hint=email,
            )
        )  # fmt: skip
        wait_for(chrome, "input#password", timeout=60).send_keys(PASSWORD)
        chrome.find_element(By.CSS_SELECTOR, "form[action='/signin'] button").click()
        box = wait_for(chrome, "input#share-email")
        assert box.is_selected()
        box.click()
        chrome.find_element(By.CSS_SELECTOR, "input#always-ask").click()
        chrome.find_element(By.CSS_SELECTOR, "button#allow").click()
        wait_for(chrome, "#done")
        assert len(callback.received) == 1
        code = callback.received[0]["code"]
        response = provider.token(
            client, grant_type="authorization_code", code=code, redirect_uri=callback.url
        )
        assert response.status_code == 200, response.text
        info = _userinfo(provider, response.json()["access_token"])
        assert "email" not in info, info

        def approval(tx: object) -> tuple[str, str, int]:
            row = tx.fetchone(  # type: ignore[attr-defined]
                "SELECT a.fields, a.declined, a.always_ask FROM approvals a"
                " JOIN accounts p ON p.id = a.account_id WHERE p.email = ?",
                email,
            )
            return str(row[0]), str(row[1]), int(row[2])

        assert provider.run(approval) == ("", "email", 1)
    finally:
        callback.stop()

"""
The OpenID Connect pages a person sees, in a real Chromium at a desktop's
and a phone's size, in every language Clickpass speaks (a browser asking
for it): the sign-in page names the client the person continues to (the
name its unverified site typed, marked so, and its redirect URI's host),
the consent page's heading names the host and warns of the unproven name,
RP-initiated logout asks first and then says it is done, and a request
Clickpass refuses gets a page saying why. Every page is in the language
asked for, scrolls no wider than the screen, has no WCAG 2.x A/AA
violation axe-core finds, and (in English) keeps a visible focus ring in
document order (tests/integration/node/a11y.py).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.integration.node.a11y import PageChecker, checker
from tests.integration.oidc.harness import PASSWORD, Provider
from tests.integration.oidc.test_browser import Callback
from tests.support.chromium import By, WebDriver, click, wait_for
from tests.support.languages import (
    LANGUAGES,
    accept_language,
    other_languages_on_sqlite,
    translated,
)

pytestmark = pytest.mark.integration


@other_languages_on_sqlite("provider")
@pytest.mark.parametrize("language", LANGUAGES)
def test_sign_in_and_consent_pages(
    request: pytest.FixtureRequest,
    provider: Provider,
    chrome: WebDriver,
    screenshots: Path,
    language: str,
) -> None:
    callback = Callback()
    try:
        chrome.delete_all_cookies()
        # The keyboard's walk in English only: focus rings and order do not change with it.
        pages = checker(chrome, screenshots, keyboard=language == "en", language=language)
        with accept_language(chrome, language):
            walk_provider_pages(chrome, provider, callback, pages, language)
        assert not pages.problems, "\n".join(pages.problems)
    finally:
        callback.stop()


def walk_provider_pages(
    driver: WebDriver, provider: Provider, callback: Callback, pages: PageChecker, language: str
) -> None:
    """The provider's pages, in C{language}, checked at both sizes as they come."""

    def _(message: str, **params: str) -> str:
        return translated(language, message, **params)

    def in_language() -> None:
        assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == language

    email = f"axe-{secrets.token_hex(4)}@example.com"
    provider.node.ctl("user", "add", email, "--password-stdin", "--verified", input=PASSWORD + "\n")
    client = provider.client(callback.url)
    driver.get(
        provider.authorize_url(
            client, scope="openid email", state="st", nonce="nn", login_hint=email
        )
    )
    wait_for(driver, "input#email", timeout=60)  # a fresh node's first page
    in_language()
    assert driver.find_element(By.TAG_NAME, "h1").text == _("Sign in to Clickpass")
    # Its site's realm is not verified: the name it typed, marked so, and its host.
    branding = wait_for(driver, "#partner-branding").text
    named = _("to continue to <strong>%(name)s</strong>", name="Test Partner")
    assert f"{named} (127.0.0.1)" in branding, branding
    unverified = _("(a name the site gave itself; Clickpass has not verified it)")
    assert unverified in branding, branding
    pages.check("OpenID Connect sign-in")
    driver.find_element(By.CSS_SELECTOR, "input#password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form[action='/signin'] button").click()
    wait_for(driver, "button[value=allow]")
    heading = wait_for(driver, "#consent-heading").text
    assert heading == _("Sign in to %(site)s?", site="127.0.0.1"), heading
    # The warning says so in the page's language (not in the style sheet's English).
    warning = wait_for(driver, "#unverified-client").text
    assert warning.startswith(_("Warning:") + " ") and "Test Partner" in warning, warning
    assert driver.find_element(By.ID, "share-email").is_selected()
    pages.check("OpenID Connect consent")

    # The client's sign-out with no ID token: Clickpass asks, naming the site (its host).
    driver.get(provider.url + "oidc/logout?" + urlencode({"client_id": client.client_id}))
    assert wait_for(driver, "h1").text == _("Sign out of Clickpass?")
    assert "127.0.0.1" in driver.find_element(By.TAG_NAME, "main").text
    in_language()
    pages.check("OpenID Connect sign-out question")
    click(driver, "form[action='/oidc/logout'] button[value=signout]")
    assert wait_for(driver, "h1").text == _("You are signed out of Clickpass")
    pages.check("OpenID Connect signed out")

    # Refusals: a client Clickpass does not know; an unregistered address to go back to.
    elsewhere = {"client_id": client.client_id, "post_logout_redirect_uri": "https://x.test/"}
    for name, url, message in (
        (
            "OpenID Connect unknown client",
            provider.authorize_url(client, client_id="no-such-client"),
            "The sign-in request names a client that Clickpass does not know.",
        ),
        (
            "OpenID Connect sign-out elsewhere",
            provider.url + "oidc/logout?" + urlencode(elsewhere),
            "The sign-out request asks to send you to an address its site did not register.",
        ),
    ):
        driver.get(url)
        assert wait_for(driver, "h1").text == _("That did not work")
        assert driver.find_element(By.CSS_SELECTOR, "p.error").text == _(message)
        in_language()
        pages.check(name)

"""
The second factors' pages in a real headless Chromium (Debian's chromium
through chromedriver), under the pages' Content-Security-Policy: the QR
code drawn from the server's SVG, the key as text, turning the app on,
and signing in with a code from the app (pyotp, an independent TOTP);
walked in every language Clickpass speaks, each page at a desktop's and a
phone's size with no sideways scrolling and no axe-core violation.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pyotp
import pytest

from tests.integration.mfa.person import PASSWORD, steps_in_window
from tests.integration.node.a11y import PageChecker, walk_checker
from tests.support.chromium import By, WebDriver, submit, wait_for
from tests.support.languages import (
    LANGUAGES,
    accept_language,
    other_languages_on_sqlite,
    translated,
)
from tests.support.mailbox import link_in, maildir_of, wait_for_message
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


def later_code(secret: str, after_step: int) -> tuple[str, int]:
    """A code of the app for a step after C{after_step} that the provider accepts now."""
    while True:
        for step in steps_in_window():
            if step > after_step:
                return pyotp.TOTP(secret).at(step * 30), step
        time.sleep(0.5)


@other_languages_on_sqlite("node")
@pytest.mark.parametrize("language", LANGUAGES)
def test_set_up_and_sign_in_with_the_app(
    request: pytest.FixtureRequest,
    chrome: WebDriver,
    node: NodeProcess,
    screenshots: Path,
    language: str,
) -> None:
    """
    The set-up page shows the QR code (drawn, not blocked) and the key; the
    app's first code turns it on and ten recovery codes are shown; signing
    in again asks for a code after the password, and the app's code lets
    the person in. In a browser asking for C{language}, each page of the
    second factor is in that language, fits both sizes and passes axe.
    """
    driver = chrome
    driver.delete_all_cookies()
    pages = walk_checker(request, driver, screenshots, language)
    with accept_language(driver, language):
        walk_set_up_and_sign_in(driver, node, pages, language)
    assert not pages.problems, "\n".join(pages.problems)


def walk_set_up_and_sign_in(
    driver: WebDriver, node: NodeProcess, pages: PageChecker, language: str
) -> None:
    """The walk of L{test_set_up_and_sign_in_with_the_app}, in C{language}."""

    def _(message: str) -> str:
        return translated(language, message)

    email = f"c{secrets.token_hex(4)}@example.com"
    driver.get(node.url + "signup")
    submit(
        driver,
        "form[action='/signup']",
        {"email": email, "password": PASSWORD, "password_again": PASSWORD},
    )
    # Sign-up signs nobody in: the mailed link, a sign-in, and confirming do.
    wait_for(driver, "#signup-sent")
    # The first mail to the new address, in the page's language.
    message = wait_for_message(maildir_of(node), email, "")
    driver.get(node.url.rstrip("/") + link_in(message, "verify"))
    submit(driver, "form[action='/signin']", {"email": email, "password": PASSWORD})
    submit(driver, "form[action='/verify']", {})
    driver.get(node.url + "account/mfa")
    assert wait_for(driver, "h1").text == _("Second factor")
    pages.check("second factor, none")
    submit(driver, "form[action='/account/mfa/totp/begin']", {})
    qr = wait_for(driver, "figure.qr svg")
    assert qr.is_displayed() and qr.size["width"] >= 100 and qr.size["height"] >= 100
    assert driver.find_element(By.TAG_NAME, "h1").text == _("Set up an authenticator app")
    pages.check("authenticator set-up")
    secret = driver.find_element(By.ID, "totp-secret").text.replace(" ", "")
    assert len(secret) == 32
    # A wrong code first: the page says so, in its language.
    submit(driver, "form[action='/account/mfa/totp/confirm']", {"code": "000000"})
    refused = (
        "That code is not right, or was used already. Enter the code your app shows "
        "now, or one of your unused recovery codes."
    )
    shown = wait_for(driver, "#form-error").text
    # Translated, not left in English: the two differ in German and Spanish.
    assert shown == _(refused) and (language == "en" or shown != refused), shown
    pages.check("authenticator set-up, wrong code")
    code, used = later_code(secret, 0)
    submit(driver, "form[action='/account/mfa/totp/confirm']", {"code": code})
    codes = driver.find_elements(By.CSS_SELECTOR, "ul.recovery-codes code")
    assert len(codes) == 10
    assert driver.find_element(By.TAG_NAME, "h1").text == _("Your recovery codes")
    pages.check("recovery codes")
    driver.get(node.url + "account")
    submit(driver, "form[action='/signout']", {})
    driver.get(node.url + "signin?next=/account/mfa")
    submit(driver, "form[action='/signin']", {"email": email, "password": PASSWORD})
    assert driver.current_url.startswith(node.url + "signin/code")
    assert driver.find_element(By.TAG_NAME, "h1").text == _("Enter your code")
    pages.check("code after the password")
    code, used = later_code(secret, used)
    submit(driver, "form[action='/signin/code']", {"code": code})
    assert driver.current_url == node.url + "account/mfa"
    assert _("Remove the authenticator app") in driver.page_source
    pages.check("second factor, the app on")

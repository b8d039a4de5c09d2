"""
The second factors' pages in a real headless Chromium (Debian's chromium
through chromedriver), under the pages' Content-Security-Policy: the QR
code drawn from the server's SVG, the key as text, turning the app on,
and signing in with a code from the app (pyotp, an independent TOTP).
"""

from __future__ import annotations

import secrets
import time

import pyotp
import pytest

from tests.integration.mfa.person import PASSWORD, steps_in_window
from tests.support.chromium import By, WebDriver, submit, wait_for
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


def test_set_up_and_sign_in_with_the_app(chrome: WebDriver, node: NodeProcess) -> None:
    """
    The set-up page shows the QR code (drawn, not blocked) and the key; the
    app's first code turns it on and ten recovery codes are shown; signing
    in again asks for a code after the password, and the app's code lets
    the person in.
    """
    driver = chrome
    driver.delete_all_cookies()
    email = f"c{secrets.token_hex(4)}@example.com"
    driver.get(node.url + "signup")
    submit(
        driver,
        "form[action='/signup']",
        {"email": email, "password": PASSWORD, "password_again": PASSWORD},
    )
    # Sign-up signs nobody in: the mailed link, a sign-in, and confirming do.
    wait_for(driver, "#signup-sent")
    message = wait_for_message(maildir_of(node), email, "Confirm your email address")
    driver.get(node.url.rstrip("/") + link_in(message, "verify"))
    submit(driver, "form[action='/signin']", {"email": email, "password": PASSWORD})
    submit(driver, "form[action='/verify']", {})
    driver.get(node.url + "account/mfa")
    submit(driver, "form[action='/account/mfa/totp/begin']", {})
    qr = wait_for(driver, "figure.qr svg")
    assert qr.is_displayed() and qr.size["width"] >= 100 and qr.size["height"] >= 100
    secret = driver.find_element(By.ID, "totp-secret").text.replace(" ", "")
    assert len(secret) == 32
    code, used = later_code(secret, 0)
    submit(driver, "form[action='/account/mfa/totp/confirm']", {"code": code})
    codes = driver.find_elements(By.CSS_SELECTOR, "ul.recovery-codes code")
    assert len(codes) == 10
    driver.get(node.url + "account")
    submit(driver, "form[action='/signout']", {})
    driver.get(node.url + "signin?next=/account/mfa")
    submit(driver, "form[action='/signin']", {"email": email, "password": PASSWORD})
    assert driver.current_url.startswith(node.url + "signin/code")
    code, used = later_code(secret, used)
    submit(driver, "form[action='/signin/code']", {"code": code})
    assert driver.current_url == node.url + "account/mfa"
    assert "Remove the authenticator app" in driver.page_source

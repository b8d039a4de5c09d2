"""
The second factors' pages in a real headless Chromium (Debian's chromium
through chromedriver), under the pages' Content-Security-Policy: the QR
code drawn from the server's SVG, the key as text, turning the app on,
and signing in with a code from the app (pyotp, an independent TOTP).
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyotp
import pytest

from tests.integration.mfa.person import PASSWORD
from tests.support.mailbox import link_in, maildir_of, wait_for_message
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are needed (Debian packages)")
    profile: Path = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str, timeout: float = 20) -> WebElement:
    try:
        return WebDriverWait(driver, timeout).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
        )
    except Exception:
        raise AssertionError(
            f"{css} not found at {driver.current_url}:\n{driver.page_source[:3000]}"
        ) from None


def submit(driver: WebDriver, form: str, fields: dict[str, str]) -> None:
    """Fill C{fields} of the form matching C{form} and press its button."""
    for name, value in fields.items():
        element = driver.find_element(By.CSS_SELECTOR, f"{form} [name='{name}']")
        element.clear()
        element.send_keys(value)
    old = driver.find_element(By.TAG_NAME, "html")
    for attempt in range(3):
        # Chromium may still be settling the page it just loaded: a button
        # found a moment before can "not belong to the document" when
        # clicked. Find it again and retry; a third failure is real.
        try:
            driver.find_element(By.CSS_SELECTOR, f"{form} button").click()
            break
        except WebDriverException:
            if gone(old)(driver):
                break  # the click went through: the next page is loading
            if attempt == 2:
                raise
            time.sleep(0.2)
    WebDriverWait(driver, 20).until(gone(old))


def gone(old: WebElement) -> Callable[[WebDriver], bool]:
    """
    A wait condition: C{old} has left the page. Chromium says so as a stale
    element, or as a node that "does not belong to the document".
    """

    def check(driver: WebDriver) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
        return False

    return check


def later_code(secret: str, after_step: int) -> tuple[str, int]:
    """A code of the app for a step after C{after_step} that the provider accepts now."""
    while True:
        current = int(time.time() // 30)
        for step in (current, current + 1):
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

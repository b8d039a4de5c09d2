"""
The partner flows in a real headless Chromium (Debian's chromium, driven
through chromedriver by Selenium): the example partner site's "Sign in
with Clickpass" button (with the snippet's JavaScript), sign-up at
Clickpass, registration at the partner, a second visit, the connect flow
with an existing partner account, and disconnect from the account pages.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.partners.conftest import PASSWORD, Partner
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver")
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
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
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
        page = driver.page_source
        raise AssertionError(f"{css} not found at {driver.current_url}:\n{page[:3000]}") from None


def type_into(driver: WebDriver, css: str, text: str) -> None:
    element = driver.find_element(By.CSS_SELECTOR, css)
    element.clear()
    element.send_keys(text)


def sign_up_at_clickpass(driver: WebDriver, email: str) -> None:
    """From Clickpass's sign-in page, follow "Create an account" and sign up."""
    wait_for(driver, "form[action='/signin']")
    # The page's own link (it keeps the way back to the partner), not the header's.
    driver.find_element(By.CSS_SELECTOR, "main a[href^='/signup?next=']").click()
    wait_for(driver, "form[action='/signup']")
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    type_into(driver, "#password_again", PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form[action='/signup'] button").click()


def click_clickpass_button(driver: WebDriver, partner: Partner) -> None:
    driver.get(partner.process.url)
    button = wait_for(driver, "#clickpass-login.clickpass-button")  # the snippet ran
    button.click()


def test_register_return_connect_and_disconnect(
    chrome: WebDriver, node: NodeProcess, partner: Partner
) -> None:
    driver = chrome
    # 1. Click the button, sign up at Clickpass, register at the partner.
    click_clickpass_button(driver, partner)
    sign_up_at_clickpass(driver, f"b{secrets.token_hex(4)}@example.com")
    wait_for(driver, "#register-form")
    assert "Continue to Example Partner" in driver.page_source
    type_into(driver, "#field_nickname", "chromey")
    type_into(driver, "#field_fullname", "Chrome Person")
    driver.find_element(By.ID, "register").click()
    assert wait_for(driver, "#current-user").text == "chromey"
    assert "your account was created" in driver.page_source

    # 2. A second visit signs in at once: no Clickpass page in between.
    driver.find_element(By.ID, "signout").click()
    click_clickpass_button(driver, partner)
    assert wait_for(driver, "#current-user").text == "chromey"
    assert driver.current_url.startswith(partner.process.url)

    # 3. Someone else, with an existing partner account: connect it.
    driver.find_element(By.ID, "signout").click()
    driver.get(node.url)
    driver.find_element(By.CSS_SELECTOR, "form[action='/signout'] button").click()
    click_clickpass_button(driver, partner)
    sign_up_at_clickpass(driver, f"c{secrets.token_hex(4)}@example.com")
    wait_for(driver, "#connect").click()
    wait_for(driver, "#connect-signin")
    assert driver.current_url.startswith(partner.process.url + "connect?")
    type_into(driver, "#username", "alice")
    type_into(driver, "#password", "alice-password")
    driver.find_element(By.ID, "connect-signin").click()
    assert wait_for(driver, "#current-user").text == "alice"

    # 4. Disconnect from the account page; the next visit asks again.
    driver.get(node.url + "account")
    wait_for(driver, "#connected-sites").click()
    wait_for(driver, f"#site-{partner.site.public_id}")
    driver.find_element(
        By.CSS_SELECTOR, f"#site-{partner.site.public_id} button[value='no']"
    ).click()
    WebDriverWait(driver, 20).until(
        lambda d: "You have not connected any site yet." in d.page_source
    )
    driver.get(partner.process.url)
    driver.find_element(By.ID, "signout").click()
    click_clickpass_button(driver, partner)
    wait_for(driver, "#register-form")

"""
The partner console in a real headless Chromium, at 1280x800 and on a
390x844 phone: no console page is wider than the window (wide tables
scroll inside their own box), and the copy button puts a new API key on
the clipboard. Screenshots of every page at both sizes are kept under the
test's temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.partners.conftest import Partner
from tests.integration.partners.flows import Person
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

# The Chromium fixture and helpers of the partner browser test, shared.
test_browser = pytest.importorskip("tests.integration.partners.test_browser")
chrome = test_browser.chrome
wait_for = test_browser.wait_for
click = test_browser.click
type_into = test_browser.type_into

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

SIZES = ((1280, 800), (390, 844))
# A label with no place to break: the keys table cannot fit a phone.
LONG_LABEL = "production-eu-west-" + "x" * 81


def fits(driver: WebDriver, width: int, height: int, shot: Path) -> None:
    """Resize, keep a screenshot, and check the document is no wider than the window."""
    driver.set_window_size(width, height)
    driver.save_screenshot(str(shot))
    inner, scroll = driver.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth]"
    )
    assert inner <= width
    assert scroll <= inner, (
        f"{driver.current_url} is {scroll} px wide in a {inner} px window (see {shot})"
    )


def test_console_pages_fit_desktop_and_phone(
    chrome: WebDriver, node: NodeProcess, partner: Partner, tmp_path: Path
) -> None:
    driver = chrome
    site_path = f"partners/{partner.site.public_id}"
    # Events for the events table: people who sign up at the partner.
    for nickname in ("wide1", "wide2"):
        person = Person(node, partner.process.url)
        person.choose(
            person.sign_up_from(person.start()), "register", email=person.email, nickname=nickname
        )
    # Chromium signs in as the site's admin with the admin's own cookies.
    driver.get(node.url + "healthz")
    for cookie in partner.site.admin.session.cookies:
        driver.add_cookie({"name": cookie.name, "value": cookie.value or "", "path": "/"})
    driver.execute_cdp_cmd(
        "Browser.grantPermissions",
        {
            "origin": node.url.rstrip("/"),
            "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
        },
    )

    # A new key, created in the browser: shown once, with a working copy button.
    driver.set_window_size(*SIZES[1])
    driver.get(node.url + site_path)
    type_into(driver, "#label", LONG_LABEL)
    click(driver, driver.find_element(By.ID, "create-key"))
    key = wait_for(driver, "#new-key").text
    assert key.startswith("cpk_")
    copy = driver.find_element(By.CSS_SELECTOR, "button.copy[data-copy='new-key']")
    assert copy.is_displayed()
    copy.click()
    copied = driver.execute_async_script(
        "const done = arguments[0];"
        "navigator.clipboard.readText().then(done, e => done('refused: ' + e));"
    )
    assert copied == key
    assert copy.text == "Copied"
    for width, height in SIZES:
        fits(driver, width, height, tmp_path / f"new-key-{width}x{height}.png")
    # On the phone, the keys table is wider than its box: it scrolls in there.
    driver.set_window_size(*SIZES[1])
    table, box = driver.execute_script(
        "const t = document.getElementById('keys-table');"
        "return [t.scrollWidth, t.parentElement.clientWidth]"
    )
    assert table > box
    driver.get(node.url + site_path)
    assert not driver.find_elements(By.ID, "new-key")
    assert driver.find_elements(By.ID, "events-table")

    pages = {
        "console": "partners",
        "site": site_path,
        "delete": site_path + "/delete",
        "new-site": "partners/new",
    }
    for width, height in SIZES:
        for name, path in pages.items():
            driver.get(node.url + path)
            wait_for(driver, "main h1")
            fits(driver, width, height, tmp_path / f"{name}-{width}x{height}.png")
            for table in driver.find_elements(By.CSS_SELECTOR, ".table-wrap table"):
                driver.execute_script("arguments[0].scrollIntoView()", table)
                shot = tmp_path / f"{name}-{table.get_attribute('id')}-{width}x{height}.png"
                driver.save_screenshot(str(shot))

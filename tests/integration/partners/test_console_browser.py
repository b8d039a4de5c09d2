"""
The partner console in a real headless Chromium, at 1280x800 and on a
390x844 phone: no console page scrolls sideways (the document is exactly
as wide as the window; wide tables scroll inside their own box), and the
copy button puts a new API key on the clipboard. Every console page is
covered: the list of sites, a site (with its events and keys tables, a
new key, an invitation link, a failed verify), registering a site,
deleting one, accepting an invitation, and the guides it links to.
Screenshots of every page at both sizes are kept under
test-artifacts/screenshots/ (the screenshots fixture, tests/conftest.py).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from tests.integration.partners.conftest import PASSWORD, Partner, register_site
from tests.integration.partners.flows import Person
from tests.support.browser import Browser, csrf_token
from tests.support.chromium import By, WebDriver, click, type_into, wait_for
from tests.support.node import NodeProcess, free_port

pytestmark = pytest.mark.integration

SIZES = ((1280, 800), (390, 844))
# A label with no place to break: the keys table cannot fit a phone.
LONG_LABEL = "production-eu-west-" + "x" * 81
INVITATION_URL = re.compile(r'id="invitation-url">([^<]+)<')


def fits(driver: WebDriver, width: int, height: int, shot: Path) -> None:
    """
    Resize, keep a screenshot, and check that the page does not scroll
    sideways: the document is no wider than its window.
    """
    driver.set_window_size(width, height)
    driver.save_screenshot(str(shot))
    overflow = driver.execute_script(
        "const d = document.documentElement; return d.scrollWidth - d.clientWidth"
    )
    assert overflow == 0, (
        f"{driver.current_url} scrolls {overflow} px sideways at {width}x{height} (see {shot})"
    )


def check_page(driver: WebDriver, url: str, name: str, screenshots: Path) -> None:
    """Open C{url} and check it at both sizes, keeping screenshots of its tables too."""
    for width, height in SIZES:
        driver.set_window_size(width, height)
        driver.get(url)
        wait_for(driver, "main h1")
        fits(driver, width, height, screenshots / f"{name}-{width}x{height}.png")
        for table in driver.find_elements(By.CSS_SELECTOR, ".table-wrap table"):
            driver.execute_script("arguments[0].scrollIntoView()", table)
            label = table.get_attribute("id") or "table"
            shot = screenshots / f"{name}-{label}-{width}x{height}.png"
            driver.save_screenshot(str(shot))


def use_session(driver: WebDriver, node: NodeProcess, who: Browser) -> None:
    """Chromium continues as C{who}, with its cookies."""
    driver.get(node.url + "healthz")
    driver.delete_all_cookies()
    for cookie in who.session.cookies:
        driver.add_cookie({"name": cookie.name, "value": cookie.value or "", "path": "/"})


def test_console_pages_fit_desktop_and_phone(
    chrome: WebDriver, node: NodeProcess, partner: Partner, screenshots: Path
) -> None:
    driver = chrome
    admin = partner.site.admin
    site_path = f"partners/{partner.site.public_id}"
    # Events for the events table: people who sign up at the partner.
    for nickname in ("wide1", "wide2"):
        person = Person(node, partner.process.url)
        person.choose(
            person.sign_up_from(person.start()), "register", email=person.email, nickname=nickname
        )
    use_session(driver, node, admin)
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
        fits(driver, width, height, screenshots / f"new-key-{width}x{height}.png")
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

    # An invitation link, shown once on the page after it is created.
    invitee_email = f"invitee-{secrets.token_hex(4)}@example.com"
    type_into(driver, "#admin_email", invitee_email)
    click(driver, driver.find_element(By.ID, "invite-admin"))
    invitation_url = wait_for(driver, "#invitation-url").text
    for width, height in SIZES:
        fits(driver, width, height, screenshots / f"invitation-link-{width}x{height}.png")

    # A site whose verify fails: its error, shown once.
    unverified = register_site(
        node, f"http://127.0.0.9:{free_port()}/", name="Silent Shop", admin=admin
    )
    unverified_path = f"partners/{unverified.public_id}"
    driver.get(node.url + unverified_path)
    click(driver, driver.find_element(By.ID, "verify"))
    assert "could not verify" in wait_for(driver, "#verify-error").text
    for width, height in SIZES:
        fits(driver, width, height, screenshots / f"verify-failed-{width}x{height}.png")

    pages = {
        "console": "partners",
        "site": site_path,
        "unverified-site": unverified_path,
        "delete": site_path + "/delete",
        "new-site": "partners/new",
        "guide": "docs/partners",
        "api-guide": "docs/partners/api",
    }
    for name, path in pages.items():
        check_page(driver, node.url + path, name, screenshots)

    # The invited person's page, in their own session.
    invitee = Browser(node.url)
    assert invitee.sign_up(invitee_email, PASSWORD).ok
    use_session(driver, node, invitee)
    check_page(driver, invitation_url, "invitation", screenshots)
    assert driver.find_elements(By.CSS_SELECTOR, "form[action^='/partners/invitations/']")
    # The invitation is still there to accept: nothing above used it.
    page = invitee.get(invitation_url)
    assert "Accept" in page.text and csrf_token(page.text)

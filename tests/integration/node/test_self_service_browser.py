"""
The account controls in a real headless Chromium: the session list names
this browser, "Sign out everywhere else" ends a session opened elsewhere,
and deleting the account with the password re-entered signs this browser
out and frees the address.
"""

from __future__ import annotations

import pytest

from tests.integration.node.test_self_service import SAFARI, browser, signed_in
from tests.support.chromium import By, WebDriver, click, type_into, wait_for
from tests.support.mailbox import link_in, maildir_of, wait_for_message
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


PASSWORD = "correct horse battery"


def test_sessions_and_deletion_in_chromium(chrome: WebDriver, node: NodeProcess) -> None:
    driver = chrome
    driver.get(node.url + "signup")
    wait_for(driver, "form[action='/signup']")
    type_into(driver, "#email", "chromium@example.com")
    type_into(driver, "#password", PASSWORD)
    type_into(driver, "#password_again", PASSWORD)
    click(driver, "form[action='/signup'] button")
    # Sign-up signs nobody in: the mailed link, a sign-in and confirming do.
    wait_for(driver, "#signup-sent")
    message = wait_for_message(maildir_of(node), "chromium@example.com", "Confirm your email")
    driver.get(node.url.rstrip("/") + link_in(message, "verify"))
    wait_for(driver, "form[action='/signin']")
    type_into(driver, "#email", "chromium@example.com")
    type_into(driver, "#password", PASSWORD)
    click(driver, "form[action='/signin'] button")
    click(driver, wait_for(driver, "#confirm"))
    wait_for(driver, "#sessions-heading")

    phone = browser(node, SAFARI)
    phone.sign_in("chromium@example.com", PASSWORD)
    driver.get(node.url + "account")
    rows = driver.find_elements(By.CSS_SELECTOR, "table.sessions tbody tr")
    texts = sorted(row.text for row in rows)
    assert len(texts) == 2, texts
    assert any("Chrome on Linux" in t and "(this browser)" in t for t in texts), texts
    assert any("Safari on iOS" in t for t in texts), texts

    click(driver, "#end-other-sessions")
    wait_for(driver, "#sessions-heading")
    assert len(driver.find_elements(By.CSS_SELECTOR, "table.sessions tbody tr")) == 1
    assert "Signed out every other session" in driver.page_source
    assert not signed_in(phone)

    click(driver, "#delete-link")
    wait_for(driver, "#delete-account")
    type_into(driver, "#password", "not the password")
    click(driver, "#delete-account")
    assert "That is not your password." in wait_for(driver, "p.error").text
    type_into(driver, "#password", PASSWORD)
    click(driver, "#delete-account")
    assert "Your account is deleted" in wait_for(driver, "h1").text
    driver.get(node.url + "account")
    wait_for(driver, "form[action='/signin']")
    assert browser(node, SAFARI).sign_up("chromium@example.com", PASSWORD).status_code == 200

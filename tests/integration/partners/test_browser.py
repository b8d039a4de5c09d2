"""
The partner flows in a real headless Chromium (Debian's chromium, driven
through chromedriver by Selenium): the example partner site's "Sign in
with Clickpass" button (with the snippet's JavaScript), sign-up at
Clickpass and the mailed verification link back to the same sign-in,
registration at the partner, forgot password -> reset -> signed in,
change email -> confirm -> undo, a second visit, the connect flow
with an existing partner account, and disconnect from the account pages;
and the pages of that flow in every language Clickpass speaks, each at a
desktop's and a phone's size with no sideways scrolling and no axe-core
violation.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.integration.node.a11y import checker
from tests.integration.partners.conftest import PASSWORD, Partner
from tests.support.chromium import (
    By,
    WebDriver,
    click,
    type_into,
    wait_for,
)
from tests.support.languages import LANGUAGES, accept_language, translated
from tests.support.mailbox import link_in, maildir_of, wait_for_message
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


def sign_up_at_clickpass(driver: WebDriver, node: NodeProcess, email: str) -> None:
    """
    From Clickpass's sign-in page, follow "Create an account" and sign up;
    then open the link mailed to the address, sign in when asked and
    confirm the address, which continues to where the sign-up was going.
    """
    wait_for(driver, "form[action='/signin']")
    # The page's own link (it keeps the way back to the partner), not the header's.
    click(driver, "main a[href^='/signup?next=']")
    wait_for(driver, "form[action='/signup']")
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    type_into(driver, "#password_again", PASSWORD)
    click(driver, "form[action='/signup'] button")
    wait_for(driver, "#signup-sent")
    message = wait_for_message(maildir_of(node), email, "Confirm your email address")
    driver.get(node.url.rstrip("/") + link_in(message, "verify"))
    wait_for(driver, "form[action='/signin']")
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    click(driver, "form[action='/signin'] button")
    click(driver, wait_for(driver, "#confirm"))


def click_clickpass_button(driver: WebDriver, partner: Partner) -> None:
    driver.get(partner.process.url)
    button = wait_for(driver, "#clickpass-login.clickpass-button")  # the snippet ran
    click(driver, button)


def test_register_return_connect_and_disconnect(
    chrome: WebDriver, node: NodeProcess, partner: Partner
) -> None:
    driver = chrome
    # 1. Click the button, sign up at Clickpass, register at the partner.
    click_clickpass_button(driver, partner)
    sign_up_at_clickpass(driver, node, f"b{secrets.token_hex(4)}@example.com")
    wait_for(driver, "#register-form")
    assert "Continue to Example Partner" in driver.page_source
    type_into(driver, "#field_nickname", "chromey")
    type_into(driver, "#field_fullname", "Chrome Person")
    click(driver, "#register")
    assert wait_for(driver, "#current-user").text == "chromey"
    assert "your account was created" in driver.page_source

    # 2. A second visit signs in at once: no Clickpass page in between.
    click(driver, "#signout")
    click_clickpass_button(driver, partner)
    assert wait_for(driver, "#current-user").text == "chromey"
    assert driver.current_url.startswith(partner.process.url)

    # 3. Someone else, with an existing partner account: connect it.
    click(driver, "#signout")
    driver.get(node.url)
    click(driver, "form[action='/signout'] button")
    click_clickpass_button(driver, partner)
    sign_up_at_clickpass(driver, node, f"c{secrets.token_hex(4)}@example.com")
    click(driver, wait_for(driver, "#connect"))
    wait_for(driver, "#connect-signin")
    assert driver.current_url.startswith(partner.process.url + "connect?")
    type_into(driver, "#username", "alice")
    type_into(driver, "#password", "alice-password")
    click(driver, "#connect-signin")
    assert wait_for(driver, "#current-user").text == "alice"

    # 4. The connect remembered an approval of the partner's realm: the
    # account page lists the site once (with the connected sites, not again
    # among the approvals), and fits a 390 px phone screen.
    driver.get(node.url + "account")
    site = wait_for(driver, f"#site-{partner.site.public_id}")
    assert partner.site.realm in site.text
    assert not driver.find_elements(By.CSS_SELECTOR, "ul.approvals li")
    width = driver.get_window_size()["width"]
    try:
        driver.set_window_size(390, 844)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow == 0, f"the account page is {overflow} px wider than a 390 px screen"
    finally:
        driver.set_window_size(width, 900)

    # 5. Disconnect from the account page (it asks first, then says it is
    # done); the next visit asks again.
    driver.find_element(By.ID, f"disconnect-{partner.site.public_id}").click()
    click(driver, f"#disconnect-confirm-{partner.site.public_id}")
    assert "Disconnected." in wait_for(driver, "#notice").text
    assert "You have not connected any site yet." in driver.page_source
    driver.get(partner.process.url)
    click(driver, "#signout")
    click_clickpass_button(driver, partner)
    wait_for(driver, "#register-form")


# The pages' language does not depend on the storage: SQLite's node only.
@pytest.mark.parametrize("node", ["sqlite"], indirect=True)
@pytest.mark.parametrize("language", LANGUAGES)
def test_partner_flow_pages_in_each_language(
    chrome: WebDriver, node: NodeProcess, partner: Partner, screenshots: Path, language: str
) -> None:
    """
    A partner's sign-in in a browser asking for C{language}: Clickpass's
    sign-in page naming the partner, the register-or-connect page, and the
    account page with the site connected, asking before it disconnects and
    saying it did, each in that language, fitting both sizes, passing axe.
    """
    driver = chrome
    email = f"l{language}{secrets.token_hex(4)}@example.com"
    node.ctl("user", "add", email, "--password-stdin", "--verified", input=PASSWORD + "\n")
    # Every site's cookies: the partner's session of the previous language's walk too.
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    # The keyboard's walk in English only: focus rings and order do not change with the language.
    pages = checker(driver, screenshots, keyboard=language == "en")
    with accept_language(driver, language):
        click_clickpass_button(driver, partner)
        wait_for(driver, "form[action='/signin']")
        assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == language
        pages.check("sign-in for a partner")
        type_into(driver, "#email", email)
        type_into(driver, "#password", PASSWORD)
        click(driver, "form[action='/signin'] button")
        wait_for(driver, "#register-form")
        assert translated(language, "Continue to %(name)s", name="Example Partner") in (
            driver.page_source
        )
        pages.check("register or connect")
        type_into(driver, "#field_nickname", f"lang-{language}")
        click(driver, "#register")
        assert wait_for(driver, "#current-user").text == f"lang-{language}"

        driver.get(node.url + "account")
        wait_for(driver, f"#site-{partner.site.public_id}")
        pages.check("account with a partner")
        driver.find_element(By.ID, f"disconnect-{partner.site.public_id}").click()
        pages.check("account, disconnecting a partner")
        click(driver, f"#disconnect-confirm-{partner.site.public_id}")
        disconnected = translated(
            language,
            "Disconnected. That site will not sign you in with Clickpass until you "
            "connect it again.",
        )
        assert disconnected in wait_for(driver, "#notice").text
        pages.check("account, partner disconnected")
    assert not pages.problems, "\n".join(pages.problems)


def test_forgot_password_reset_and_sign_in(chrome: WebDriver, node: NodeProcess) -> None:
    """
    "Forgot your password?" on the sign-in page, the mailed link, a new
    password: the person is signed in, and the new password signs in again.
    """
    driver = chrome
    email = f"f{secrets.token_hex(4)}@example.com"
    node.ctl("user", "add", email, "--password-stdin", input="an old forgotten one\n")
    driver.delete_all_cookies()
    driver.get(node.url + "signin")
    click(driver, wait_for(driver, "#forgot"))
    type_into(driver, "#email", email)
    click(driver, "#send-reset")
    wait_for(driver, "#forgot-sent")
    message = wait_for_message(maildir_of(node), email, "Reset your Clickpass password")
    driver.get(node.url.rstrip("/") + link_in(message, "reset"))
    type_into(driver, "#password", PASSWORD)
    type_into(driver, "#password_again", PASSWORD)
    click(driver, "#reset")
    assert wait_for(driver, "#email-state").get_attribute("data-verified") == "yes"
    assert driver.current_url.startswith(node.url + "account")
    click(driver, "form[action='/signout'] button")
    driver.get(node.url + "signin")
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    click(driver, "form[action='/signin'] button")
    assert wait_for(driver, "#email-state") is not None


def test_change_email_then_undo(chrome: WebDriver, node: NodeProcess) -> None:
    """
    Change email from the account page, confirm it with the link mailed to
    the new address, then undo it with the link mailed to the old one:
    the old address is the account's again and the browser is signed out.
    """
    driver = chrome
    old, new = f"o{secrets.token_hex(4)}@example.com", f"n{secrets.token_hex(4)}@example.com"
    node.ctl("user", "add", old, "--password-stdin", "--verified", input=PASSWORD + "\n")
    driver.delete_all_cookies()
    driver.get(node.url + "signin")
    type_into(driver, "#email", old)
    type_into(driver, "#password", PASSWORD)
    click(driver, "form[action='/signin'] button")
    click(driver, wait_for(driver, "a[href='/account/email']"))
    type_into(driver, "#email", new)
    type_into(driver, "#current_password", PASSWORD)
    click(driver, "#change-email")
    wait_for(driver, "#email-sent")
    confirm = wait_for_message(maildir_of(node), new, "Confirm your new email address")
    driver.get(node.url.rstrip("/") + link_in(confirm, "email/confirm"))
    click(driver, wait_for(driver, "#confirm"))
    assert new in wait_for(driver, "#email-state").text
    notice = wait_for_message(maildir_of(node), old, "address was changed")
    driver.get(node.url.rstrip("/") + link_in(notice, "email/revert"))
    click(driver, wait_for(driver, "#revert"))
    assert old in wait_for(driver, "#reverted").text
    driver.get(node.url + "account")
    wait_for(driver, "form[action='/signin']")

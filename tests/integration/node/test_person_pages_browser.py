"""
The person's pages in a real headless Chromium, at 1280x800 and 390x844:
home, sign-up, check-your-email, verify, sign-in (naming the site a
sign-in continues to), the account page, consent for a real relying party
(python3-openid's consumer) with a field left unshared and "always ask",
sign-out, forgot/reset, the footer's pages and error pages, and the
second factors' pages, each walked in every language Clickpass speaks (a
browser asking for it by Accept-Language: German's longer words are the
usual way out of a layout). Every page scrolls no wider than the screen
and has no WCAG 2.x A/AA violation that axe-core finds; a screenshot of
each is kept (the path is printed).
"""

from __future__ import annotations

import email.header
import secrets
import sqlite3
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from openid.consumer import consumer
from openid.extensions import sreg
from pyotp import TOTP
from selenium.webdriver.support.ui import Select

from tests.integration.node.a11y import PageChecker, checker
from tests.integration.openid.harness import PythonRP, RelyingPartySite
from tests.support.chromium import By, WebDriver, WebDriverWait, click, type_into, wait_for
from tests.support.languages import LANGUAGES, accept_language, translated
from tests.support.mailbox import link_in, maildir_of, messages_to
from tests.support.node import NodeProcess, free_port, write_config

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
# The relying party lives on loopback: let relying-party discovery reach it.
OPENID_CONFIG = """
[openid]
allow_private_rp_discovery = true
rp_discovery_timeout = 5.0
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    directory = tmp_path_factory.mktemp("person-pages")
    port = free_port()
    proc = NodeProcess(directory, write_config(directory, port, OPENID_CONFIG), port=port).start()
    yield proc
    proc.stop()


class BrowsableSite(RelyingPartySite):
    """
    A relying party's realm (its XRDS) whose return address a browser can
    land on: a small HTML page rather than the XRDS, which Chromium would
    download instead of showing.
    """

    def __init__(self) -> None:
        super().__init__("127.0.0.1")
        site = self
        xrds_handler = self.server.RequestHandlerClass

        class Handler(xrds_handler):  # type: ignore[valid-type,misc]
            def do_GET(self) -> None:
                if not self.path.startswith("/return"):
                    super().do_GET()
                    return
                body = b"<!doctype html><title>Back at the site</title><h1 id=back>Back</h1>"
                site.landings += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.landings = 0
        self.server.RequestHandlerClass = Handler


@pytest.fixture(scope="module")
def rp_site() -> Iterator[BrowsableSite]:
    site = BrowsableSite()
    site.start()
    try:
        yield site
    finally:
        site.stop()


def rp_for(node: NodeProcess, site: RelyingPartySite) -> PythonRP:
    return PythonRP(node.url, site.realm, site.return_to + "?session=abc123")


def sreg_of(rp: PythonRP, return_url: str) -> dict[str, str]:
    """The relying party's check of the answer the browser brought back, and its SReg fields."""
    response = rp.complete(return_url)
    assert response.status == consumer.SUCCESS, response
    return dict(sreg.SRegResponse.fromSuccessResponse(response) or {})


def begin_with_fields(rp: PythonRP) -> str:
    """A checkid_setup that requires the email and asks for the nickname and full name."""
    request = rp.consumer().begin(rp.op_identifier)
    request.addExtension(sreg.SRegRequest(required=["email"], optional=["nickname", "fullname"]))
    return str(request.redirectURL(rp.realm, rp.return_to))


def sign_up_and_verify(
    driver: WebDriver, node: NodeProcess, pages: PageChecker, email: str, language: str = "en"
) -> None:
    driver.get(node.url)
    wait_for(driver, "h1")
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == language
    pages.check("home signed out")
    driver.get(node.url + "signup")
    wait_for(driver, "form[action='/signup']")
    rule = driver.find_element(By.ID, "password-rule").text
    assert "10" in rule, rule
    # "Show password" (the page's script unhides it) shows both fields, and hides them again.
    toggle = wait_for(driver, "#show-password")
    assert toggle.is_displayed()
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    type_into(driver, "#password_again", PASSWORD)
    toggle.click()
    assert driver.find_element(By.ID, "password").get_attribute("type") == "text"
    assert driver.find_element(By.ID, "password_again").get_attribute("type") == "text"
    pages.check("sign-up")
    toggle.click()
    assert driver.find_element(By.ID, "password").get_attribute("type") == "password"
    assert driver.find_element(By.ID, "password_again").get_attribute("type") == "password"
    click(driver, "form[action='/signup'] button[type=submit]")
    wait_for(driver, "#signup-sent")
    pages.check("check your email")
    # The mail is in the page's language.
    message = _mail_about(
        node, email, translated(language, "Confirm your email address for Clickpass")
    )
    driver.get(node.url.rstrip("/") + link_in(message, "verify"))
    wait_for(driver, "form[action='/signin']")
    pages.check("sign-in")
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    click(driver, "form[action='/signin'] button[type=submit]")
    wait_for(driver, "#confirm")
    pages.check("verify")
    click(driver, "#confirm")
    wait_for(driver, "#sessions-heading")
    pages.check("account")


@pytest.mark.parametrize("language", LANGUAGES)
def test_person_pages_accessible_at_both_sizes(
    chrome: WebDriver, node: NodeProcess, rp_site: BrowsableSite, screenshots: Path, language: str
) -> None:
    driver = chrome
    driver.delete_all_cookies()
    # The keyboard's walk in English only: focus rings and order do not change with the language.
    pages = checker(driver, screenshots, keyboard=language == "en")
    with accept_language(driver, language):
        walk_person_pages(driver, node, rp_site, pages, language)
    assert not pages.problems, "\n".join(pages.problems)


def walk_person_pages(
    driver: WebDriver, node: NodeProcess, rp_site: BrowsableSite, pages: PageChecker, language: str
) -> None:
    """The person's pages, in C{language}, checked at both sizes as they come."""

    def _(message: str, **params: str) -> str:
        return translated(language, message, **params)

    email = f"a11y{secrets.token_hex(4)}@example.com"
    sign_up_and_verify(driver, node, pages, email, language)
    # A name to offer the site (set by an upstream provider's claims in life).
    with sqlite3.connect(node.workdir / "data" / "clickpass.sqlite3") as db:
        db.execute("UPDATE accounts SET display_name = 'Ann A11y' WHERE email = ?", (email,))
    driver.get(node.url)
    pages.check("home signed in")

    # Sign out: the page says it happened.
    click(driver, "header form[action='/signout'] button")
    assert _("You are signed out") in wait_for(driver, "h1").text
    pages.check("signed out")

    # A relying party's request while signed out: the sign-in page names its host.
    rp = rp_for(node, rp_site)
    driver.get(begin_with_fields(rp))
    destination = wait_for(driver, "#destination").text
    assert destination == _("to continue to <strong>%(name)s</strong>", name="127.0.0.1")
    pages.check("sign-in for a site")
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    click(driver, "form[action='/signin'] button[type=submit]")

    # Consent: the heading names the site; the return address shows no query;
    # what the site requires is ticked, what it only asks for is not.
    heading = wait_for(driver, "#consent-heading").text
    assert heading == _("Sign in to %(site)s?", site="127.0.0.1"), heading
    assert driver.find_element(By.ID, "return-to").text == rp_site.return_to
    assert driver.find_element(By.ID, "share-email").is_selected()
    assert not driver.find_element(By.ID, "share-nickname").is_selected()
    assert not driver.find_element(By.ID, "share-fullname").is_selected()
    assert not driver.find_element(By.ID, "always-ask").is_selected()
    pages.check("consent")
    driver.find_element(By.ID, "always-ask").click()
    click(driver, "#allow")
    released = sreg_of(rp, driver.current_url)
    assert released == {"email": email}, released

    # "Always ask": the next sign-in there asks again. Unticking everything,
    # the site gets the identifier and nothing else.
    driver.get(begin_with_fields(rp))
    wait_for(driver, "#consent-heading")
    driver.find_element(By.ID, "share-email").click()
    click(driver, "#allow")
    assert sreg_of(rp, driver.current_url) == {}

    # Remembered without "always ask": the next sign-in comes straight back,
    # still sending nothing the person left unticked.
    landings = rp_site.landings
    driver.get(begin_with_fields(rp))
    WebDriverWait(driver, 20).until(lambda d: rp_site.landings > landings)
    assert sreg_of(rp, driver.current_url) == {}

    # The account page lists the site once; forgetting it asks first, then says so.
    driver.get(node.url + "account")
    approval = wait_for(driver, "ul.approvals li")
    assert rp_site.realm in approval.text, approval.text
    assert _("Shares only your identifier there") in approval.text, approval.text
    approval.find_element(By.CSS_SELECTOR, "summary").click()
    pages.check("account with a site, forgetting it")
    click(driver, approval.find_element(By.CSS_SELECTOR, "button.danger"))
    forgotten = _("Forgotten. That site will ask you again before it signs you in.")
    assert forgotten in wait_for(driver, "#notice").text
    assert _("No site signs you in without asking.") in driver.page_source

    # The account's own pages.
    for path, selector in (
        ("account/password", "form[action='/account/password']"),
        ("account/email", "form[action='/account/email']"),
        ("account/delete", "#delete-account"),
    ):
        driver.get(node.url + path)
        wait_for(driver, selector)
        pages.check(path)

    # The footer's pages, and pages for what went wrong.
    for name in ("privacy", "terms", "help"):
        driver.get(node.url)
        click(driver, f"#footer-{name}")
        wait_for(driver, f"#info-{name}")
        pages.check(f"{name} page")
    driver.get(node.url + "no/such/page")
    assert wait_for(driver, "h1").text == _("Not found")
    pages.check("not found")
    driver.get(node.url + "openid?openid.ns=http://specs.openid.net/auth/2.0&openid.mode=bogus")
    text = wait_for(driver, "p.error").text
    if language == "en":
        assert "not a kind of OpenID request that Clickpass knows" in text, text
    assert text and "mode" not in text.lower(), text
    pages.check("bad openid request")

    # Forgot and reset, signed out.
    driver.get(node.url)
    click(driver, "header form[action='/signout'] button")
    driver.get(node.url + "forgot")
    wait_for(driver, "form[action='/forgot']")
    pages.check("forgot")
    type_into(driver, "#email", email)
    click(driver, "#send-reset")
    wait_for(driver, "h1")
    pages.check("forgot sent")
    message = _mail_about(node, email, _("Reset your Clickpass password"))
    driver.get(node.url.rstrip("/") + link_in(message, "reset"))
    wait_for(driver, "form[action='/reset']")
    pages.check("reset")


def test_keep_me_signed_in_chooses_the_cookie(chrome: WebDriver, node: NodeProcess) -> None:
    """
    Unticked, "Keep me signed in" gives a browser-session cookie (no
    expiry); ticked, one that lasts the configured session lifetime.
    """
    driver = chrome
    email = f"keep{secrets.token_hex(4)}@example.com"
    driver.delete_all_cookies()
    sign_up_and_verify_quietly(driver, node, email)
    for keep in (False, True):
        driver.delete_all_cookies()
        driver.get(node.url + "signin")
        type_into(driver, "#email", email)
        type_into(driver, "#password", PASSWORD)
        if keep:
            driver.find_element(By.ID, "keep").click()
        click(driver, "form[action='/signin'] button[type=submit]")
        wait_for(driver, "#sessions-heading")
        cookie = driver.get_cookie("cp_session")
        assert cookie is not None
        if keep:
            # 14 days by default, give or take the test's own duration.
            lifetime = cookie["expiry"] - int(driver.execute_script("return Date.now() / 1000"))
            assert 14 * 24 * 3600 - 600 < lifetime <= 14 * 24 * 3600, cookie
        else:
            assert "expiry" not in cookie, cookie


def sign_up_and_verify_quietly(driver: WebDriver, node: NodeProcess, email: str) -> None:
    """Sign up with scripts off (the form works without them), verify, sign in."""
    driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        driver.get(node.url + "signup")
        wait_for(driver, "form[action='/signup']")
        # Without its script, "Show password" stays hidden.
        assert not driver.find_element(By.ID, "show-password").is_displayed()
        type_into(driver, "#email", email)
        type_into(driver, "#password", PASSWORD)
        type_into(driver, "#password_again", PASSWORD)
        click(driver, "form[action='/signup'] button[type=submit]")
        wait_for(driver, "#signup-sent")
    finally:
        driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    # The first mail to a new address, in whatever language the page was.
    message = _first_mail(node, email)
    driver.get(node.url.rstrip("/") + link_in(message, "verify"))
    wait_for(driver, "form[action='/signin']")
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    click(driver, "form[action='/signin'] button[type=submit]")
    click(driver, wait_for(driver, "#confirm"))
    wait_for(driver, "#sessions-heading")


@pytest.mark.parametrize("language", LANGUAGES)
def test_second_factor_and_console_pages(
    chrome: WebDriver, node: NodeProcess, screenshots: Path, language: str
) -> None:
    """
    The second factors' pages (set-up, recovery codes, the code asked after
    the password) and the partner console's (list, new site, a site) pass
    the same checks on the shared layout. Signing in without "Keep me signed
    in" through the second step gives a browser-session cookie too.
    """
    driver = chrome
    driver.delete_all_cookies()
    # The keyboard's walk in English only: focus rings and order do not change with the language.
    pages = checker(driver, screenshots, keyboard=language == "en")
    with accept_language(driver, language):
        walk_second_factor_and_console_pages(driver, node, pages)
    assert not pages.problems, "\n".join(pages.problems)


def walk_second_factor_and_console_pages(
    driver: WebDriver, node: NodeProcess, pages: PageChecker
) -> None:
    email = f"mfa{secrets.token_hex(4)}@example.com"
    sign_up_and_verify_quietly(driver, node, email)
    driver.get(node.url + "account/mfa")
    wait_for(driver, "form[action='/account/mfa/totp/begin']")
    pages.check("second factors")
    click(driver, "form[action='/account/mfa/totp/begin'] button")
    wait_for(driver, "figure.qr svg")
    pages.check("authenticator set-up")
    secret = driver.find_element(By.ID, "totp-secret").text.replace(" ", "")
    type_into(driver, "form[action='/account/mfa/totp/confirm'] [name='code']", TOTP(secret).now())
    click(driver, "form[action='/account/mfa/totp/confirm'] button")
    recovery = wait_for(driver, "ul.recovery-codes code").text
    pages.check("recovery codes")

    driver.get(node.url)
    click(driver, "header form[action='/signout'] button")
    driver.get(node.url + "signin")
    type_into(driver, "#email", email)
    type_into(driver, "#password", PASSWORD)
    click(driver, "form[action='/signin'] button[type=submit]")
    wait_for(driver, "form[action='/signin/code']")
    pages.check("code after the password")
    type_into(driver, "form[action='/signin/code'] [name='code']", recovery)
    click(driver, "form[action='/signin/code'] button")
    wait_for(driver, "#sessions-heading")
    cookie = driver.get_cookie("cp_session")
    assert cookie is not None and "expiry" not in cookie, cookie

    driver.get(node.url + "partners")
    wait_for(driver, "h1")
    pages.check("console")
    driver.get(node.url + "partners/new")
    wait_for(driver, "#name")
    pages.check("console new site")
    type_into(driver, "#name", "Axe Shop")
    type_into(driver, "#realm", "https://axe-shop.example/")
    type_into(driver, "#return_to_urls", "https://axe-shop.example/openid/return")
    click(driver, "form[action='/partners/new'] button[type=submit]")
    wait_for(driver, "h1")
    pages.check("console site")


def _decoded_subject(message: Message) -> str:
    return str(email.header.make_header(email.header.decode_header(str(message["Subject"]))))


def _first_mail(node: NodeProcess, address: str, timeout: float = 60.0) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = messages_to(maildir_of(node), address)
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no mail to {address} within {timeout}s")


def _mail_about(node: NodeProcess, address: str, subject: str, timeout: float = 60.0) -> Message:
    """The first mail to C{address} whose (decoded) subject holds C{subject}."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in messages_to(maildir_of(node), address):
            if subject in _decoded_subject(message):
                return message
        time.sleep(0.1)
    raise AssertionError(f"no mail to {address} about {subject!r} within {timeout}s")


def test_language_switcher(chrome: WebDriver, node: NodeProcess, tmp_path: Path) -> None:
    """
    The footer's switcher works without JavaScript, comes back to the page
    it was on, now German, and remembers the choice (the walks above check
    each page in each language).
    """
    driver = chrome
    driver.delete_all_cookies()
    pages = checker(driver, tmp_path)
    driver.get(node.url + "signin")
    wait_for(driver, "#language-form")
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    # The switcher: a plain form, back to the same page, now German.
    Select(driver.find_element(By.ID, "language-choice")).select_by_value("de")
    click(driver, "#language-submit")
    assert wait_for(driver, "h1").text == "Bei Clickpass anmelden"
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "de"
    assert driver.current_url.endswith("/signin")
    chosen = driver.get_cookie("cp_lang")
    assert chosen is not None and chosen["value"] == "de"
    pages.check("de sign-in")
    driver.get(node.url + "help")
    assert wait_for(driver, "html[lang='de'] #info-help")
    assert not pages.problems, "\n".join(pages.problems)


def test_partner_guides_in_each_language(
    chrome: WebDriver, node: NodeProcess, screenshots: Path
) -> None:
    """
    The partner guides Clickpass serves, in each language (their links to
    one another), fit both sizes and pass axe: German's long compound
    words, tables and code blocks that scroll in their own box.
    """
    driver = chrome
    driver.delete_all_cookies()
    pages = checker(driver, screenshots)
    for language in LANGUAGES:
        pages.keyboard = language == "en"
        for path in ("docs/partners", "docs/partners/api"):
            driver.get(f"{node.url}{path}?lang={language}")
            wait_for(driver, f"html[lang='{language}'] article.guide[lang='{language}'] h1")
            pages.check(f"{language} {path}")
    assert not pages.problems, "\n".join(pages.problems)

"""
Passkeys and security keys end to end in a real headless Chromium with
its virtual authenticator (WebDriver's virtual authenticator commands):
the page's script (static/webauthn.js, under the pages'
Content-Security-Policy) calls navigator.credentials, the authenticator
answers, the node checks it with py_webauthn.

WebAuthn needs a secure context and an RP ID that is a domain, so the
node's public URL is http://localhost:PORT/ (a browser's potentially
trustworthy origin), its listener 127.0.0.1.

Adding a security key and a passkey, the second step and step-up with a
key, and the second-factor page listing them are walked in every language
Clickpass speaks, each page at a desktop's and a phone's size with no
sideways scrolling and no axe-core violation.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from openid.consumer import consumer
from openid.extensions.draft import pape5 as pape
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.virtual_authenticator import VirtualAuthenticatorOptions
from selenium.webdriver.support.ui import WebDriverWait

from clickpass.oidc import keys
from tests.integration.mfa.person import PASSWORD
from tests.integration.mfa.relying_party import BrowserRelyingParty
from tests.integration.mfa.test_site_requires_factor import set_required
from tests.integration.node.a11y import PageChecker, walk_checker
from tests.integration.oidc.harness import Provider
from tests.integration.openid.conftest import OPENID_CONFIG
from tests.integration.openid.harness import PythonRP
from tests.integration.partners.conftest import register_site
from tests.support.chromium import By, WebDriver, click, submit, wait_for
from tests.support.languages import (
    LANGUAGES,
    accept_language,
    other_languages_on_sqlite,
    translated,
)
from tests.support.mailbox import link_in, maildir_of, wait_for_message
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, free_port, mariadb_config, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """A node whose public URL is http://localhost:PORT/, on SQLite and on MariaDB."""
    tmp: Path = tmp_path_factory.mktemp("webauthn-node")
    server: MariaDBServer | None = None
    database = None
    extra = OPENID_CONFIG
    if request.param == "mysql":
        server = request.getfixturevalue("mariadb_server")
        database = f"{server.database}_webauthn{secrets.token_hex(4)}"
        server.create_database(database)
        extra += mariadb_config(tmp, server, database)
    port = free_port()
    config = write_config(tmp, port, extra)
    config.write_text(
        config.read_text().replace(
            f'public_url = "http://127.0.0.1:{port}/"', f'public_url = "http://localhost:{port}/"'
        )
    )
    proc = NodeProcess(tmp, config, port=port)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        if server is not None and database is not None:
            server.drop_database(database)


@pytest.fixture(scope="module")
def rp_site() -> Iterator[BrowserRelyingParty]:
    """A relying party's site on loopback for the browser to come back to."""
    site = BrowserRelyingParty()
    try:
        yield site
    finally:
        site.stop()


def base(node: NodeProcess) -> str:
    # The port may have moved if the first one was taken (NodeProcess.start).
    return f"http://localhost:{node.port}/"


@pytest.fixture
def authenticator(chrome: WebDriver) -> Iterator[WebDriver]:
    """A fresh virtual authenticator (CTAP2, built in, passkeys, verifies its user)."""
    chrome.add_virtual_authenticator(
        VirtualAuthenticatorOptions(
            protocol=VirtualAuthenticatorOptions.Protocol.CTAP2,
            transport=VirtualAuthenticatorOptions.Transport.INTERNAL,
            has_resident_key=True,
            has_user_verification=True,
            is_user_verified=True,
        )
    )
    try:
        yield chrome
    finally:
        chrome.remove_virtual_authenticator()


@pytest.fixture
def synced_authenticator(chrome: WebDriver) -> Iterator[WebDriver]:
    """
    A virtual authenticator whose passkeys are synced ones: DevTools'
    WebAuthn domain (WebDriver's commands have no such option) with
    defaultBackupEligibility and defaultBackupState, so every credential it
    makes sets the backup eligible and backed up flags, as a phone's
    passkey kept in a cloud account does.
    """
    chrome.execute_cdp_cmd("WebAuthn.enable", {"enableUI": False})
    added = chrome.execute_cdp_cmd(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "defaultBackupEligibility": True,
                "defaultBackupState": True,
            }
        },
    )
    try:
        yield chrome
    finally:
        chrome.execute_cdp_cmd(
            "WebAuthn.removeVirtualAuthenticator", {"authenticatorId": added["authenticatorId"]}
        )
        chrome.execute_cdp_cmd("WebAuthn.disable", {})


def signed_up(driver: WebDriver, node: NodeProcess) -> str:
    """A new person, signed up, their address confirmed, signed in with their password."""
    url = base(node)
    driver.get(url + "signout-nothing")  # on the node's origin, to clear its cookies
    driver.delete_all_cookies()
    email = f"k{secrets.token_hex(4)}@example.com"
    driver.get(url + "signup")
    submit(
        driver,
        "form[action='/signup']",
        {"email": email, "password": PASSWORD, "password_again": PASSWORD},
    )
    wait_for(driver, "#signup-sent")
    # The first mail to the new address, in the page's language.
    message = wait_for_message(maildir_of(node), email, "")
    driver.get(url.rstrip("/") + link_in(message, "verify"))
    submit(driver, "form[action='/signin']", {"email": email, "password": PASSWORD})
    submit(driver, "form[action='/verify']", {})
    return email


def add_key(
    driver: WebDriver, node: NodeProcess, kind: str, name: str, pages: PageChecker | None = None
) -> None:
    """Add a key of C{kind} named C{name}; C{pages}: check the page that adds it first."""
    driver.get(base(node) + f"account/mfa/keys/new?kind={kind}")
    form = wait_for(driver, "form#key-new")
    WebDriverWait(driver, 10).until(lambda d: form.is_displayed())
    if pages is not None:
        pages.check(f"add a {kind}")
    submit(driver, "form#key-new", {"name": name})


def arrive(driver: WebDriver, url: str, timeout: float = 30) -> None:
    """Wait until the browser is at C{url}; fail with the page it is on instead."""
    try:
        WebDriverWait(driver, timeout).until(lambda d: d.current_url == url)
    except TimeoutException:
        raise AssertionError(
            f"not at {url} but {driver.current_url}:\n{driver.page_source[:3000]}"
        ) from None


def passkey_button_shown(driver: WebDriver) -> bool:
    found = driver.find_elements(By.CSS_SELECTOR, "form#passkey-signin button")
    try:
        return bool(found) and found[0].is_displayed()
    except WebDriverException:
        return False


def sign_out(driver: WebDriver, node: NodeProcess) -> None:
    """
    Sign out, and see it on the page signing out leads to. Not by opening
    a page that needs a session: it would lead to the sign-in page, whose
    autofill request Chromium's virtual authenticator answers at once with
    a passkey, signing the person in again.
    """
    driver.get(base(node) + "account")
    submit(driver, "form[action='/signout']", {})
    assert driver.current_url == base(node) + "signed-out"
    assert not driver.find_elements(By.CSS_SELECTOR, "form[action='/signout']")


def test_register_a_passkey_then_sign_in_with_it_and_no_password(
    authenticator: WebDriver, node: NodeProcess, rp_site: BrowserRelyingParty
) -> None:
    """
    A person adds a passkey (the first factor: ten recovery codes shown);
    the authenticator holds it as a discoverable credential; signed out,
    they sign in with the passkey alone, no address, no password; their
    key shows as used and the operator's listing names it. A partner site
    (python3-openid's consumer) asking PAPE phishing-resistant then gets
    the person's assertion, signed, claiming that policy.
    """
    driver = authenticator
    email = signed_up(driver, node)
    add_key(driver, node, "passkey", "Laptop passkey")
    assert "Your key was added" in driver.page_source, driver.page_source[:2000]
    assert len(driver.find_elements(By.CSS_SELECTOR, "ul.recovery-codes code")) == 10
    held = driver.get_credentials()
    assert len(held) == 1 and held[0].is_resident_credential
    assert held[0].rp_id == "localhost"

    sign_out(driver, node)
    # The email field offers passkeys in the browser's autofill.
    page = requests.get(base(node) + "signin", timeout=30).text
    assert 'autocomplete="username webauthn"' in page
    driver.get(base(node) + "signin?next=/account/mfa")
    signed_in = base(node) + "account/mfa"
    # Chromium offers the passkey to the page's autofill request (the email
    # field says "username webauthn"), and its virtual authenticator may
    # accept it at once; otherwise the button asks.
    WebDriverWait(driver, 20).until(lambda d: d.current_url == signed_in or passkey_button_shown(d))
    if driver.current_url != signed_in:
        # The autofill request may sign in first, taking the button away.
        with contextlib.suppress(WebDriverException):
            click(driver, "form#passkey-signin button")
    arrive(driver, signed_in)
    page = driver.page_source
    assert "Laptop passkey" in page and "last used" in page, page[:3000]
    assert driver.get_credentials()[0].sign_count >= 1

    listed = node.ctl("user", "mfa", email).stdout
    assert "Laptop passkey (passkey" in listed and "used " in listed, listed

    rp = PythonRP(base(node), rp_site.realm, rp_site.return_to)
    asking = rp.consumer().begin(rp.op_identifier)
    asking.addExtension(pape.Request([pape.AUTH_PHISHING_RESISTANT]))
    driver.get(str(asking.redirectURL(rp.realm, rp.return_to)))
    click(driver, "form[action='/openid/decide'] button[value='allow']")
    WebDriverWait(driver, 20).until(lambda d: d.current_url.startswith(rp_site.return_to))
    response = rp.complete(driver.current_url)
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    answer = pape.Response.fromSuccessResponse(response)
    assert answer is not None
    assert pape.AUTH_PHISHING_RESISTANT in answer.auth_policies
    assert pape.AUTH_MULTI_FACTOR_PHYSICAL in answer.auth_policies


@other_languages_on_sqlite("node")
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_security_key_as_the_second_step_after_the_password(
    request: pytest.FixtureRequest,
    authenticator: WebDriver,
    node: NodeProcess,
    rp_site: BrowserRelyingParty,
    screenshots: Path,
    language: str,
) -> None:
    """
    A person adds a security key; signing in again, the password is not
    enough: the second step asks for the key, and the key lets them in.
    Signed in another time with a recovery code instead, a partner site
    asking PAPE phishing-resistant has them confirm with the key first
    (step-up), then receives the policy. Last, they remove the key. In a
    browser asking for C{language}, each of those pages is in that
    language, fits both sizes and passes axe.
    """
    driver = authenticator
    pages = walk_checker(request, driver, screenshots, language)
    with accept_language(driver, language):
        walk_security_key(driver, node, rp_site, pages, language)
    assert not pages.problems, "\n".join(pages.problems)


def walk_security_key(
    driver: WebDriver,
    node: NodeProcess,
    rp_site: BrowserRelyingParty,
    pages: PageChecker,
    language: str,
) -> None:
    """The walk of L{test_a_security_key_as_the_second_step_after_the_password}."""

    def _(message: str) -> str:
        return translated(language, message)

    email = signed_up(driver, node)
    add_key(driver, node, "key", "Blue key", pages)
    assert _("Your key was added.") in driver.page_source, driver.page_source[:2000]
    codes = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "ul.recovery-codes code")]
    assert len(codes) == 10
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == language
    pages.check("recovery codes of a key")

    sign_out(driver, node)
    driver.get(base(node) + "signin?next=/account/mfa")
    submit(driver, "form[action='/signin']", {"email": email, "password": PASSWORD})
    assert driver.current_url.startswith(base(node) + "signin/code"), driver.current_url
    button = wait_for(driver, "form#key-use button")
    WebDriverWait(driver, 10).until(lambda d: button.is_displayed())
    assert button.text == _("Use your security key or passkey")
    assert driver.find_element(By.TAG_NAME, "h1").text == _("Your second factor")
    pages.check("second step with a key")
    click(driver, "form#key-use button")
    arrive(driver, base(node) + "account/mfa")
    assert "Blue key" in driver.page_source
    pages.check("second factor with a key")

    sign_out(driver, node)
    driver.get(base(node) + "signin?next=/account/mfa")
    submit(driver, "form[action='/signin']", {"email": email, "password": PASSWORD})
    submit(driver, "form[action='/signin/code']", {"code": codes[0]})
    arrive(driver, base(node) + "account/mfa")
    rp = PythonRP(base(node), rp_site.realm, rp_site.return_to)
    asking = rp.consumer().begin(rp.op_identifier)
    asking.addExtension(pape.Request([pape.AUTH_PHISHING_RESISTANT]))
    driver.get(str(asking.redirectURL(rp.realm, rp.return_to)))
    assert driver.current_url.startswith(base(node) + "account/confirm"), driver.current_url
    button = wait_for(driver, "form#key-use button")
    WebDriverWait(driver, 10).until(lambda d: button.is_displayed())
    assert driver.find_element(By.TAG_NAME, "h1").text == _("Confirm it is you")
    pages.check("confirm with a key")
    click(driver, "form#key-use button")
    click(driver, "form[action='/openid/decide'] button[value='allow']")
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(rp_site.return_to))
    response = rp.complete(driver.current_url)
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    answer = pape.Response.fromSuccessResponse(response)
    assert answer is not None and pape.AUTH_PHISHING_RESISTANT in answer.auth_policies

    # Just confirmed with the key: fresh enough to remove it.
    driver.get(base(node) + "account/mfa")
    click(driver, "form[action='/account/mfa/keys/remove'] button")
    assert _("That key was removed.") in driver.page_source, driver.page_source[:2000]
    assert "Blue key" not in driver.page_source
    assert _("None yet.") in driver.page_source
    pages.check("second factor, the key removed")


@other_languages_on_sqlite("node")
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_synced_passkey_is_claimed_phishing_resistant_but_never_physical(
    request: pytest.FixtureRequest,
    synced_authenticator: WebDriver,
    node: NodeProcess,
    rp_site: BrowserRelyingParty,
    screenshots: Path,
    language: str,
) -> None:
    """
    A person adds a passkey their authenticator syncs (backup flags set):
    the page lists it as synced. Signed out, they sign in with it and no
    password; a partner site asking PAPE phishing-resistant and
    multi-factor-physical gets an assertion, with no second round of
    step-up, that claims multi-factor and phishing-resistant and not
    multi-factor-physical: the key lives in a cloud account, on no one
    device the person holds. In a browser asking for C{language}, adding
    the passkey and the page listing it are in that language, fit both
    sizes and pass axe.
    """
    driver = synced_authenticator
    pages = walk_checker(request, driver, screenshots, language)
    with accept_language(driver, language):
        signed_up(driver, node)
        add_key(driver, node, "passkey", "Phone passkey", pages)
        assert translated(language, "Your key was added.") in driver.page_source
        driver.get(base(node) + "account/mfa")
        listed = translated(language, "passkey") + " " + translated(language, "(synced)")
        assert f"Phone passkey</strong>: {listed}" in driver.page_source
        pages.check("second factor with a synced passkey")
    assert not pages.problems, "\n".join(pages.problems)

    sign_out(driver, node)
    driver.get(base(node) + "signin?next=/account/mfa")
    signed_in = base(node) + "account/mfa"
    WebDriverWait(driver, 20).until(lambda d: d.current_url == signed_in or passkey_button_shown(d))
    if driver.current_url != signed_in:
        with contextlib.suppress(WebDriverException):
            click(driver, "form#passkey-signin button")
    arrive(driver, signed_in)

    rp = PythonRP(base(node), rp_site.realm, rp_site.return_to)
    asking = rp.consumer().begin(rp.op_identifier)
    asking.addExtension(
        pape.Request([pape.AUTH_PHISHING_RESISTANT, pape.AUTH_MULTI_FACTOR_PHYSICAL])
    )
    driver.get(str(asking.redirectURL(rp.realm, rp.return_to)))
    assert "/account/confirm" not in driver.current_url, driver.current_url
    assert driver.find_elements(By.CSS_SELECTOR, "form[action='/openid/decide']"), (
        driver.current_url + "\n" + driver.page_source[:3000]
    )
    click(driver, "form[action='/openid/decide'] button[value='allow']")
    WebDriverWait(driver, 20).until(lambda d: d.current_url.startswith(rp_site.return_to))
    response = rp.complete(driver.current_url)
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    answer = pape.Response.fromSuccessResponse(response)
    assert answer is not None
    assert set(answer.auth_policies) == {pape.AUTH_MULTI_FACTOR, pape.AUTH_PHISHING_RESISTANT}


@pytest.fixture
def two_authenticators(chrome: WebDriver) -> Iterator[tuple[WebDriver, str, str]]:
    """
    Two virtual authenticators at once (DevTools' WebAuthn domain): a
    security key bound to one device (no backup flags) and a phone whose
    passkeys are synced (defaultBackupEligibility, defaultBackupState).
    Yields the driver and the two authenticators' ids (device, synced).
    """
    chrome.execute_cdp_cmd("WebAuthn.enable", {"enableUI": False})
    common = {"protocol": "ctap2", "hasResidentKey": True, "hasUserVerification": True}
    device = chrome.execute_cdp_cmd(
        "WebAuthn.addVirtualAuthenticator",
        {"options": {**common, "transport": "usb", "isUserVerified": True}},
    )["authenticatorId"]
    synced_one = chrome.execute_cdp_cmd(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                **common,
                "transport": "internal",
                "isUserVerified": True,
                "defaultBackupEligibility": True,
                "defaultBackupState": True,
            }
        },
    )["authenticatorId"]
    try:
        yield chrome, device, synced_one
    finally:
        for added in (device, synced_one):
            chrome.execute_cdp_cmd(
                "WebAuthn.removeVirtualAuthenticator", {"authenticatorId": added}
            )
        chrome.execute_cdp_cmd("WebAuthn.disable", {})


def answering(driver: WebDriver, *authenticators: str, of: tuple[str, ...]) -> None:
    """Let only C{authenticators} (of the ids C{of}) answer: the others wait for a touch."""
    for added in of:
        driver.execute_cdp_cmd(
            "WebAuthn.setAutomaticPresenceSimulation",
            {"authenticatorId": added, "enabled": added in authenticators},
        )


OPTIONS_OF_THE_KEY_FORM = """
const done = arguments[arguments.length - 1];
const form = document.querySelector("form#key-use");
const body = new URLSearchParams();
for (const name of ["csrf_token", "device"]) {
  if (form.elements[name]) { body.append(name, form.elements[name].value); }
}
fetch(form.dataset.options, {method: "POST", body: body, credentials: "same-origin"})
  .then((answer) => answer.json()).then(done, (error) => done({error: String(error)}));
"""


def with_a_synced_and_a_device_bound_key(
    driver: WebDriver, node: NodeProcess, device: str, synced_one: str
) -> tuple[str, str]:
    """
    A new person with a synced passkey (made by C{synced_one}) and a
    security key bound to one device (made by C{device}); their address,
    and the device-bound credential's id in base64url.
    """
    both = (device, synced_one)
    email = signed_up(driver, node)
    answering(driver, synced_one, of=both)
    add_key(driver, node, "passkey", "Phone passkey")
    assert "Your key was added" in driver.page_source, driver.page_source[:2000]
    answering(driver, device, of=both)
    add_key(driver, node, "key", "Blue key")
    driver.get(base(node) + "account/mfa")
    assert "Phone passkey</strong>: passkey (synced)" in driver.page_source
    held = driver.execute_cdp_cmd("WebAuthn.getCredentials", {"authenticatorId": device})
    [device_key] = held["credentials"]
    # DevTools gives the id in base64 with padding; the options in base64url.
    return email, device_key["credentialId"].replace("+", "-").replace("/", "_").rstrip("=")


def test_a_physical_factor_step_up_offers_only_the_device_bound_key(
    two_authenticators: tuple[WebDriver, str, str],
    node: NodeProcess,
    rp_site: BrowserRelyingParty,
) -> None:
    """
    A person with a synced passkey and a security key bound to one device,
    signed in with the synced passkey, visits a partner site asking PAPE
    multi-factor-physical: the confirm page asks the browser for the
    device-bound key alone (allowCredentials), so with both authenticators
    present the key answers, once, and the site gets multi-factor-physical
    with no second trip to the confirm page.
    """
    driver, device, synced_one = two_authenticators
    both = (device, synced_one)
    _, device_key_id = with_a_synced_and_a_device_bound_key(driver, node, device, synced_one)

    # Signed in again with the synced passkey alone (no password).
    sign_out(driver, node)
    answering(driver, synced_one, of=both)
    driver.get(base(node) + "signin?next=/account/mfa")
    signed_in = base(node) + "account/mfa"
    WebDriverWait(driver, 20).until(lambda d: d.current_url == signed_in or passkey_button_shown(d))
    if driver.current_url != signed_in:
        with contextlib.suppress(WebDriverException):
            click(driver, "form#passkey-signin button")
    arrive(driver, signed_in)

    rp = PythonRP(base(node), rp_site.realm, rp_site.return_to)
    asking = rp.consumer().begin(rp.op_identifier)
    asking.addExtension(pape.Request([pape.AUTH_MULTI_FACTOR_PHYSICAL]))
    driver.get(str(asking.redirectURL(rp.realm, rp.return_to)))
    assert driver.current_url.startswith(base(node) + "account/confirm"), driver.current_url
    button = wait_for(driver, "form#key-use button")
    WebDriverWait(driver, 10).until(lambda d: button.is_displayed())
    options = driver.execute_async_script(OPTIONS_OF_THE_KEY_FORM)
    allowed = [c["id"] for c in options.get("allowCredentials", [])]
    assert allowed == [device_key_id], options

    answering(driver, *both, of=both)
    click(driver, "form#key-use button")
    decide = "form[action='/openid/decide']"
    WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, decide) or "account/confirm" in d.current_url
    )
    assert driver.find_elements(By.CSS_SELECTOR, decide), (
        driver.current_url + "\n" + driver.page_source[:3000]
    )
    click(driver, decide + " button[value='allow']")
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(rp_site.return_to))
    response = rp.complete(driver.current_url)
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    answer = pape.Response.fromSuccessResponse(response)
    assert answer is not None and pape.AUTH_MULTI_FACTOR_PHYSICAL in answer.auth_policies


def test_signing_in_for_a_physical_factor_refuses_the_synced_passkey(
    two_authenticators: tuple[WebDriver, str, str],
    node: NodeProcess,
    rp_site: BrowserRelyingParty,
) -> None:
    """
    Signed out, a person with a synced passkey and a device-bound key comes
    from a partner site asking PAPE multi-factor-physical: signing in with
    the synced passkey and no password is refused with one line saying a
    key bound to one device is needed; signing in with the password, the
    second step asks the browser for the device-bound key alone, and the
    site gets multi-factor-physical.
    """
    driver, device, synced_one = two_authenticators
    both = (device, synced_one)
    email, device_key_id = with_a_synced_and_a_device_bound_key(driver, node, device, synced_one)
    sign_out(driver, node)
    rp = PythonRP(base(node), rp_site.realm, rp_site.return_to)
    asking = rp.consumer().begin(rp.op_identifier)
    asking.addExtension(pape.Request([pape.AUTH_MULTI_FACTOR_PHYSICAL]))
    partner_url = str(asking.redirectURL(rp.realm, rp.return_to))

    answering(driver, synced_one, of=both)
    driver.get(partner_url)
    assert driver.current_url.startswith(base(node) + "signin"), driver.current_url
    needed = "This needs a security key or passkey bound to one device"
    WebDriverWait(driver, 20).until(lambda d: needed in d.page_source or passkey_button_shown(d))
    if needed not in driver.page_source:
        with contextlib.suppress(WebDriverException):
            click(driver, "form#passkey-signin button")
    WebDriverWait(driver, 20).until(lambda d: needed in d.page_source)
    assert not driver.find_elements(By.CSS_SELECTOR, "form[action='/signout']")

    answering(driver, of=both)
    driver.get(partner_url)
    submit(driver, "form[action='/signin']", {"email": email, "password": PASSWORD})
    assert driver.current_url.startswith(base(node) + "signin/code"), driver.current_url
    button = wait_for(driver, "form#key-use button")
    WebDriverWait(driver, 10).until(lambda d: button.is_displayed())
    options = driver.execute_async_script(OPTIONS_OF_THE_KEY_FORM)
    assert [c["id"] for c in options.get("allowCredentials", [])] == [device_key_id], options
    answering(driver, *both, of=both)
    click(driver, "form#key-use button")
    decide = "form[action='/openid/decide']"
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, decide))
    click(driver, decide + " button[value='allow']")
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(rp_site.return_to))
    response = rp.complete(driver.current_url)
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    answer = pape.Response.fromSuccessResponse(response)
    assert answer is not None and pape.AUTH_MULTI_FACTOR_PHYSICAL in answer.auth_policies


# Last in the module: the partner site it registers (on 127.0.0.1) would
# refuse the earlier tests' relying party, an unregistered site on the same host.
def test_adding_a_key_goes_on_to_the_site_that_required_it(
    authenticator: WebDriver, node: NodeProcess
) -> None:
    """
    A partner site requires a second factor of a person with none, and asks
    PAPE phishing-resistant and multi-factor-physical: sent to set one up,
    they add a security key; the recovery codes acknowledged, they go
    straight on to the waiting request (the ceremony that added the key
    counts as this session's use of it: no confirming with it again), and
    the site's consumer receives the assertion claiming the policies the
    key met (a key bound to the virtual device: every one). No link
    followed by hand.
    """
    driver = authenticator
    site_rp = BrowserRelyingParty()
    try:
        site = register_site(node, site_rp.realm, publish=site_rp.publish, required=())
        assert set_required(node, site, True).status_code == 200
        signed_up(driver, node)
        rp = PythonRP(base(node), site_rp.realm, site_rp.return_to)
        asking = rp.consumer().begin(rp.op_identifier)
        asking.addExtension(
            pape.Request([pape.AUTH_PHISHING_RESISTANT, pape.AUTH_MULTI_FACTOR_PHYSICAL])
        )
        driver.get(str(asking.redirectURL(rp.realm, rp.return_to)))
        assert driver.current_url.startswith(base(node) + "account/mfa?next=%2Fopenid%3F")
        wait_for(driver, "#second-factor-required")
        click(driver, "#add-key")
        form = wait_for(driver, "form#key-new")
        WebDriverWait(driver, 10).until(lambda d: form.is_displayed())
        submit(driver, "form#key-new", {"name": "Blue key"})
        assert "Your key was added" in driver.page_source, driver.page_source[:2000]
        assert len(driver.find_elements(By.CSS_SELECTOR, "ul.recovery-codes code")) == 10
        click(driver, "form#codes-saved button")
        assert "/account/confirm" not in driver.current_url, driver.current_url
        assert driver.find_elements(By.CSS_SELECTOR, "#register"), (
            driver.current_url + "\n" + driver.page_source[:3000]
        )
        click(driver, "#register")
        WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(site_rp.realm))
        response = rp.complete(driver.current_url)
        assert response.status == consumer.SUCCESS, getattr(response, "message", "")
        answer = pape.Response.fromSuccessResponse(response)
        assert answer is not None
        assert set(answer.auth_policies) == {
            pape.AUTH_MULTI_FACTOR,
            pape.AUTH_PHISHING_RESISTANT,
            pape.AUTH_MULTI_FACTOR_PHYSICAL,
        }
    finally:
        site_rp.stop()


# After the test above: the client's site is on the same host as its partner site.
def test_an_id_token_says_hwk_for_a_device_bound_key(
    authenticator: WebDriver, node: NodeProcess, rp_site: BrowserRelyingParty
) -> None:
    """
    A person who just used a security key bound to one device (Chromium's
    virtual authenticator, no backup flags) signs in to an OpenID Connect
    client: the ID token's amr names hwk (and mfa), never swk.
    """
    driver = authenticator
    signed_up(driver, node)
    add_key(driver, node, "key", "Grey key")
    assert "Your key was added" in driver.page_source, driver.page_source[:2000]
    provider = Provider(node)
    provider.url, provider.issuer = base(node), base(node).rstrip("/")
    client = provider.client(rp_site.return_to)
    driver.get(provider.authorize_url(client, state="st", nonce="nn"))
    click(driver, "button[value=allow]")
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(rp_site.return_to))
    answer = dict(parse_qsl(urlsplit(driver.current_url).query))
    assert answer.get("state") == "st", driver.current_url
    code, redirect_uri = answer["code"], client.redirect_uri
    tokens = provider.token(
        client, grant_type="authorization_code", code=code, redirect_uri=redirect_uri
    ).json()
    claims = keys.verify(
        tokens["id_token"], provider.jwks(), audience=client.client_id, issuer=provider.issuer
    )
    assert "hwk" in claims["amr"] and "mfa" in claims["amr"], claims
    assert "swk" not in claims["amr"], claims

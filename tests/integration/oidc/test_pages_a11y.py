"""
The OpenID Connect pages a person sees, in a real Chromium at a desktop's
and a phone's size: the sign-in page names the client the person continues
to (the name its unverified site typed, marked so, and its redirect URI's
host), the consent page's heading names the host, and both pages scroll no
wider than the screen, have no WCAG 2.x A/AA violation axe-core finds, and
keep a visible focus ring in document order (tests/integration/node/a11y.py).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.integration.node.a11y import checker
from tests.integration.oidc.harness import PASSWORD, Provider
from tests.integration.oidc.test_browser import Callback
from tests.support.chromium import By, WebDriver, wait_for

pytestmark = pytest.mark.integration


def test_sign_in_and_consent_pages(
    provider: Provider, chrome: WebDriver, screenshots: Path
) -> None:
    callback = Callback()
    try:
        pages = checker(chrome, screenshots)
        email = f"axe-{secrets.token_hex(4)}@example.com"
        provider.node.ctl("user", "add", email, "--password-stdin", input=PASSWORD + "\n")
        client = provider.client(callback.url)
        chrome.delete_all_cookies()
        chrome.get(provider.authorize_url(client, state="st", nonce="nn", login_hint=email))
        wait_for(chrome, "input#email", timeout=60)  # a fresh node's first page
        # Its site's realm is not verified: the name it typed, marked so, and its host.
        branding = wait_for(chrome, "#partner-branding").text
        assert "to continue to Test Partner (127.0.0.1)" in branding, branding
        assert "Clickpass has not verified it" in branding, branding
        pages.check("OpenID Connect sign-in")
        chrome.find_element(By.CSS_SELECTOR, "input#password").send_keys(PASSWORD)
        chrome.find_element(By.CSS_SELECTOR, "form[action='/signin'] button").click()
        wait_for(chrome, "button[value=allow]")
        assert wait_for(chrome, "#consent-heading").text == "Sign in to 127.0.0.1?"
        assert "Test Partner" in wait_for(chrome, "#unverified-client").text
        pages.check("OpenID Connect consent")
        assert not pages.problems, "\n".join(pages.problems)
    finally:
        callback.stop()

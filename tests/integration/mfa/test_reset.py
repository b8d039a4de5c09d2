"""
A password reset does not get around a second factor, through a real
node on SQLite and MariaDB: the reset link (only the mailbox) and the new
password are a first factor; a person with an authenticator app gives a
code before any session starts, as at sign-in.
"""

from __future__ import annotations

import secrets

import pytest
import requests

from tests.integration.mfa.person import PASSWORD, RECOVERY, MfaPerson
from tests.support.browser import Browser, csrf_token
from tests.support.mailbox import link_in, maildir_of, wait_for_message
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

NEW_PASSWORD = "a brand new passphrase"


def reset_password(node: NodeProcess, browser: Browser, email: str) -> requests.Response:
    """Ask for a reset link, open it from the mail, and set NEW_PASSWORD; redirects not followed."""
    browser.submit("/forgot", "/forgot", {"email": email})
    link = link_in(wait_for_message(maildir_of(node), email, "Reset your Clickpass"), "reset")
    form = browser.get(link)
    assert form.status_code == 200 and 'action="/reset"' in form.text, form.text[:2000]
    return browser.post(
        "/reset",
        {
            "t": link.split("t=", 1)[1],
            "password": NEW_PASSWORD,
            "password_again": NEW_PASSWORD,
            "csrf_token": csrf_token(form.text),
        },
        allow_redirects=False,
    )


def test_a_reset_asks_for_the_second_factor_before_signing_in(node: NodeProcess) -> None:
    """
    With an app set up, a reset sets the new password but starts no
    session: it goes to the code page, and only the right code signs in.
    Someone with the mailbox alone is left signed out; the new password
    then needs a code too.
    """
    person = MfaPerson(node.url, f"r{secrets.token_hex(4)}@example.com")
    person.sign_up()
    person.set_up_totp()
    done = person.confirm_totp(person.app_code())
    assert len(RECOVERY.findall(done.text)) == 10
    person.sign_out()

    mailbox_only = Browser(node.url)
    answer = reset_password(node, mailbox_only, person.email)
    assert answer.status_code == 303, answer.text[:2000]
    assert answer.headers["location"].startswith("/signin/code?next="), answer.headers
    assert "cp_session" not in mailbox_only.session.cookies
    assert mailbox_only.get("/account", allow_redirects=False).status_code != 200
    # The password did change: the old one is refused, the new one asks for a code.
    assert Browser(node.url).sign_in(person.email, PASSWORD).status_code == 401
    again = Browser(node.url).submit(
        "/signin",
        "/signin",
        {"email": person.email, "password": NEW_PASSWORD, "next": "/account"},
        allow_redirects=False,
    )
    assert again.status_code == 303 and again.headers["location"].startswith("/signin/code")

    # The owner, in the browser that reset it, gives the code and is in.
    person.browser = mailbox_only
    signed_in = person.give_code(person.app_code(), next_url="/account?reset=1")
    assert signed_in.status_code == 303, signed_in.text[:2000]
    assert signed_in.headers["location"] == "/account?reset=1"
    assert person.signed_in()


def test_a_reset_without_a_second_factor_signs_in(node: NodeProcess) -> None:
    """Without a second factor, the reset signs the owner in at once, as before."""
    email = f"r{secrets.token_hex(4)}@example.com"
    browser = Browser(node.url)
    assert browser.sign_up(email, PASSWORD).ok
    browser = Browser(node.url)
    answer = reset_password(node, browser, email)
    assert answer.status_code == 303 and answer.headers["location"] == "/account?reset=1"
    assert browser.get("/account", allow_redirects=False).status_code == 200

"""
Step-up without asking for the password twice, through a real node: a
person with no second factor, whose sign-in is older than the step-up
window, changes the password, then the address, then deletes the
account. Each form asks for the current password once, itself, and checks
it when the change is made; nobody is first sent to confirm with the very
password the form asks for next. A wrong password still changes nothing.
(A person with a second factor is still asked for it first:
tests/integration/mfa/test_step_up_account.py.)
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import Browser
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"
WINDOW = 1


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """A node whose sign-ins count as fresh for step-up for one second only."""
    server = request.getfixturevalue("mariadb_server") if request.param == "mysql" else None
    tmp: Path = tmp_path_factory.mktemp("step-up-node")
    extra = f"\n[mfa]\nstep_up_window = {WINDOW}\n"
    with running_node(tmp, extra, server, "stepup") as proc:
        yield proc


def stale_session(node: NodeProcess) -> tuple[Browser, str]:
    """A person with a password and no second factor, signed in longer ago than the window."""
    email = f"p{secrets.token_hex(4)}@example.org"
    node.ctl("user", "add", email, "--password-stdin", "--verified", input=PASSWORD + "\n")
    browser = Browser(node.url)
    signed = browser.sign_in(email, PASSWORD)
    assert signed.ok and "/account" in signed.url, signed.text[:2000]
    time.sleep(WINDOW + 1.5)
    return browser, email


def asks_password_once(browser: Browser, path: str, field: str) -> None:
    """The form is shown at once (no step-up redirect) and holds one password field to fill."""
    page = browser.get(path, allow_redirects=False)
    assert page.status_code == 200, (path, page.status_code, page.headers.get("location"))
    assert f'name="{field}"' in page.text, page.text[:2000]


def test_password_and_email_forms_ask_for_the_password_once(node: NodeProcess) -> None:
    """
    With a stale sign-in and no second factor, the password and address
    forms open at once; a wrong current password is refused (400, nothing
    changed), the right one makes the change.
    """
    browser, email = stale_session(node)
    asks_password_once(browser, "/account/password", "current_password")
    wrong = browser.submit(
        "/account/password",
        "/account/password",
        {"current_password": "not my password", "password": NEW_PASSWORD,
         "password_again": NEW_PASSWORD},
    )  # fmt: skip
    assert wrong.status_code == 400 and "That is not your current password." in wrong.text
    assert Browser(node.url).sign_in(email, PASSWORD).ok
    changed = browser.submit(
        "/account/password",
        "/account/password",
        {"current_password": PASSWORD, "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )
    assert changed.ok and changed.url.endswith("/account?password=1"), changed.url

    asks_password_once(browser, "/account/email", "current_password")
    new = f"n{secrets.token_hex(4)}@example.org"
    wrong = browser.submit(
        "/account/email", "/account/email", {"email": new, "current_password": PASSWORD}
    )
    assert wrong.status_code == 400 and "That is not your current password." in wrong.text
    sent = browser.submit(
        "/account/email", "/account/email", {"email": new, "current_password": NEW_PASSWORD}
    )
    assert sent.ok and 'id="email-sent"' in sent.text, sent.text[:2000]


def test_deleting_asks_for_the_password_once(node: NodeProcess) -> None:
    """
    With a stale sign-in and no second factor, the delete page opens at
    once; a wrong password keeps the account, the right one deletes it.
    """
    browser, email = stale_session(node)
    asks_password_once(browser, "/account/delete", "password")
    kept = browser.submit("/account/delete", "/account/delete", {"password": "not my password"})
    assert kept.status_code == 400 and "That is not your password." in kept.text
    assert browser.get("/account").url.endswith("/account")
    deleted = browser.submit("/account/delete", "/account/delete", {"password": PASSWORD})
    assert deleted.ok and deleted.url.endswith("/account/deleted"), deleted.url
    assert Browser(node.url).sign_in(email, PASSWORD).status_code == 401

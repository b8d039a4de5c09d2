"""
The mailed-link account flows through a real node (front, workers, mail
delivery to the maildir under its data directory), on SQLite and MariaDB:

- sign-up answers the same whether or not the address is taken, signs
  nobody in, and tells the holder of a taken address;
- forgot password -> reset link -> signed in, even while sign-in is
  throttled for the account; every other session ends, the owner is told,
  the link works once;
- a link that cannot be used gets a page saying why and what to do next;
- change password, and change email -> confirm -> undo from the old address;
- clickpass-ctl user add [--verified], user verify, user reset-link.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import Browser, csrf_token
from tests.support.mailbox import link_in, maildir_of, messages_to, wait_for_message
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"
CSRF = re.compile(r'name="csrf_token" value="[^"]*"')


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """One node per backend, its mail in the maildir under its data directory."""
    server = request.getfixturevalue("mariadb_server") if request.param == "mysql" else None
    tmp: Path = tmp_path_factory.mktemp("ownership-node")
    with running_node(tmp, "\n[mail]\npoll_interval = 0.2\n", server, "own") as proc:
        yield proc


_count = 0


def fresh_email() -> str:
    global _count
    _count += 1
    return f"own{_count}-{id(object()):x}@example.org"


def add_user(node: NodeProcess, email: str, *flags: str) -> None:
    node.ctl("user", "add", email, "--password-stdin", *flags, input=PASSWORD + "\n")


def signed_in_browser(node: NodeProcess, email: str, password: str = PASSWORD) -> Browser:
    browser = Browser(node.url)
    response = browser.sign_in(email, password)
    assert response.ok and "/account" in response.url, response.text[:2000]
    return browser


def sign_up_page(node: NodeProcess, email: str, password: str) -> tuple[int, str, bool]:
    """Sign up in a fresh browser: the status, the page (CSRF tokens blanked), signed in?"""
    browser = Browser(node.url)
    response = browser.submit(
        "/signup",
        "/signup",
        {"email": email, "password": password, "password_again": password, "next": "/account"},
    )
    return (
        response.status_code,
        CSRF.sub("", response.text),
        "cp_session" in browser.session.cookies,
    )


def test_sign_up_answers_the_same_whether_or_not_the_address_is_taken(
    node: NodeProcess,
) -> None:
    """
    A new address and a taken one get the same page and no session; the
    new one is sent a verification link, the holder of the taken one a
    warning, and the second password opens nothing.
    """
    email = fresh_email()
    first = sign_up_page(node, email, PASSWORD)
    second = sign_up_page(node, email, "someone else's password")
    assert first == second
    assert first[0] == 200 and not first[2]
    maildir = maildir_of(node)
    wait_for_message(maildir, email, "Confirm your email address")
    taken = wait_for_message(maildir, email, "Someone tried to create")
    assert "/verify?" not in taken.as_string()
    refused = Browser(node.url).sign_in(email, "someone else's password")
    assert refused.status_code == 401


def test_forgot_then_reset_gets_the_owner_in_while_sign_in_is_throttled(
    node: NodeProcess,
) -> None:
    """
    With the account's sign-ins throttled by bad guesses, "forgot password"
    mails a link (the page the same as for an unknown address); the reset
    signs the owner in, signs their other browser out, tells them, and the
    link then refuses a second use, saying so.
    """
    email = fresh_email()
    add_user(node, email)
    other = signed_in_browser(node, email)
    guesser = Browser(node.url)
    for _ in range(5):
        assert guesser.sign_in(email, "wrong password!").status_code == 401
    assert Browser(node.url).sign_in(email, PASSWORD).status_code == 429

    owner = Browser(node.url)
    assert 'href="/forgot"' in owner.get("/signin").text
    unknown = owner.submit("/forgot", "/forgot", {"email": "nobody-" + email})
    known = owner.submit("/forgot", "/forgot", {"email": email})
    assert unknown.status_code == known.status_code == 200
    assert CSRF.sub("", unknown.text) == CSRF.sub("", known.text)
    link = link_in(wait_for_message(maildir_of(node), email, "Reset your Clickpass"), "reset")
    form = owner.get(link)
    assert form.status_code == 200 and 'action="/reset"' in form.text
    done = owner.post(
        "/reset",
        {
            "t": link.split("t=", 1)[1],
            "password": NEW_PASSWORD,
            "password_again": NEW_PASSWORD,
            "csrf_token": csrf_token(form.text),
        },
    )
    assert done.ok and "/account" in done.url, done.text[:2000]
    assert email in done.text
    assert "/signin" in other.get("/account").url, "the other browser was signed out"
    wait_for_message(maildir_of(node), email, "password was changed")
    again = Browser(node.url).get(link)
    assert again.status_code == 410 and 'data-reason="used"' in again.text
    assert 'href="/forgot"' in again.text
    assert Browser(node.url).sign_in(email, NEW_PASSWORD).ok


@pytest.mark.parametrize(
    ("path", "reason", "next_step"),
    [
        ("/reset?t=" + "A" * 43, "invalid", "/forgot"),
        ("/reset?t=short", "invalid", "/forgot"),
        ("/email/revert?t=" + "B" * 43, "invalid", "/signin"),
    ],
)
def test_a_link_that_cannot_be_used_says_why_and_what_next(
    node: NodeProcess, path: str, reason: str, next_step: str
) -> None:
    """A made-up or cut-short link gets a page naming the problem and the next step."""
    page = Browser(node.url).get(path)
    assert page.status_code == 400
    assert f'data-reason="{reason}"' in page.text
    assert 'id="next-step"' in page.text and f'href="{next_step}"' in page.text


def test_a_verification_link_for_another_account_is_refused(node: NodeProcess) -> None:
    """Opened while signed in as someone else, a verification link says so and verifies nothing."""
    email = fresh_email()
    Browser(node.url).sign_up(email, PASSWORD, verify=False)
    link = link_in(wait_for_message(maildir_of(node), email, "Confirm your email"), "verify")
    other = fresh_email()
    add_user(node, other)
    page = signed_in_browser(node, other).get(link)
    assert 'data-reason="other_account"' in page.text
    owner = Browser(node.url)
    confirmed = owner.verify(link, email, PASSWORD)
    assert confirmed.ok and "/account" in confirmed.url
    assert 'data-verified="yes"' in owner.get("/account").text


def test_change_password_needs_the_current_one(node: NodeProcess) -> None:
    """A wrong current password changes nothing; the right one changes it and tells the owner."""
    email = fresh_email()
    add_user(node, email, "--verified")
    browser = signed_in_browser(node, email)
    fields = {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}
    wrong = browser.submit(
        "/account/password", "/account/password", {**fields, "current_password": "nope nope"}
    )
    assert wrong.status_code == 400 and "not your current password" in wrong.text
    right = browser.submit(
        "/account/password", "/account/password", {**fields, "current_password": PASSWORD}
    )
    assert right.ok and "/account" in right.url
    wait_for_message(maildir_of(node), email, "password was changed")
    assert Browser(node.url).sign_in(email, NEW_PASSWORD).ok


def test_change_email_then_undo_from_the_old_address(node: NodeProcess) -> None:
    """
    The new address becomes the account's only once its link is opened by
    the signed-in owner; the old address is told, and its link gives the
    address back and signs everyone out.
    """
    old, new = fresh_email(), fresh_email()
    add_user(node, old, "--verified")
    browser = signed_in_browser(node, old)
    sent = browser.submit(
        "/account/email", "/account/email", {"email": new, "current_password": PASSWORD}
    )
    assert 'id="email-sent"' in sent.text
    assert old in browser.get("/account").text
    confirm = link_in(wait_for_message(maildir_of(node), new, "Confirm your new"), "email/confirm")
    page = browser.get(confirm)
    moved = browser.post(
        "/email/confirm", {"t": confirm.split("t=", 1)[1], "csrf_token": csrf_token(page.text)}
    )
    assert moved.ok and new in moved.text and 'data-verified="yes"' in moved.text
    notice = wait_for_message(maildir_of(node), old, "address was changed")
    revert = link_in(notice, "email/revert")
    stranger = Browser(node.url)
    page = stranger.get(revert)
    assert old in page.text
    undone = stranger.post(
        "/email/revert", {"t": revert.split("t=", 1)[1], "csrf_token": csrf_token(page.text)}
    )
    assert 'id="reverted"' in undone.text
    assert "/signin" in browser.get("/account").url, "everyone was signed out"
    assert signed_in_browser(node, old).get("/account").ok


def test_operators_add_verified_verify_and_make_reset_links(node: NodeProcess) -> None:
    """
    user add is unverified unless --verified; user verify verifies; user
    reset-link prints a link that works (nothing mailed); unknown
    addresses get one clear line.
    """
    email = fresh_email()
    add_user(node, email)
    assert 'data-verified="no"' in signed_in_browser(node, email).get("/account").text
    node.ctl("user", "verify", email)
    assert 'data-verified="yes"' in signed_in_browser(node, email).get("/account").text
    verified = fresh_email()
    add_user(node, verified, "--verified")
    assert 'data-verified="yes"' in signed_in_browser(node, verified).get("/account").text
    result = json.loads(node.ctl("--json", "user", "reset-link", email).stdout)
    link = result["link"]
    assert link.startswith(node.url + "reset?t=")
    browser = Browser(node.url)
    form = browser.get(link)
    done = browser.post(
        "/reset",
        {
            "t": link.split("t=", 1)[1],
            "password": NEW_PASSWORD,
            "password_again": NEW_PASSWORD,
            "csrf_token": csrf_token(form.text),
        },
    )
    assert done.ok and "/account" in done.url
    assert not [m for m in messages_to(maildir_of(node), email) if "Reset" in str(m["Subject"])]
    missing = node.ctl("user", "verify", "nobody@example.org", check=False)
    assert missing.returncode != 0 and "no account with email" in missing.stderr
    missing = node.ctl("user", "reset-link", "nobody@example.org", check=False)
    assert missing.returncode != 0 and "no account with email" in missing.stderr


def test_the_flows_are_lines_of_the_security_log(node: NodeProcess) -> None:
    """
    A sign-up and another on the taken address, verification, a reset
    asked for and done, a password change, an email change and its undo,
    an operator's verification and reset link: each is a line of the
    person's log on /account and in clickpass-ctl user show.
    """
    email, new = fresh_email(), fresh_email()
    owner = Browser(node.url)
    assert owner.sign_up(email, PASSWORD).ok
    sign_up_page(node, email, "someone else's password")
    owner.submit("/forgot", "/forgot", {"email": email})
    link = link_in(wait_for_message(maildir_of(node), email, "Reset your Clickpass"), "reset")
    form = owner.get(link)
    fields = {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}
    token = {"t": link.split("t=", 1)[1], "csrf_token": csrf_token(form.text)}
    assert "/account" in owner.post("/reset", {**fields, **token}).url
    changed = owner.submit(
        "/account/password",
        "/account/password",
        {"password": PASSWORD, "password_again": PASSWORD, "current_password": NEW_PASSWORD},
    )
    assert "/account" in changed.url, changed.text[:2000]
    sent = owner.submit(
        "/account/email", "/account/email", {"email": new, "current_password": PASSWORD}
    )
    assert 'id="email-sent"' in sent.text, sent.text[:2000]
    confirm = link_in(wait_for_message(maildir_of(node), new, "Confirm your new"), "email/confirm")
    page = owner.get(confirm)
    owner.post(
        "/email/confirm", {"t": confirm.split("t=", 1)[1], "csrf_token": csrf_token(page.text)}
    )
    revert = link_in(
        wait_for_message(maildir_of(node), email, "address was changed"), "email/revert"
    )
    page = owner.get(revert)
    owner.post(
        "/email/revert", {"t": revert.split("t=", 1)[1], "csrf_token": csrf_token(page.text)}
    )
    node.ctl("user", "verify", email)
    node.ctl("user", "reset-link", email)
    labels = [
        "Account created",
        "Someone tried to create an account with your address",
        "Email address verified",
        "Password reset link requested",
        "Password reset with an emailed link",
        "Password changed",
        "Email change requested",
        "Email address changed",
        "Email change reverted",
        "An operator made a password reset link",
    ]
    account_page = signed_in_browser(node, email).get("/account").text
    shown = node.ctl("user", "show", email).stdout
    for label in labels:
        assert label in account_page, (label, account_page)
        assert label in shown, (label, shown)
    assert "by an operator" in shown

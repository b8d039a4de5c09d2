"""
Second factors through a real node, on SQLite and MariaDB: setting up an
authenticator app (QR code and key), the second sign-in step with app
codes and recovery codes (each good once; a recovery code's use mailed),
trusted browsers, and step-up before removing the factor.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pyotp
import pytest

from tests.integration.mfa.person import RECOVERY, MfaPerson, error_of, mails_to, second_step_next
from tests.support.browser import csrf_token
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def person(node: NodeProcess) -> MfaPerson:
    return MfaPerson(node.url, f"m{secrets.token_hex(4)}@example.com")


def enrolled(person: MfaPerson) -> None:
    person.sign_up()
    person.set_up_totp()
    done = person.confirm_totp(person.app_code())
    assert done.status_code == 200, done.text
    person.recovery_codes = RECOVERY.findall(done.text)
    assert len(person.recovery_codes) == 10


def about(maildir: Path, address: str, subject: str) -> list[EmailMessage]:
    """The mails to C{address} whose subject holds C{subject} (not its sign-up's verification)."""
    return [m for m in mails_to(maildir, address) if subject in str(m["Subject"])]


def wait_for(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.1)


def test_set_up_shows_qr_and_key_and_refuses_a_wrong_code(
    node: NodeProcess, person: MfaPerson
) -> None:
    """
    The set-up page carries the QR code as inline SVG (no script) and the
    key as text; a wrong code is refused with one line and turns nothing
    on; the right one turns it on and shows ten recovery codes once.
    """
    person.sign_up()
    page = person.set_up_totp()
    assert "<svg" in page.text and "<script" not in page.text
    assert len(person.secret) == 32
    right = pyotp.TOTP(person.secret).now()
    wrong = str((int(right) + 500_000) % 1_000_000).zfill(6)
    refused = person.confirm_totp(wrong)
    assert refused.status_code == 400
    assert "That code is not right" in error_of(refused)
    manage = person.get("/account/mfa")
    assert "Set up an authenticator app" in manage.text
    done = person.confirm_totp(person.app_code())
    assert done.status_code == 200 and done.text.count("<li><code>") == 10
    account = person.get("/account")
    assert "On: signing in needs a code" in account.text
    assert "10 recovery codes left" in account.text


def test_second_step_with_app_code(node: NodeProcess, person: MfaPerson) -> None:
    """
    After the password the session is not started until a code is given:
    a wrong code and a code already used are refused, nothing changed;
    the right code signs in and goes on to where the person was going.
    """
    enrolled(person)
    used = pyotp.TOTP(person.secret).at(person.used_step * 30)
    person.sign_out()
    next_url = second_step_next(person.sign_in_password("/account/mfa"))
    assert next_url == "/account/mfa"
    assert not person.signed_in()
    wrong = person.give_code("000000" if used != "000000" else "111111", next_url=next_url)
    assert wrong.status_code == 401 and "not right" in error_of(wrong)
    replayed = person.give_code(used, next_url=next_url)
    assert replayed.status_code == 401 and "used already" in error_of(replayed)
    assert not person.signed_in()
    done = person.give_code(person.app_code(), next_url=next_url)
    assert done.status_code == 303 and done.headers["location"] == "/account/mfa"
    assert person.signed_in()


def test_recovery_code_once_and_mailed(node: NodeProcess, person: MfaPerson) -> None:
    """
    A recovery code gets a person in once; its use is mailed to them; the
    same code again is refused.
    """
    enrolled(person)
    person.sign_out()
    code = person.recovery_codes[3]
    second_step_next(person.sign_in_password())
    done = person.give_code(code.upper())
    assert done.status_code == 303 and person.signed_in()
    maildir = Path(node.workdir) / "data" / "mail"
    wait_for(lambda: about(maildir, person.email, "recovery code was used"))
    (message,) = about(maildir, person.email, "recovery code was used")
    body = message.get_body(("plain",))
    assert body is not None and "9 unused recovery codes left" in body.get_content()
    person.sign_out()
    second_step_next(person.sign_in_password())
    again = person.give_code(code)
    assert again.status_code == 401 and not person.signed_in()


def test_trusted_browser_and_step_up_to_remove(node: NodeProcess, person: MfaPerson) -> None:
    """
    A browser trusted at the second step skips it next time, and is listed
    and revocable; removing the factor needs a fresh code (a trusted
    browser's sign-in is not one), refusing a wrong one; once removed, a
    password alone signs in.
    """
    enrolled(person)
    person.sign_out()
    second_step_next(person.sign_in_password())
    assert person.give_code(person.recovery_codes[0], trust=True).status_code == 303
    person.sign_out()
    straight = person.sign_in_password("/account")
    assert straight.status_code == 303 and straight.headers["location"] == "/account"
    manage = person.get("/account/mfa")
    assert "Stop trusting" in manage.text
    asked = person.post("/account/mfa", "/account/mfa/remove", {})
    assert asked.status_code == 303
    assert asked.headers["location"] == "/account/confirm?next=%2Faccount%2Fmfa"
    confirm_page = "/account/confirm?next=/account/mfa"
    wrong = person.post(confirm_page, "/account/confirm", {"code": "12345", "next": "/account/mfa"})
    assert wrong.status_code == 401 and "not right" in error_of(wrong)
    assert "Remove the authenticator app" in person.get("/account/mfa").text
    fresh = person.post(
        confirm_page, "/account/confirm", {"code": person.recovery_codes[1], "next": "/account/mfa"}
    )
    assert fresh.status_code == 303 and fresh.headers["location"] == "/account/mfa"
    removed = person.post("/account/mfa", "/account/mfa/remove", {})
    assert removed.status_code == 303, removed.text
    assert "Set up an authenticator app" in person.get("/account/mfa").text
    person.sign_out()
    plain = person.sign_in_password("/account")
    assert plain.status_code == 303 and plain.headers["location"] == "/account"


def test_revoking_a_trusted_browser(node: NodeProcess, person: MfaPerson) -> None:
    """A browser no longer trusted is asked for a code again."""
    enrolled(person)
    person.sign_out()
    second_step_next(person.sign_in_password())
    assert person.give_code(person.recovery_codes[0], trust=True).status_code == 303
    manage = person.get("/account/mfa")
    ref = manage.text.split('name="browser" value="')[1].split('"')[0]
    revoked = person.post("/account/mfa", "/account/mfa/browsers/revoke", {"browser": ref})
    assert revoked.status_code == 303
    unknown = person.post("/account/mfa", "/account/mfa/browsers/revoke", {"browser": ref})
    assert unknown.status_code == 404
    person.sign_out()
    second_step_next(person.sign_in_password())


def test_trusted_browsers_are_listed_with_the_sessions(
    node: NodeProcess, person: MfaPerson
) -> None:
    """
    The account page, where the sessions are, lists each trusted browser
    with when it was trusted, from where and until when (30 days), and
    stops trusting it from there.
    """
    enrolled(person)
    person.sign_out()
    second_step_next(person.sign_in_password())
    assert person.give_code(person.recovery_codes[0], trust=True).status_code == 303
    page = person.get("/account").text
    assert 'id="sessions-heading"' in page and 'id="trusted-browsers-heading"' in page
    listed = page.split('id="trusted-browsers-heading"')[1]
    today = time.gmtime()
    until = time.gmtime(time.time() + 30 * 86400)
    assert f"Trusted {time.strftime('%Y-%m-%d', today)} from 127.0.0.1" in listed, listed[:800]
    assert f"until {time.strftime('%Y-%m-%d', until)}" in listed, listed[:800]
    ref = listed.split('name="browser" value="')[1].split('"')[0]
    revoked = person.post("/account", "/account/mfa/browsers/revoke", {"browser": ref})
    assert revoked.status_code == 303
    assert 'id="trusted-browsers-heading"' not in person.get("/account").text
    person.sign_out()
    second_step_next(person.sign_in_password())


def test_second_step_without_a_password_is_refused(node: NodeProcess, person: MfaPerson) -> None:
    """A code posted with no second step open (no password given) signs no one in."""
    person.sign_up()
    person.sign_out()
    page = person.get("/signin")
    answer = person.browser.post(
        "/signin/code",
        {"code": "123456", "next": "/account", "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert answer.status_code == 400 and "expired" in answer.text
    assert not person.signed_in()
    assert person.get("/signin/code").headers["location"].startswith("/signin?next=")


def test_operator_lists_and_resets(node: NodeProcess, person: MfaPerson) -> None:
    """
    clickpass-ctl user mfa lists what a person has; user mfa-reset removes
    it all, is logged and mailed to the person, and a password alone signs
    in again. An unknown email is one line and changes nothing.
    """
    enrolled(person)
    listed = node.ctl("user", "mfa", person.email).stdout
    assert "authenticator:    set up" in listed
    assert "recovery codes:   10 unused" in listed
    unknown = node.ctl("user", "mfa-reset", "nobody@example.com", check=False)
    assert unknown.returncode != 0
    assert unknown.stderr.strip().endswith("no account with email nobody@example.com")
    assert len(unknown.stderr.strip().splitlines()) == 1
    reset = node.ctl("user", "mfa-reset", person.email.upper()).stdout
    assert f"removed the second factors of {person.email.upper()}" in reset
    assert "authenticator:    none" in node.ctl("user", "mfa", person.email).stdout
    maildir = Path(node.workdir) / "data" / "mail"
    removed = "The second factor of your account was removed"
    wait_for(lambda: about(maildir, person.email, removed))
    (message,) = about(maildir, person.email, removed)
    assert message["Subject"] == removed
    wait_for(lambda: f"operator reset the second factors of {person.email}" in node.log())
    person.sign_out()
    plain = person.sign_in_password("/account")
    assert plain.status_code == 303 and plain.headers["location"] == "/account"

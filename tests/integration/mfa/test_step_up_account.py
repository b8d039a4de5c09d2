"""
Step-up before the account's most sensitive actions, through a real node
on SQLite and MariaDB: changing the password or the email address,
downloading everything held about the person, and deleting the account
all need a fresh sign-in with the person's strongest factor. A session
signed in through a trusted browser (no code given) is sent to confirm
with a code first, and nothing changes until it has.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import quote

import pytest

from tests.integration.mfa.person import PASSWORD, RECOVERY, MfaPerson, second_step_next
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

NEW_PASSWORD = "a brand new passphrase"


def signed_in_by_trust(node: NodeProcess) -> MfaPerson:
    """A person with an app, signed in from a trusted browser with the password alone."""
    person = MfaPerson(node.url, f"s{secrets.token_hex(4)}@example.com")
    person.sign_up()
    person.set_up_totp()
    done = person.confirm_totp(person.app_code())
    person.recovery_codes = RECOVERY.findall(done.text)
    person.sign_out()
    second_step_next(person.sign_in_password())
    assert person.give_code(person.app_code(), trust=True).status_code == 303
    person.sign_out()
    straight = person.sign_in_password("/account")
    assert straight.headers["location"] == "/account", straight.headers
    return person


def asks_to_confirm(answer_location: str, back: str) -> bool:
    return answer_location == "/account/confirm?next=" + quote(back, safe="")


def confirm_with_code(person: MfaPerson, back: str) -> None:
    page = "/account/confirm?next=" + back
    fresh = person.post(page, "/account/confirm", {"code": person.app_code(), "next": back})
    assert fresh.status_code == 303 and fresh.headers["location"] == back, fresh.text[:2000]


def test_sensitive_account_actions_need_a_fresh_code(node: NodeProcess) -> None:
    """
    From a trusted browser's session, the password and email forms, the
    export and the delete page each send the person to confirm with a
    code, and their POSTs change nothing; after a code they work.
    """
    person = signed_in_by_trust(node)
    for path in ("/account/password", "/account/email", "/account/export", "/account/delete"):
        asked = person.get(path)
        assert asked.status_code == 303, (path, asked.status_code, asked.text[:500])
        assert asks_to_confirm(asked.headers["location"], path), asked.headers
    refused = person.post(
        "/account",
        "/account/password",
        {"current_password": PASSWORD, "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )
    assert asks_to_confirm(refused.headers["location"], "/account/password")
    moved = person.post(
        "/account",
        "/account/email",
        {"current_password": PASSWORD, "email": f"x{secrets.token_hex(4)}@example.com"},
    )
    assert asks_to_confirm(moved.headers["location"], "/account/email")
    kept = person.post("/account", "/account/delete", {"password": PASSWORD})
    assert asks_to_confirm(kept.headers["location"], "/account/delete")
    assert person.signed_in(), "the account is still there"
    assert "Password changed" not in person.get("/account").text
    # The old password is still the password (it leads to the code page).
    other = MfaPerson(node.url, person.email)
    second_step_next(other.sign_in_password())

    confirm_with_code(person, "/account/password")
    changed = person.post(
        "/account/password",
        "/account/password",
        {"current_password": PASSWORD, "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )
    assert changed.status_code == 303 and changed.headers["location"] == "/account?password=1"
    export = person.get("/account/export")
    assert export.status_code == 200, export.text[:500]
    assert json.loads(export.text)["account"]["email"] == person.email
    page = person.get("/account/delete")
    assert page.status_code == 200
    deleted = person.post("/account/delete", "/account/delete", {"password": NEW_PASSWORD})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/account/deleted"
    assert not person.signed_in()

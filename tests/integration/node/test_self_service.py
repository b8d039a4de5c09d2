"""
A person's own account controls, through a real node (front, workers,
database) on SQLite and on MariaDB: the security log and the session list
on /account, signing out one session or every other one, the JSON export,
deleting the account, the sign-up limits, and the operators'
clickpass-ctl user commands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import Browser, csrf_token
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)
SESSION_ROW = re.compile(r'<tr id="session-([0-9a-f]{24})">(.*?)</tr>', re.S)


@pytest.fixture(
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeProcess]:
    """A node with small sign-up limits (3 per address), either backend."""
    server = request.getfixturevalue("mariadb_server") if request.param == "mysql" else None
    extra = "\n[accounts]\nsignup_per_address = 3\nsignup_window = 3600\n"
    with running_node(tmp_path, extra, server, "self") as proc:
        yield proc


def browser(node: NodeProcess, agent: str) -> Browser:
    b = Browser(node.url)
    b.session.headers["User-Agent"] = agent
    return b


def sessions_on(page: str) -> dict[str, str]:
    """The session rows of an account page: handle -> the row's text."""
    return {handle: re.sub(r"<[^>]+>|\s+", " ", row) for handle, row in SESSION_ROW.findall(page)}


def signed_in(b: Browser) -> bool:
    return b.get("/account", allow_redirects=False).status_code == 200


def test_account_page_lists_sessions_and_security_events(node: NodeProcess) -> None:
    """
    /account lists each session (browser, address, this browser marked)
    and the security log: the sign-up, a sign-in from a new browser, a
    failed sign-in.
    """
    laptop, phone = browser(node, FIREFOX), browser(node, SAFARI)
    assert laptop.sign_up("a@example.com", PASSWORD).status_code == 200
    assert phone.sign_in("a@example.com", PASSWORD).status_code == 200
    refused = browser(node, "curl/8.5.0").sign_in("a@example.com", "not the password")
    assert refused.status_code == 401
    page = laptop.get("/account").text
    rows = sessions_on(page)
    assert len(rows) == 2, page
    texts = sorted(rows.values())
    assert any("Firefox on Linux" in t and "(this browser)" in t for t in texts), texts
    assert any("Safari on iOS" in t and "(this browser)" not in t for t in texts), texts
    assert all("127.0.0.1" in t for t in texts), texts
    for label in (
        "Account created",
        "Signed in from a new browser",
        "Failed sign-in (wrong password)",
    ):
        assert label in page
    assert 'class="event-signin_failed"' in page and "curl/8.5.0" in page


def test_sign_out_one_session_and_everywhere_else(node: NodeProcess) -> None:
    """
    "Sign out everywhere else" ends every other session and keeps this
    one; "Sign out" on one row ends that one; on this browser's own row it
    signs this browser out. Without the form's CSRF token nothing changes.
    """
    laptop = browser(node, FIREFOX)
    laptop.sign_up("a@example.com", PASSWORD)
    others = [browser(node, SAFARI) for _ in range(2)]
    for b in others:
        b.sign_in("a@example.com", PASSWORD)
    forged = laptop.post("/account/sessions/end-others", {"csrf_token": "x" * 64})
    assert forged.status_code == 403
    assert all(signed_in(b) for b in others)

    answer = laptop.submit("/account", "/account/sessions/end-others", {}, allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/account"
    assert not any(signed_in(b) for b in others)
    assert signed_in(laptop)
    page = laptop.get("/account").text
    assert len(sessions_on(page)) == 1
    assert "Signed out every other session" in page and "(2 sessions)" in page

    phone = browser(node, SAFARI)
    phone.sign_in("a@example.com", PASSWORD)
    rows = sessions_on(laptop.get("/account").text)
    [phone_handle] = [h for h, t in rows.items() if "Safari" in t]
    [own_handle] = [h for h, t in rows.items() if "(this browser)" in t]
    answer = laptop.submit(
        "/account", "/account/sessions/end", {"session": phone_handle}, allow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/account"
    assert not signed_in(phone) and signed_in(laptop)
    again = laptop.submit("/account", "/account/sessions/end", {"session": phone_handle})
    assert again.status_code == 404 and "already ended" in again.text

    answer = laptop.submit(
        "/account", "/account/sessions/end", {"session": own_handle}, allow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    assert not signed_in(laptop)


def test_export_holds_everything_and_no_secret(node: NodeProcess) -> None:
    """
    The export is a JSON download of the account, its sessions and its
    security log (with the sections for approvals, sites and upstream
    identities), without the password hash or any session token.
    """
    laptop = browser(node, FIREFOX)
    laptop.sign_up("a@example.com", PASSWORD)
    response = laptop.get("/account/export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert "attachment" in response.headers["content-disposition"]
    found = response.json()
    assert found["format"] == "clickpass-account-export/1"
    assert found["account"]["email"] == "a@example.com"
    assert [s["browser"] for s in found["sessions"]] == ["Firefox on Linux"]
    # Newest first: the address confirmed by the mailed link, signed in to do it.
    assert [e["kind"] for e in found["security_events"]] == ["email_verified", "signin", "signup"]
    for key in (
        "approvals",
        "connected_sites",
        "site_identifiers",
        "upstream_identities",
        "partner_sites_administered",
    ):
        assert found[key] == []
    text = response.text
    assert "argon2" not in text
    assert laptop.session.cookies["cp_session"] not in text
    assert browser(node, FIREFOX).get("/account/export", allow_redirects=False).status_code == 303


def test_delete_account_needs_the_password_and_frees_the_address(node: NodeProcess) -> None:
    """
    Deleting asks for the password again (a wrong one changes nothing);
    the right one removes the account, ends every session, and the
    address can be used for a new account, which starts empty.
    """
    laptop, phone = browser(node, FIREFOX), browser(node, SAFARI)
    laptop.sign_up("a@example.com", PASSWORD)
    phone.sign_in("a@example.com", PASSWORD)
    page = laptop.get("/account/delete")
    assert page.status_code == 200 and "cannot be undone" in page.text
    wrong = laptop.post(
        "/account/delete", {"password": "not my password", "csrf_token": csrf_token(page.text)}
    )
    assert wrong.status_code == 400 and "That is not your password." in wrong.text
    assert signed_in(laptop) and signed_in(phone)

    answer = laptop.post(
        "/account/delete",
        {"password": PASSWORD, "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/account/deleted"
    assert "Your account is deleted" in laptop.get("/account/deleted").text
    assert not signed_in(laptop) and not signed_in(phone)
    assert browser(node, FIREFOX).sign_in("a@example.com", PASSWORD).status_code == 401

    fresh = browser(node, FIREFOX)
    assert fresh.sign_up("a@example.com", PASSWORD).status_code == 200
    found = fresh.get("/account/export").json()
    # Newest first: the address confirmed by the mailed link, signed in to do it.
    assert [e["kind"] for e in found["security_events"]] == ["email_verified", "signin", "signup"]
    assert len(found["sessions"]) == 1


def test_sign_ups_from_one_address_are_limited(node: NodeProcess) -> None:
    """
    Past the limit per address, a sign-up is answered 429 with Retry-After
    and a page saying when to try again; no account is created.
    """
    for i in range(3):
        assert browser(node, FIREFOX).sign_up(f"p{i}@example.com", PASSWORD).status_code == 200
    refused = browser(node, FIREFOX).sign_up("p3@example.com", PASSWORD)
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 3600
    assert "Too many accounts were created from here recently" in refused.text
    assert browser(node, FIREFOX).sign_in("p3@example.com", PASSWORD).status_code == 401


def test_operators_list_show_sessions_enable_and_delete(node: NodeProcess) -> None:
    """
    clickpass-ctl user list/show/sessions/disable/enable/delete against the
    running node: what a person did is visible, a disabled account is
    enabled again, and deletion needs --yes and frees the address.
    """
    laptop = browser(node, FIREFOX)
    laptop.sign_up("a@example.com", PASSWORD)
    browser(node, SAFARI).sign_up("b@example.org", PASSWORD)

    listed = node.ctl("user", "list").stdout
    assert "a@example.com" in listed and "b@example.org" in listed
    only = json.loads(node.ctl("--json", "user", "list", "--match", "example.org").stdout)
    assert [a["email"] for a in only["accounts"]] == ["b@example.org"]
    paged = json.loads(node.ctl("--json", "user", "list", "--limit", "1").stdout)
    assert [a["email"] for a in paged["accounts"]] == ["a@example.com"] and paged["more"]

    shown = node.ctl("user", "show", "A@Example.com").stdout
    assert "a@example.com" in shown and "active" in shown
    assert "Account created" in shown and "Signed in" in shown
    sessions = node.ctl("user", "sessions", "a@example.com").stdout
    assert "Firefox on Linux" in sessions and "127.0.0.1" in sessions

    node.ctl("user", "disable", "a@example.com")
    assert not signed_in(laptop)
    assert "disabled" in node.ctl("user", "show", "a@example.com").stdout
    assert "has no sessions" in node.ctl("user", "sessions", "a@example.com").stdout
    node.ctl("user", "enable", "a@example.com")
    assert browser(node, FIREFOX).sign_in("a@example.com", PASSWORD).status_code == 200
    assert "Account enabled by an operator" in node.ctl("user", "show", "a@example.com").stdout

    unconfirmed = node.ctl("user", "delete", "a@example.com", check=False)
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert "a@example.com" in node.ctl("user", "list").stdout
    deleted = node.ctl("user", "delete", "a@example.com", "--yes").stdout
    assert deleted.strip() == "deleted a@example.com; partner sites told: none"
    assert "a@example.com" not in node.ctl("user", "list").stdout
    assert browser(node, FIREFOX).sign_up("a@example.com", PASSWORD).status_code == 200


BAD_INPUT = [
    (("user", "show", "nobody@example.com"), "no account with email nobody@example.com"),
    (("user", "enable", "nobody@example.com"), "no account with email nobody@example.com"),
    (("user", "sessions", "not-an-address"), "does not look like an email address"),
    (("user", "delete", "nobody@example.com", "--yes"), "no account with email"),
    (("user", "list", "--limit", "0"), "limit must be a whole number from 1 to"),
]


def test_bad_operator_input_is_one_line(node: NodeProcess) -> None:
    """
    Unknown or malformed addresses and bad limits get one error line and
    exit status 1, and the node goes on answering.
    """
    for args, error in BAD_INPUT:
        result = node.ctl(*args, check=False)
        assert result.returncode == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("clickpass-ctl: "), result.stderr
        assert error in lines[0], (args, lines[0])
    assert node.ctl("status").returncode == 0

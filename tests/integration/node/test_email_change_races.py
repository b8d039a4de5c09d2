"""
Changing the address when someone else gets it first, through a real node
on SQLite and on MariaDB: the address taken between the request and the
confirmation, and two accounts confirming a move to one address at the
same moment. The person is told on a page that says what happened and
what to do next; never a server error, never two accounts on one address.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.browser import Browser, csrf_token
from tests.support.mailbox import link_in, maildir_of, wait_for_message
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
ROUNDS = 3


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """One node per backend, two workers (the racing confirmations may land on either)."""
    server = request.getfixturevalue("mariadb_server") if request.param == "mysql" else None
    tmp: Path = tmp_path_factory.mktemp("email-race-node")
    with running_node(tmp, "\n[mail]\npoll_interval = 0.2\n", server, "race", workers=2) as proc:
        yield proc


_count = 0


def fresh_email(name: str) -> str:
    global _count
    _count += 1
    return f"{name}{_count}-{id(object()):x}@example.org"


def signed_in(node: NodeProcess, email: str) -> Browser:
    """A verified account made by the operator, signed in in a fresh browser."""
    node.ctl("user", "add", email, "--password-stdin", "--verified", input=PASSWORD + "\n")
    browser = Browser(node.url)
    response = browser.sign_in(email, PASSWORD)
    assert response.ok and "/account" in response.url, response.text[:2000]
    return browser


def ask_to_move(browser: Browser, new: str) -> None:
    sent = browser.submit(
        "/account/email", "/account/email", {"email": new, "current_password": PASSWORD}
    )
    assert 'id="email-sent"' in sent.text, sent.text[:2000]


def assert_taken_page(page: requests.Response, address: str) -> None:
    assert page.status_code == 409, (page.status_code, page.text[:2000])
    assert 'id="email-taken"' in page.text, page.text[:2000]
    assert f"{address} became the address of another Clickpass account" in page.text
    assert 'href="/account/email"' in page.text


def confirm_at_once(
    browsers: dict[str, Browser], forms: dict[str, dict[str, str]]
) -> dict[str, requests.Response]:
    """Post each browser's confirmation form at the same moment; the answers by name."""
    start = threading.Barrier(len(browsers))

    def confirm(name: str) -> requests.Response:
        start.wait(30)
        return browsers[name].post("/email/confirm", forms[name], allow_redirects=False, timeout=60)

    with ThreadPoolExecutor(len(browsers)) as pool:
        return dict(zip(browsers, pool.map(confirm, browsers), strict=True))


def test_an_address_taken_before_the_confirmation_gets_a_page_saying_so(
    node: NodeProcess,
) -> None:
    """
    Ann asks to move to an address; before she opens the link, someone
    signs up with it. Opening the link says the address was taken and
    offers another address, rather than a button that can only fail; the
    form posted anyway gets the same page (409). Her address is unchanged.
    """
    old, new = fresh_email("ann"), fresh_email("new")
    ann = signed_in(node, old)
    ask_to_move(ann, new)
    link = link_in(wait_for_message(maildir_of(node), new, "Confirm your new"), "email/confirm")
    Browser(node.url).sign_up(new, "somebody else's password", verify=False)

    page = ann.get(link)
    assert_taken_page(page, new)
    assert 'id="confirm"' not in page.text
    posted = ann.post(
        "/email/confirm",
        {"t": link.split("t=", 1)[1], "csrf_token": csrf_token(ann.get("/account").text)},
    )
    assert_taken_page(posted, new)
    account = ann.get("/account")
    assert account.ok and old in account.text


def test_two_accounts_confirming_one_address_at_once(node: NodeProcess) -> None:
    """
    Ann and Bob each ask to move to the same address (its mailbox gets
    both links) and confirm at the same moment, three times over: each
    time one of them gets the address and the other a page saying it was
    taken (409), never a server error; the address has one account.
    """
    for _ in range(ROUNDS):
        shared = fresh_email("shared")
        people = {"ann": fresh_email("ann"), "bob": fresh_email("bob")}
        browsers = {name: signed_in(node, email) for name, email in people.items()}
        forms = {}
        for count, (name, browser) in enumerate(browsers.items(), start=1):
            ask_to_move(browser, shared)
            link = link_in(
                wait_for_message(maildir_of(node), shared, "Confirm your new", count=count),
                "email/confirm",
            )
            page = browser.get(link)
            assert 'id="confirm"' in page.text, page.text[:2000]
            forms[name] = {"t": link.split("t=", 1)[1], "csrf_token": csrf_token(page.text)}
        answers = confirm_at_once(browsers, forms)
        statuses = sorted(a.status_code for a in answers.values())
        shown = {n: (a.status_code, a.text[:500]) for n, a in answers.items()}
        assert statuses == [303, 409], shown
        (winner,) = [n for n, a in answers.items() if a.status_code == 303]
        (loser,) = [n for n, a in answers.items() if a.status_code == 409]
        assert_taken_page(answers[loser], shared)
        assert shared in browsers[winner].get("/account").text
        assert people[loser] in browsers[loser].get("/account").text

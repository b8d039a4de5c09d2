"""
The passkey challenges the sign-in page's script asks for, through a real
node on both storage backends: one client address gets a limited number
(then 429 with Retry-After and one sentence), and one browser session
holds a few at most, its oldest replaced.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.integration.openid.conftest import OPENID_CONFIG
from tests.support.browser import Browser, csrf_token
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

LIMIT = 12
CONFIG = OPENID_CONFIG + f"\n[mfa]\nwebauthn_challenges_per_address = {LIMIT}\n"


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """A node that gives one address few challenges, on SQLite and on MariaDB."""
    server: MariaDBServer | None = None
    if request.param == "mysql":
        server = request.getfixturevalue("mariadb_server")
    with running_node(tmp_path_factory.mktemp("challenges"), CONFIG, server, "chal") as proc:
        yield proc


def ask(browser: Browser, keep_cookie: bool) -> requests.Response:
    """What the sign-in page's script does: POST for a passkey sign-in's options."""
    page = browser.get("/signin")
    answer = browser.post("/signin/passkey/options", {"csrf_token": csrf_token(page.text)})
    if not keep_cookie:
        browser.session.cookies.pop("cp_passkey", None)
    return answer


def test_one_address_gets_a_limited_number_of_challenges(node: NodeProcess) -> None:
    """
    A client showing the sign-in page again and again, its passkey cookie
    dropped each time, gets challenges up to the limit, then 429 with
    Retry-After and a one-line error, as JSON; nothing breaks.
    """
    browser = Browser(node.url)
    answers = [ask(browser, keep_cookie=False) for _ in range(LIMIT + 5)]
    assert [a.status_code for a in answers[:LIMIT]] == [200] * LIMIT
    for refused in answers[LIMIT:]:
        assert refused.status_code == 429, refused.text
        assert 0 < int(refused.headers["retry-after"]) <= 300
        assert refused.json()["error"].startswith("Too many passkey requests from your network.")
    page = browser.get("/signin")
    assert page.status_code == 200

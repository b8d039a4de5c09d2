"""
The web kernel stands alone: the account pages serve with no feature
installed, and a feature's part of the account page appears when, and only
when, the application gives it (clickpass.web.pages.AccountSection).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, DictLoader

import treq

from clickpass import config as configmod
from clickpass.accounts.service import Account
from clickpass.balancer.forwarding import CLIENT_HEADER
from clickpass.storage.sql import AdbapiStorage
from clickpass.web import pages
from clickpass.web.app import AppSite, WebApp
from clickpass.web.routing import Router
from tests.support.deferreds import async_test

PASSWORD = "correct horse battery"


@async_test
async def test_account_pages_serve_with_only_the_sections_given(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    With no feature, the home page has no discovery tags and the account page
    shows the person's email and nothing else; with one section given, the
    account page also shows that section, filled for the signed-in person.
    """
    settings = configmod.parse({"node": {"data_dir": str(tmp_path)}})
    app = WebApp(reactor, settings, storage_backend, b"s" * 32, client_header=CLIENT_HEADER)
    loader = app.templates.loader
    assert loader is not None
    app.templates.loader = ChoiceLoader(
        [loader, DictLoader({"feature.html": '<p id="feature">{{ feature_says }}</p>'})]
    )
    account = await app.accounts.sign_up("ann@example.org", PASSWORD)
    token = await app.accounts.start_session(account, "192.0.2.1")
    cookie: dict[bytes | str, bytes | str] = {"Cookie": f"cp_session={token}"}
    asked: list[int] = []

    async def feature_context(who: Account) -> dict[str, Any]:
        asked.append(who.id)
        return {"feature_says": "hello from a feature"}

    section = pages.AccountSection("feature.html", feature_context)
    for sections in ((), (section,)):
        router = Router()
        pages.install(app, router, account_sections=sections)
        port = reactor.listenTCP(0, AppSite(router, app), interface="127.0.0.1")
        base = f"http://127.0.0.1:{port.getHost().port}"
        try:
            home = await treq.get(base + "/", allow_redirects=False)
            home_body = (await home.content()).decode("utf-8")
            page = await treq.get(base + "/account", headers=cookie, allow_redirects=False)
            body = (await page.content()).decode("utf-8")
        finally:
            await port.stopListening()
        assert home.code == 200 and "openid2.provider" not in home_body
        assert page.code == 200 and "ann@example.org" in body
        assert ('<p id="feature">hello from a feature</p>' in body) == bool(sections)
    assert asked == [account.id]

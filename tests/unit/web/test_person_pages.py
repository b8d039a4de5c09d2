"""
What the person's pages say around the forms: the site a sign-in continues
to, the footer's privacy, terms and help pages (shipped, an operator's file,
or an operator's URL), the page after signing out, and the notices a page
shows after an action (only from a fixed list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import treq

from clickpass import config as configmod
from clickpass.balancer.forwarding import CLIENT_HEADER
from clickpass.storage.sql import AdbapiStorage
from clickpass.web import pages
from clickpass.web.app import AppSite, WebApp, footer_links
from clickpass.web.routing import Router
from tests.support.deferreds import async_test

OPENID = "/openid?openid.mode=checkid_setup&openid.return_to="


@pytest.mark.parametrize(
    ("next_url", "host"),
    [
        (
            OPENID + quote("https://shop.example/back?x=1") + "&openid.realm=https://shop.example/",
            "shop.example",
        ),
        ("/openid?openid.realm=" + quote("https://*.example.org/"), "example.org"),
        ("/openid?openid.trust_root=http://old.example/", "old.example"),
        (
            "/oidc/authorize?client_id=c&redirect_uri=" + quote("https://app.example/cb"),
            "app.example",
        ),
        ("/account", None),
        ("/openid?openid.realm=not%20a%20url", None),
        ("/openid?openid.realm=http://[bad/", None),
    ],
)
def test_destination_host(next_url: str, host: str | None) -> None:
    """The host of the realm (its wildcard's domain), return_to or redirect_uri; else None."""
    assert pages.destination_host(next_url) == host


def test_footer_links_follow_the_settings() -> None:
    """A URL setting is linked as it is; a file or nothing is served here."""
    settings = configmod.parse(
        {"web": {"privacy_page": "https://corp.example/privacy", "help_page": "help.html"}}
    )
    assert [(link.name, link.url) for link in footer_links(settings)] == [
        ("privacy", "https://corp.example/privacy"),
        ("terms", "/terms"),
        ("help", "/help"),
    ]


def test_a_missing_page_file_is_one_line_at_start(tmp_path: Path) -> None:
    """A page file that cannot be read stops the node with one line naming the key."""
    settings = configmod.parse(
        {"node": {"data_dir": str(tmp_path)}, "web": {"terms_page": "terms.html"}}
    )
    with pytest.raises(configmod.ConfigError, match=r"^\[web\] terms_page: file .* not found$"):
        configmod.check_files(settings)


async def _get(reactor: Any, app: WebApp, *paths: str) -> list[tuple[int, dict[str, str], str]]:
    router = Router()
    pages.install(app, router)
    port = reactor.listenTCP(0, AppSite(router, app), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    answers = []
    try:
        for path in paths:
            response = await treq.get(base + path, allow_redirects=False)
            headers = {
                k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()
            }
            answers.append((response.code, headers, (await response.content()).decode()))
    finally:
        await port.stopListening()
    return answers


@async_test
async def test_shipped_operator_file_and_url_pages(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    The shipped privacy page by default; the operator's file inside the
    layout (with the footer); a redirect to the operator's URL.
    """
    (tmp_path / "terms.html").write_text('<h1 id="corp-terms">Corp terms</h1>\n')
    settings = configmod.parse(
        {
            "node": {"data_dir": str(tmp_path)},
            "web": {"terms_page": "terms.html", "help_page": "https://corp.example/help"},
        }
    )
    app = WebApp(reactor, settings, storage_backend, b"s" * 32, client_header=CLIENT_HEADER)
    privacy, terms, help_page = await _get(reactor, app, "/privacy", "/terms", "/help")
    assert privacy[0] == 200 and 'id="info-privacy"' in privacy[2]
    assert terms[0] == 200 and '<h1 id="corp-terms">Corp terms</h1>' in terms[2]
    assert 'href="/privacy"' in terms[2] and 'href="https://corp.example/help"' in terms[2]
    assert help_page[0] == 302 and help_page[1]["location"] == "https://corp.example/help"


@async_test
async def test_signed_out_page_and_notices(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    /signed-out says so; ?done= shows a notice from the fixed list only,
    never text from the address.
    """
    settings = configmod.parse({"node": {"data_dir": str(tmp_path)}})
    app = WebApp(reactor, settings, storage_backend, b"s" * 32, client_header=CLIENT_HEADER)
    out, known, unknown = await _get(
        reactor, app, "/signed-out", "/?done=site-disconnected", "/?done=You+won+a+prize"
    )
    assert out[0] == 200 and "You are signed out" in out[2]
    assert 'id="notice"' in known[2] and "Disconnected." in known[2]
    assert 'id="notice"' not in unknown[2] and "prize" not in unknown[2]


@async_test
async def test_a_refused_sign_in_keeps_the_keep_choice(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """The sign-in form shown again after a wrong password keeps "Keep me signed in" as it was."""
    settings = configmod.parse({"node": {"data_dir": str(tmp_path)}})
    app = WebApp(reactor, settings, storage_backend, b"s" * 32, client_header=CLIENT_HEADER)
    router = Router()
    pages.install(app, router)
    port = reactor.listenTCP(0, AppSite(router, app), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        form = await treq.get(base + "/signin")
        body = (await form.content()).decode()
        csrf = body.split('name="csrf_token" value="')[1].split('"')[0]
        cookies = form.cookies()
        answers = []
        for keep in ("yes", ""):
            response = await treq.post(
                base + "/signin",
                data={"csrf_token": csrf, "email": "no@example.org", "password": "x", "keep": keep},
                cookies=cookies,
            )
            answers.append((response.code, (await response.content()).decode()))
    finally:
        await port.stopListening()
    (code_kept, kept), (code_not, not_kept) = answers
    assert code_kept == code_not == 401
    assert 'name="keep" value="yes" checked' in kept
    assert 'name="keep" value="yes" checked' not in not_kept and 'name="keep"' in not_kept

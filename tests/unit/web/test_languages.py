"""
The language of the pages: English by default, German or Spanish from
Accept-Language or the footer's switcher (remembered in a cookie), with
anything unknown or malformed falling back to English, never an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import treq

from clickpass import config as configmod
from clickpass.balancer.forwarding import CLIENT_HEADER
from clickpass.storage.sql import AdbapiStorage
from clickpass.web import pages
from clickpass.web.app import AppSite, WebApp
from clickpass.web.routing import Router
from tests.support.deferreds import async_test

Answer = tuple[int, dict[str, list[str]], str]


async def _ask(
    reactor: Any,
    app: WebApp,
    method: str,
    path: str,
    headers: dict[bytes | str, bytes | str] | None = None,
    data: dict[str, str] | None = None,
) -> Answer:
    router = Router()
    router.on_request = app.choose_language
    router.error_page = app.error_page
    pages.install(app, router)
    port = reactor.listenTCP(0, AppSite(router, app), interface="127.0.0.1")
    host = f"127.0.0.1:{port.getHost().port}"
    # "{host}" in a header (a Referer) is this listener's host.
    sent: dict[bytes | str, bytes | str] = {
        k: v.replace("{host}", host) if isinstance(v, str) else v
        for k, v in (headers or {}).items()
    }
    try:
        response = await treq.request(
            method,
            f"http://{host}{path}",
            headers=sent,
            data=data,
            allow_redirects=False,
        )
        found: dict[str, list[str]] = {}
        for k, v in response.headers.getAllRawHeaders():
            found[k.decode().lower()] = [x.decode() for x in v]
        return response.code, found, (await response.content()).decode()
    finally:
        await port.stopListening()


def _app(reactor: Any, storage: AdbapiStorage, tmp_path: Path) -> WebApp:
    settings = configmod.parse({"node": {"data_dir": str(tmp_path)}})
    return WebApp(reactor, settings, storage, b"s" * 32, client_header=CLIENT_HEADER)


@async_test
async def test_accept_language_and_cookie(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    Accept-Language: de gives the German page (html lang, Content-Language);
    the cookie (es) wins over the header; English when neither says.
    """
    app = _app(reactor, storage_backend, tmp_path)
    english = await _ask(reactor, app, "GET", "/signin")
    assert '<html lang="en">' in english[2] and "Sign in to Clickpass" in english[2]
    german = await _ask(reactor, app, "GET", "/signin", {"Accept-Language": "de-DE,de;q=0.9"})
    assert german[0] == 200
    assert '<html lang="de">' in german[2] and german[1]["content-language"] == ["de"]
    assert "Bei Clickpass anmelden" in german[2] and "Passwort vergessen?" in german[2]
    assert "Sign in to Clickpass" not in german[2]
    spanish = await _ask(
        reactor, app, "GET", "/signin", {"Accept-Language": "de", "Cookie": "cp_lang=es"}
    )
    assert '<html lang="es">' in spanish[2] and "Iniciar sesión en Clickpass" in spanish[2]
    # The switcher on the page: the current language selected.
    assert '<option value="es" lang="es" selected>Español</option>' in spanish[2]


@async_test
async def test_bad_input_falls_back_to_english(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """Garbage Accept-Language, an unknown or odd cookie value: the English page, status 200."""
    app = _app(reactor, storage_backend, tmp_path)
    bad: tuple[dict[bytes | str, bytes | str], ...] = (
        {"Accept-Language": ";;q=zz,,*;q=-1, fr-CA" + ", x" * 5000},
        {"Cookie": "cp_lang=fr"},
        {"Cookie": "cp_lang=../../etc"},
        {"Cookie": "cp_flow_lang=klingon; cp_lang=DE"},
    )
    for headers in bad:
        code, _, body = await _ask(reactor, app, "GET", "/signin", headers)
        assert code == 200 and '<html lang="en">' in body and "Sign in to Clickpass" in body


@async_test
async def test_error_pages_are_translated(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """A 404 outside any handler, in the browser's language."""
    app = _app(reactor, storage_backend, tmp_path)
    code, _, body = await _ask(reactor, app, "GET", "/no-such-page", {"Accept-Language": "es"})
    assert code == 404
    assert "No encontrado" in body and "No hay nada en esta dirección." in body


@async_test
async def test_the_switcher_remembers_the_choice(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    POST /language sets cp_lang (a year, HttpOnly, SameSite=Lax) and goes
    back to the page; an unknown language changes nothing; a form from
    elsewhere (no CSRF cookie) is refused.
    """
    app = _app(reactor, storage_backend, tmp_path)
    page = await _ask(reactor, app, "GET", "/signin?next=/account")
    csrf_cookie = next(c for c in page[1]["set-cookie"] if c.startswith("cp_csrf="))
    cookie = csrf_cookie.split(";", 1)[0]
    token = page[2].split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = {"csrf_token": token, "language": "de"}

    async def switch(referer: str, data: dict[str, str]) -> Answer:
        # The host as the browser names it (the listener's, in the Referer too).
        return await _ask(
            reactor, app, "POST", "/language", {"Cookie": cookie, "Referer": referer}, data
        )

    code, headers, _ = await switch("http://{host}/signin?next=/account&done=x", form)
    assert code == 303 and headers["location"] == ["/signin?next=/account"]
    (set_lang,) = [c for c in headers["set-cookie"] if c.startswith("cp_lang=")]
    assert set_lang.startswith("cp_lang=de;")
    assert "Max-Age=31536000" in set_lang and "SameSite=lax" in set_lang
    assert "HttpOnly" in set_lang and "Secure" not in set_lang
    german = await _ask(reactor, app, "GET", "/signin", {"Cookie": "cp_lang=de"})
    assert "Bei Clickpass anmelden" in german[2]

    # Another site's page, or an unknown language: home, nothing set.
    code, headers, _ = await switch("https://evil.example/x", dict(form, language="fr"))
    assert code == 303 and headers["location"] == ["/"]
    assert not [c for c in headers.get("set-cookie", []) if c.startswith("cp_lang=")]

    code, _, _ = await _ask(reactor, app, "POST", "/language", {}, form)
    assert code == 403

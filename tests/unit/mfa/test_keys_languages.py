"""
What the person is told about passkeys and security keys, in their
language: a refusal of the options (JSON, which webauthn.js shows), a
refusal shown on the page, and the words webauthn.js says itself (carried
by the page), in German; a count in Spanish.
"""

from __future__ import annotations

import contextvars
import json
from html import unescape
from pathlib import Path
from typing import Any

from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from clickpass import config as configmod
from clickpass import i18n
from clickpass.balancer.forwarding import CLIENT_HEADER
from clickpass.mfa import keys
from clickpass.mfa import web as mfa_web
from clickpass.mfa.ceremony import CeremonyRefused
from clickpass.mfa.keys import CONFIRM, ChallengesThrottled, SecurityKeys
from clickpass.mfa.keys_web import KeyPages
from clickpass.mfa.service import SecondFactors
from clickpass.mfa.settings import MfaSettings
from clickpass.storage.sql import AdbapiStorage
from clickpass.web.app import WebApp
from clickpass.web.routing import Router
from tests.support.deferreds import async_test
from tests.unit.mfa.authenticator import SoftAuthenticator
from tests.unit.mfa.test_keys import ADDR, HERE, RP, SESSION, _add
from tests.unit.mfa.test_service import MASTER, FakeClock

# What the pages and webauthn.js said in English only, before.
ENGLISH = (
    "This needs a security key or passkey bound to one device",
    "Give the key a name of 1 to",
    "The request was cancelled or timed out",
    "That key is registered already",
    "No key answered",
    "Something went wrong. Try again.",
    "Clickpass could not start",
)


def _pages(tmp_path: Path, storage: AdbapiStorage, reactor: Any) -> KeyPages:
    settings = configmod.parse({"node": {"data_dir": str(tmp_path)}})
    app = WebApp(reactor, settings, storage, b"s" * 32, client_header=CLIENT_HEADER)
    # As a node installs them (the templates of the second factors' pages too).
    web = mfa_web.install(
        app, Router(), SecondFactors(storage, settings.mfa, b"s" * 32, None, FakeClock())
    )
    return KeyPages(web, SecurityKeys(storage, MfaSettings(), RP, MASTER, clock=FakeClock()))


def _browser(pages: KeyPages, language: str) -> Request:
    """A request from a browser whose Accept-Language names C{language}, its language chosen."""
    request = Request(DummyChannel())
    request.requestHeaders.setRawHeaders(b"accept-language", [language.encode("ascii")])
    pages.app.choose_language(request)
    return request


@async_test
async def test_a_refusal_in_german_json_and_page(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    A step needing a device-bound key, for a person with only a synced
    passkey: the options are refused with the German sentence (JSON, as
    webauthn.js shows it). A key name that is too long is refused on the
    page in German, with its limit; the page gives webauthn.js its own
    sentences in German; none of the English ones is left.
    """
    pages = _pages(tmp_path, storage_backend, reactor)
    account_id = await storage_backend.run(_add, "uid-de", "dora@example.com")
    phone = SoftAuthenticator(RP.origin, RP.rp_id, synced=True)
    options = await pages.keys.registration_options(
        account_id, "dora@example.com", SESSION, True, ADDR
    )
    await pages.keys.register(account_id, SESSION, phone.create(options), "Handy", True, HERE)
    try:
        await pages.keys.assertion_options(CONFIRM, SESSION, account_id, ADDR, device_bound=True)
    except CeremonyRefused as e:
        refused = e
    assert refused.message == keys.DEVICE_BOUND_NEEDED

    def answer() -> tuple[Request, dict[str, str]]:
        request = _browser(pages, "de-DE,de;q=0.9,en;q=0.5")
        return request, json.loads(pages.refused(request, refused))

    request, body = contextvars.copy_context().run(answer)
    assert request.code == 400
    assert body["error"] == (
        "Hierfür ist ein Sicherheitsschlüssel oder Passkey nötig, der an ein Gerät gebunden "
        "ist, kein synchronisierter Passkey: Verwenden Sie einen solchen Schlüssel."
    )

    try:
        await pages.keys.register(account_id, SESSION, "{}", "x" * 65, False, HERE)
    except CeremonyRefused as e:
        named = e

    def page() -> str:
        request = _browser(pages, "de")
        return unescape(pages.new_page(request, False, named.message, "x" * 65).decode())

    html = contextvars.copy_context().run(page)
    assert '<html lang="de">' in html
    assert "Geben Sie dem Schlüssel einen Namen mit 1 bis 64 Zeichen" in html
    assert 'data-cancelled="Die Anfrage wurde abgebrochen oder ist abgelaufen.' in html
    assert 'data-no-answer="Kein Schlüssel hat geantwortet. Versuchen Sie es erneut."' in html
    for english in ENGLISH:
        assert english not in html, english


def test_the_wait_is_counted_in_spanish() -> None:
    """The throttle's wait, in minutes, in Spanish: one minute, or a plural."""

    def said(seconds: int) -> str:
        i18n.current.set("es")
        return i18n.translate(ChallengesThrottled(seconds).message)

    assert (
        contextvars.copy_context()
        .run(said, 30)
        .startswith("Demasiadas solicitudes de llaves de acceso desde su red. Espere un minuto")
    )
    assert "Espere 3 minutos y vuelva a intentarlo" in contextvars.copy_context().run(said, 150)
    # The English sentence is kept for the log and the partner API.
    assert "Wait 3 minutes" in ChallengesThrottled(150).message

"""
The partner console and an OpenID refusal page in the person's language,
through a real node: the console in German (the switcher's cookie) and in
Spanish (Accept-Language), its pages, form errors, one-page notices and
verification problems; the page refusing an OpenID request that quotes
the request, in German, while a relying party's direct (key-value) answer
keeps the spec's English.
"""

from __future__ import annotations

from html import unescape
from urllib.parse import urlencode

import pytest
import requests

from tests.integration.partners.conftest import register_site
from tests.support.browser import csrf_token
from tests.support.node import NodeProcess, free_port

pytestmark = pytest.mark.integration

OPENID2 = "http://specs.openid.net/auth/2.0"
SELECT = OPENID2 + "/identifier_select"

# What the console said in English only, before: none of it may be left.
ENGLISH = (
    "Partner console",
    "Your sites",
    "Register a site",
    "Register your website with Clickpass",
    "integration guide",
    "Site name",
    "Logo URL",
    "Allowed return_to URLs",
    "Registration URL",
    "Connect URL",
    "Profile fields",
    "Ask for",
    "Realm ownership",
    "Not verified yet",
    "Publish this token",
    "press Verify",
    ">Verify<",
    "Save settings",
    "Second factor",
    "Require a second factor",
    "API keys",
    "API base URL",
    "Label for a new key",
    "Create an API key",
    "Signing secret",
    "Change the signing secret",
    "No webhook events yet",
    "Open deletion requests",
    "None.",
    "Invite an admin",
    "Create an invitation link",
    "Delete this site",
    "Deleting ends every person",
    ">Copy<",
    'data-copied="Copied"',
    "(you)",
    "Last check",
    "could not verify",
    "could not be reached",
    "Settings saved",
    "The webhook secret was changed",
    "Verify that you control",
    "This cannot be undone",
    "its API keys stop working",
    "To confirm, type",
    "Keep the site",
    "Nothing was deleted",
    "must stay on",
    "is outside the realm",
    "now requires a second factor",
)


def english_left(html: str) -> list[str]:
    return [english for english in ENGLISH if english in html]


def test_the_console_in_german(node: NodeProcess) -> None:
    """
    With the switcher's cp_lang=de, every console page is German: the list,
    the registration form, a site's page, a settings error, a failed
    verification (at once and as the last check), a notice after a form,
    an action refused, and the deletion page with its refusal. No English
    sentence of the console is left on any of them.
    """
    realm = f"http://127.0.0.4:{free_port()}/"
    site = register_site(node, realm, name="Laden Müller")
    admin = site.admin
    admin.session.cookies.set("cp_lang", "de")
    page_path = f"/partners/{site.public_id}"

    listing = unescape(admin.get("/partners").text)
    assert '<html lang="de">' in listing
    for german in ("Partnerkonsole", "Ihre Websites", "Website registrieren", "Laden Müller"):
        assert german in listing, german
    assert english_left(listing) == []

    new = unescape(admin.get("/partners/new").text)
    for german in ("Name der Website", "Logo-URL (https, quadratisch)", "Profilfelder"):
        assert german in new, german
    assert 'aria-label="E-Mail-Adresse abfragen"' in new
    assert english_left(new) == []

    page = admin.get(page_path)
    shown = unescape(page.text)
    for german in (
        "Inhaberschaft des Realms",
        "Noch nicht verifiziert.",
        "Einstellungen speichern",
        "API-Schlüssel erstellen",
        "Signaturgeheimnis ändern",
        "Offene Löschanfragen",
        "Diese Website löschen",
        'data-copied="Kopiert"',
        ">Kopieren<",
    ):
        assert german in shown, german
    assert english_left(shown) == []

    # A settings error: the realm may not move to another host.
    moved = admin.post(
        page_path + "/settings",
        {
            "csrf_token": csrf_token(page.text),
            "name": "Laden Müller",
            "realm": "http://other.example/",
            "return_to_urls": "http://other.example/return",
        },
    )
    assert moved.status_code == 400
    error = unescape(moved.text)
    assert "Der Realm muss auf 127.0.0.4 bleiben: Die Kennungen gehören zu diesem Host." in error
    assert english_left(error) == []

    # A failed verification: why, in German, once; then as the last check.
    url = realm + ".well-known/clickpass-verification.txt"
    failed = admin.post(page_path + "/verify", {"csrf_token": csrf_token(page.text)})
    failed_text = unescape(failed.text)
    assert (
        f"Clickpass konnte 127.0.0.4 nicht verifizieren: {url} war nicht erreichbar." in failed_text
    ), failed_text[:3000]
    assert english_left(failed_text) == []
    reloaded = unescape(admin.get(page_path).text)
    assert f"Letzte Prüfung: {url} war nicht erreichbar." in reloaded
    assert english_left(reloaded) == []

    # A notice after a form, and an action refused, on the next page.
    rotated = admin.post(page_path + "/webhook-secret", {"csrf_token": csrf_token(page.text)})
    assert "Das Webhook-Geheimnis wurde geändert." in unescape(rotated.text)
    keyless = admin.post(page_path + "/keys", {"csrf_token": csrf_token(page.text), "label": "x"})
    refused = unescape(keyless.text)
    assert "Weisen Sie zuerst nach, dass Sie 127.0.0.4 kontrollieren" in refused
    assert english_left(refused) == []

    deleting = admin.get(page_path + "/delete")
    delete_page = unescape(deleting.text)
    for german in (
        "Laden Müller löschen?",
        "Dies kann nicht rückgängig gemacht werden.",
        "Website behalten",
        "Geben Sie zur Bestätigung den Host der Website ein",
    ):
        assert german in delete_page, german
    assert english_left(delete_page) == []
    kept = admin.post(
        page_path + "/delete", {"csrf_token": csrf_token(deleting.text), "confirm": "wrong"}
    )
    assert kept.status_code == 400
    assert "Es wurde nichts gelöscht: Geben Sie zur Bestätigung 127.0.0.4 ein." in unescape(
        kept.text
    )


def test_the_console_in_spanish(node: NodeProcess) -> None:
    """
    With Accept-Language: es, a site's page, a settings error naming the
    setting and a notice after a form are in Spanish, with no English
    sentence of the console left.
    """
    realm = f"http://127.0.0.6:{free_port()}/"
    site = register_site(node, realm, name="Tienda Núñez")
    admin = site.admin
    admin.session.headers["Accept-Language"] = "es-ES,es;q=0.9"
    page_path = f"/partners/{site.public_id}"

    page = admin.get(page_path)
    shown = unescape(page.text)
    assert '<html lang="es">' in shown
    for spanish in (
        "Consola de socios",
        "Titularidad del dominio",
        "Guardar la configuración",
        "Crear una clave de API",
        "Eliminar este sitio",
    ):
        assert spanish in shown, spanish
    assert english_left(shown) == []

    outside = admin.post(
        page_path + "/settings",
        {
            "csrf_token": csrf_token(page.text),
            "name": "Tienda Núñez",
            "realm": realm,
            "return_to_urls": "http://elsewhere.example/back",
        },
    )
    assert outside.status_code == 400
    error = unescape(outside.text)
    assert (
        "El campo «URL return_to» (http://elsewhere.example/back) está fuera del dominio " + realm
        in error
    ), error[:3000]
    assert english_left(error) == []

    required = admin.post(
        page_path + "/second-factor", {"csrf_token": csrf_token(page.text), "required": "yes"}
    )
    assert "Iniciar sesión en este sitio ahora requiere un segundo factor." in unescape(
        required.text
    )
    assert english_left(unescape(required.text)) == []


def test_an_openid_refusal_quoting_the_request_in_german(node: NodeProcess) -> None:
    """
    A browser's OpenID request whose return_to is outside its realm gets the
    refusal page in German, quoting both addresses; a relying party's direct
    request answered with an error keeps the spec's key-value form, in
    English, whatever the Accept-Language.
    """
    query = {
        "openid.ns": OPENID2,
        "openid.mode": "checkid_setup",
        "openid.claimed_id": SELECT,
        "openid.identity": SELECT,
        "openid.realm": "https://shop.example/",
        "openid.return_to": "https://evil.example/back",
    }
    german = {"Accept-Language": "de-DE,de;q=0.9"}
    refused = requests.get(
        node.url + "openid?" + urlencode(query), headers=german, allow_redirects=False, timeout=30
    )
    assert refused.status_code == 400
    page = unescape(refused.text)
    assert '<html lang="de">' in page and "Anmeldung abgelehnt" in page
    assert (
        "Die Website wollte Sie zu https://evil.example/back zurückschicken; diese Adresse "
        "liegt außerhalb ihres eigenen Realms https://shop.example/. Zu Ihrem Schutz hat "
        "Clickpass abgelehnt. Bitte informieren Sie die Website." in page
    ), page[:3000]
    assert "The site asked to send you back" not in page

    direct = requests.post(
        node.url + "openid",
        data={"openid.ns": OPENID2, "openid.mode": "associate", "openid.assoc_type": "nonsense"},
        headers=german,
        timeout=30,
    )
    assert direct.headers["content-type"].startswith("text/plain")
    assert "error:" in direct.text and "Website" not in direct.text

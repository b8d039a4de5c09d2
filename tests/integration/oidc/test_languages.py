"""
The language of a sign-in's pages and mail, through a real node on SQLite
and MariaDB: a partner's ui_locales (OpenID Connect) or openid.ui.lang
(the OpenID 2.0 User Interface extension) gives the sign-in page and the
consent page in that language; a huge or unknown list falls back to
English; mail caused from a German page goes out in German.
"""

from __future__ import annotations

import email.header
import time
from email.message import Message
from urllib.parse import urlencode

import pytest
import requests

from tests.integration.oidc.harness import PASSWORD, Person, Provider, query_of
from tests.support.browser import Browser
from tests.support.mailbox import messages_to, text_of
from tests.support.node import maildir_for

pytestmark = pytest.mark.integration

IDENTIFIER_SELECT = "http://specs.openid.net/auth/2.0/identifier_select"


def _subject(message: Message) -> str:
    return str(email.header.make_header(email.header.decode_header(str(message["Subject"]))))


def _first_mail(provider: Provider, address: str, timeout: float = 60.0) -> Message:
    """The first message delivered to C{address}, whatever its language."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for maildir in maildir_for(provider.url):
            if (maildir / "new").is_dir():
                found = messages_to(maildir, address)
                if found:
                    return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no mail to {address} within {timeout}s")


def _page(person: Person, location: str) -> requests.Response:
    assert location.startswith("/"), location
    page = person.open(person.provider.url + location[1:])
    assert page.status_code == 200, page.text[:500]
    return page


def test_ui_locales_gives_the_flow_in_spanish(provider: Provider) -> None:
    """
    ui_locales=fr-CA es: the sign-in page and, after signing in, the
    consent page are Spanish (the first language Clickpass speaks).
    """
    client = provider.client("https://es.example.com/cb")
    person = Person(provider)
    # An account made beforehand, in English (its mail is another test's).
    assert person.browser.sign_up(person.email, PASSWORD).ok
    person.signed_up = True
    # Signed in already: prompt=login shows the sign-in page all the same.
    start = person.open(provider.authorize_url(client, ui_locales="fr-CA es", prompt="login"))
    assert start.status_code == 303
    signin = _page(person, start.headers["location"])
    assert '<html lang="es">' in signin.text and "Iniciar sesión en Clickpass" in signin.text
    back = person.sign_in_from(start)
    while back.status_code == 303 and back.headers["location"].startswith("/oidc/"):
        back = person.open(provider.url + back.headers["location"][1:])
    assert back.status_code == 200, back.text[:500]
    assert '<html lang="es">' in back.text and "Qué recibirá" in back.text


def test_discovery_lists_the_languages(provider: Provider) -> None:
    document = requests.get(provider.url + ".well-known/openid-configuration", timeout=30).json()
    assert document["ui_locales_supported"] == ["en", "de", "es"]


def test_a_huge_or_unknown_ui_locales_is_english(provider: Provider) -> None:
    """Thousands of tags, or none we speak: the English sign-in page, never an error."""
    client = provider.client("https://huge.example.com/cb")
    for wishes in ("x-klingon " * 1000 + "de", "fr ja", "\u00e9" * 100):
        person = Person(provider)
        start = person.open(provider.authorize_url(client, ui_locales=wishes))
        assert start.status_code == 303, start.text[:500]
        signin = _page(person, start.headers["location"])
        assert '<html lang="en">' in signin.text and "Sign in to Clickpass" in signin.text


def test_openid_ui_lang_gives_the_sign_in_page_in_german(provider: Provider) -> None:
    """A checkid_setup with the UI extension's lang=de: the sign-in page is German."""
    person = Person(provider)
    query = {
        "openid.ns": "http://specs.openid.net/auth/2.0",
        "openid.mode": "checkid_setup",
        "openid.identity": IDENTIFIER_SELECT,
        "openid.claimed_id": IDENTIFIER_SELECT,
        "openid.return_to": "http://127.0.0.1:9/back",
        "openid.realm": "http://127.0.0.1:9/",
        "openid.ns.ext9": "http://specs.openid.net/extensions/ui/1.0",
        "openid.ext9.lang": "de-CH",
    }
    start = person.open(provider.url + "openid?" + urlencode(query))
    assert start.status_code == 303, start.text[:500]
    assert start.headers["location"].startswith("/signin?")
    signin = _page(person, start.headers["location"])
    assert '<html lang="de">' in signin.text and "Bei Clickpass anmelden" in signin.text
    # A later flow that names no language: the person's own again (English).
    plain = {k: v for k, v in query.items() if "ext9" not in k}
    again = person.open(provider.url + "openid?" + urlencode(plain))
    assert "Sign in to Clickpass" in _page(person, again.headers["location"]).text


def test_the_verification_mail_is_german(provider: Provider) -> None:
    """Signing up from a German browser: the verification mail's subject and body are German."""
    browser = Browser(provider.url)
    browser.session.headers["Accept-Language"] = "de-DE,de;q=0.9,en;q=0.5"
    address = "sprache@example.com"
    page = browser.submit(
        "/signup",
        "/signup",
        {
            "email": address,
            "password": "a long enough password",
            "password_again": "a long enough password",
        },
    )
    assert 'id="signup-sent"' in page.text and "Sehen Sie in Ihr E-Mail-Postfach" in page.text
    message = _first_mail(provider, address)
    assert _subject(message) == "Bestätigen Sie Ihre E-Mail-Adresse für Clickpass"
    body = text_of(message)
    assert "Jemand (hoffentlich Sie) hat mit dieser Adresse ein" in body
    assert query_of(next(w for w in body.split() if "/verify?" in w))["t"]

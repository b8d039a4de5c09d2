"""
The languages: choosing one from what a browser or a partner sends (never
an error, whatever it sends), translating marked messages, and the
catalogs themselves (complete, current with the code and templates).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clickpass import i18n
from devtools import i18n as catalogs


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("de", "de"),
        ("de-AT,de;q=0.9,en;q=0.8", "de"),
        ("en;q=0.5, es;q=0.9", "es"),
        ("fr, es;q=0.1", "es"),
        ("es;q=0, de;q=0.2", "de"),
        ("fr-CA, ja", None),
        ("*", None),
        ("", None),
        (None, None),
        ("de;q=abc, es", "es"),
        ("de;q=7, es;q=0.3", "es"),
        (";;;,,,=q;", None),
        ("\x00\xff" * 5000, None),
        ("xx," * 100_000 + "de", None),
    ],
)
def test_accept_language(header: str | None, expected: str | None) -> None:
    """Quality values are honoured; malformed entries skipped; unknown or garbage is None."""
    assert i18n.negotiate(header) == expected


def test_a_tie_goes_to_the_first_listed() -> None:
    assert i18n.negotiate("es, de") == "es"
    assert i18n.negotiate("de, es") == "de"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("es", "es"),
        ("fr-CA es-MX de", "es"),
        ("fr,de", "de"),
        ("  ", None),
        ("", None),
        ("x " * 1_000_000 + "de", None),
        ("de" * 100_000, None),
    ],
)
def test_partner_wishes(value: str, expected: str | None) -> None:
    """ui_locales / openid.ui.lang: the first we speak; a huge list is read only so far."""
    assert i18n.pick(i18n.wishes(value) or []) == expected


def test_known_only_names_our_languages() -> None:
    assert i18n.known("de") == "de"
    assert i18n.known("DE") is None
    assert i18n.known("fr") is None
    assert i18n.known(None) is None


def test_marked_messages_are_translated_where_shown() -> None:
    """A Text reads as English and is translated, with its parameters, in the current language."""
    text = i18n.Text(i18n.N_("Choose a password of at least %(minimum)d characters."), minimum=12)
    assert text == "Choose a password of at least 12 characters."
    plural = i18n.n_text(
        "Too many failed sign-in attempts. Try again in %(count)d minute.",
        "Too many failed sign-in attempts. Try again in %(count)d minutes.",
        3,
    )
    token = i18n.current.set("de")
    try:
        assert i18n.translate(text) == "Wählen Sie ein Passwort mit mindestens 12 Zeichen."
        assert i18n.translate(plural).endswith("in 3 Minuten erneut.")
        assert i18n.translate("A message from elsewhere.") == "A message from elsewhere."
    finally:
        i18n.current.reset(token)
    assert i18n.translate(text) == "Choose a password of at least 12 characters."


def test_a_translated_parameter() -> None:
    """A field's label inside a field's error is translated too."""
    error = i18n.Text(
        i18n.N_("%(label)s is required by this site."), label=i18n.Text(i18n.N_("Postal code"))
    )
    token = i18n.current.set("es")
    try:
        assert i18n.translate(error) == "Este sitio exige Código postal."
    finally:
        i18n.current.reset(token)


def test_the_catalogs_are_complete_and_current() -> None:
    """
    Extracted now from the code and templates, every message is in
    clickpass.pot and translated, not fuzzy, in every language, with the
    same placeholders; nothing in the .pot is gone from the code.
    (Run scripts/i18n update, translate, then scripts/i18n check.)
    """
    problems = list(catalogs.problems())
    assert problems == []


def test_the_check_names_a_missing_and_a_fuzzy_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog check fails on an entry missing or fuzzy in a language's catalog."""
    from babel.messages.pofile import read_po

    for language in catalogs.LANGUAGES:
        original = catalogs.po_path(language)
        copy = tmp_path / language / "LC_MESSAGES" / "clickpass.po"
        copy.parent.mkdir(parents=True)
        with original.open("rb") as f:
            catalog = read_po(f, locale=language)
        if language == "de":
            del catalog["Sign in"]
        else:
            catalog["Sign out"].flags.add("fuzzy")
        catalogs._write(catalog, copy)
    monkeypatch.setattr(
        catalogs, "po_path", lambda lang: tmp_path / lang / "LC_MESSAGES" / "clickpass.po"
    )
    problems = list(catalogs.problems())
    assert "de: no entry for 'Sign in'" in problems
    assert "es: fuzzy (to review) 'Sign out'" in problems

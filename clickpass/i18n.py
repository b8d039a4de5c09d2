"""
The languages a person can read Clickpass in, and the translation of what
they see: pages, errors and mail.

The language of the work being done is a context variable (L{current}):
the web kernel sets it at the start of each request (a request's handler
runs in a context of its own), the storage runs a transaction in its
caller's context, so mail rendered inside a transaction goes out in the
language of the request that caused it. L{gettext} reads it; templates
call it through Jinja2's i18n extension (L{install}).

The catalogs are the .po files under C{clickpass/locale} (package data),
compiled in memory on first use: what runs is what translators edit, with
no build step to forget. Fuzzy entries are not used.

This module must never import a feature or the web kernel, and never
raise on what a browser or a partner sends (L{negotiate}, L{pick}).
"""

from __future__ import annotations

import functools
import gettext as _gettext
import io
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "clickpass"
DEFAULT = "en"
# Each language under the name it has in itself, for the switcher.
LANGUAGES = {"en": "English", "de": "Deutsch", "es": "Español"}
# More than this of an Accept-Language header or a ui_locales list is not read.
MAX_PREFERENCES = 32
MAX_HEADER = 2048

current: ContextVar[str] = ContextVar("clickpass_language", default=DEFAULT)


def N_(message: str) -> str:
    """Mark C{message} for translation where it is defined; it is translated where shown."""
    return message


@functools.cache
def translations(language: str) -> _gettext.NullTranslations:
    """The catalog for C{language} (English: the messages as written)."""
    po = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if language == DEFAULT or language not in LANGUAGES or not po.exists():
        return _gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as f:
        catalog = read_po(f, locale=language, domain=DOMAIN)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return _gettext.GNUTranslations(buffer)


def gettext(message: str) -> str:
    """C{message} in the current language."""
    return translations(current.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The singular or plural of a message for C{n}, in the current language."""
    return translations(current.get()).ngettext(singular, plural, n)


def pgettext(context: str, message: str) -> str:
    """C{message} in the current language, in C{context}."""
    return translations(current.get()).pgettext(context, message)


class Text(str):
    """
    A message with parameters, for code that passes messages on as text
    (an L{HTTPError}, a form's error): it reads as the English sentence,
    and L{translate} turns it into the current language where it is shown.
    """

    template: str
    params: dict[str, Any]
    plural: str | None = None
    number: int = 1

    def __new__(cls, template: str, **params: Any) -> Text:
        text = super().__new__(cls, template % params)
        text.template = template
        text.params = params
        return text


def part(message: str) -> Text:
    """
    A message marked with L{N_} (or a L{Text}) as a parameter of another
    message: translated with it where shown (L{translate}).
    """
    if isinstance(message, Text):
        return message
    return Text(message.replace("%", "%%"))


def n_text(singular: str, plural: str, count: int, **params: Any) -> Text:
    """A L{Text} with a singular and a plural, chosen by C{count} (given as C{%(count)d})."""
    params["count"] = count
    english = Text(singular if count == 1 else plural, **params)
    english.template, english.plural, english.number = singular, plural, count
    return english


def translate(message: str, **params: Any) -> str:
    """
    C{message} in the current language: a L{Text} with its parameters, a
    message marked with L{N_} where it was written, or as it is when the
    catalog does not have it (a message from elsewhere).
    """
    if isinstance(message, Text):
        # A parameter that is itself a message (a field's label) is translated too.
        values = {k: translate(v) if isinstance(v, Text) else v for k, v in message.params.items()}
        if message.plural is not None:
            return ngettext(message.template, message.plural, message.number) % values
        return gettext(message.template) % values
    text = gettext(message)
    return text % params if params else text


def known(value: str | None) -> str | None:
    """C{value} when it names one of our languages exactly (a cookie, a form field)."""
    return value if value in LANGUAGES else None


def _primary(tag: str) -> str:
    """The language of a BCP 47 tag: C{de-AT} is German."""
    return tag.strip().split("-", 1)[0].split("_", 1)[0].lower()


def pick(tags: Iterable[str]) -> str | None:
    """The first of C{tags} (in the order of preference) that we speak, or L{None}."""
    for count, tag in enumerate(tags):
        if count >= MAX_PREFERENCES:
            break
        language = _primary(tag)
        if language in LANGUAGES:
            return language
    return None


def wishes(value: str | None) -> list[str] | None:
    """
    A partner's list of languages (OpenID Connect's space-separated
    C{ui_locales}, the OpenID UI extension's C{lang}, which may use commas),
    read only as far as L{MAX_HEADER} characters; L{None} when empty.
    """
    if not value:
        return None
    tags = value[:MAX_HEADER].replace(",", " ").split()[:MAX_PREFERENCES]
    return tags or None


def negotiate(header: str | None) -> str | None:
    """
    The language an Accept-Language header (RFC 9110) prefers among ours,
    by quality value (the first listed wins a tie), or L{None} when it
    names none of them. A malformed entry is skipped, never an error.
    """
    if not header:
        return None
    weighted: list[tuple[float, int, str]] = []
    for index, item in enumerate(header[:MAX_HEADER].split(",")[:MAX_PREFERENCES]):
        tag, _, rest = item.partition(";")
        tag = tag.strip()
        if not tag or tag == "*":
            continue
        quality = 1.0
        for param in rest.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = -1.0
                if not 0.0 <= quality <= 1.0:
                    quality = -1.0
        if quality > 0:
            weighted.append((-quality, index, tag))
    weighted.sort()
    return pick(tag for _, _, tag in weighted)


def install(environment: Any) -> None:
    """Give a Jinja2 environment C{{% trans %}}, C{_()} and C{ngettext()}, in L{current}."""
    environment.add_extension("jinja2.ext.i18n")
    # A {% trans %} block's line breaks and indentation are not part of its message.
    environment.policies["ext.i18n.trimmed"] = True
    environment.install_gettext_callables(gettext, ngettext, pgettext=pgettext, newstyle=True)
    environment.globals.update(languages=LANGUAGES, current_language=current.get)

"""
The browser tests in each of Clickpass's languages: a Chromium that asks
for a language (its Accept-Language, as a person's browser set to German
does), and the text a page shows in it, from the same catalogs the pages
use, so that a test asserts on what a person reads in any language.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from clickpass import i18n
from tests.support.chromium import WebDriver

# Every language Clickpass speaks, English first: the parameters of a walk.
LANGUAGES = list(i18n.LANGUAGES)
TAG = re.compile(r"<[^>]+>")


@contextmanager
def accept_language(driver: WebDriver, language: str) -> Iterator[None]:
    """
    Chromium sends C{Accept-Language: language} (and reports it to
    scripts) until the block ends, then its own English again.
    """
    agent = driver.execute_script("return navigator.userAgent")
    driver.execute_cdp_cmd(
        "Emulation.setUserAgentOverride", {"userAgent": agent, "acceptLanguage": language}
    )
    try:
        yield
    finally:
        driver.execute_cdp_cmd(
            "Emulation.setUserAgentOverride", {"userAgent": agent, "acceptLanguage": "en-US"}
        )


def translated(language: str, message: str, **params: Any) -> str:
    """
    C{message} (its msgid, as the code or template writes it) as a page in
    C{language} shows it: translated, its parameters filled in, its
    markup dropped (an element's text).
    """
    text = i18n.translations(language).gettext(message)
    return TAG.sub("", text % params if params else text)


def on_mariadb(request: Any, fixture: str) -> bool:
    """Whether the test's node (the fixture C{fixture}, over the storage backends) is MariaDB's."""
    return bool(request.node.callspec.params.get(fixture) == "mysql")


def other_languages_on_sqlite(fixture: str) -> pytest.MarkDecorator:
    """
    Collect a walk parametrized over C{language} and over the storage
    backends (through the fixture C{fixture}) in English on both backends
    and in every other language on SQLite's node only: the pages' language
    does not depend on the storage. The other combinations are never
    collected (tests/conftest.py deselects them), rather than skipped.
    """
    return pytest.mark.other_languages_on_sqlite(fixture)

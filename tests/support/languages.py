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


def skip_other_languages_on_mariadb(request: Any, fixture: str, language: str) -> None:
    """
    Skip a walk in a language other than English when the module's node
    (the fixture C{fixture}, parametrized over the storage backends) runs on
    MariaDB: the pages' language does not depend on the storage, so
    SQLite's node walks them, and English's walk runs on both backends.
    """
    if language != "en" and on_mariadb(request, fixture):
        pytest.skip("the pages' language does not depend on the storage: SQLite's node walks it")

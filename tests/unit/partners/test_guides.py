"""The partner guides' rendering: Markdown to safe HTML, with this Clickpass's address."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from clickpass.partners import guides
from clickpass.web.app import WebApp

BASE = "http://127.0.0.1:8080/"


def test_raw_html_is_shown_as_text() -> None:
    """HTML written in the Markdown is escaped, never passed through to the page."""
    body = guides.render("# T\n\n<script>alert(1)</script>\n\na <b onclick=x>b</b>\n", BASE).body
    assert "<script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<b" not in body


def test_script_links_are_not_links() -> None:
    """A link with a script scheme stays text; an ordinary one is a link."""
    body = guides.render("[x](javascript:alert(1)) [y](https://example.com/)", BASE).body
    assert 'href="javascript' not in body
    assert "[x](javascript:alert(1))" in body
    assert '<a href="https://example.com/">y</a>' in body


def test_links_to_other_guides_point_at_their_pages() -> None:
    body = guides.render(
        "[API](partner-api.md#errors), [spec](partner-api.openapi.yaml), [g](partner-guide.md)",
        BASE,
    ).body
    assert 'href="/docs/partners/api#errors"' in body
    assert 'href="/docs/partners/openapi.yaml"' in body
    assert 'href="/docs/partners"' in body


def test_tables_scroll_in_their_own_box_and_headings_have_anchors() -> None:
    body = guides.render("# Title\n\n## A b\n\n## A b\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", BASE)
    assert body.title == "Title"
    assert '<div class="table-wrap">\n<table>' in body.body
    assert '<h2 id="a-b">' in body.body and '<h2 id="a-b-1">' in body.body


def test_anchors_are_githubs() -> None:
    """Section links work on the served page as on GitHub."""
    body = guides.render(
        "## 3. Start the sign-in (your `/login/clickpass`)\n\n## Realm's host\n", BASE
    )
    assert '<h2 id="3-start-the-sign-in-your-loginclickpass">' in body.body
    assert '<h2 id="realms-host">' in body.body


def test_the_partner_guide_names_this_clickpass() -> None:
    """The real guide renders, its example provider replaced by this node's address."""
    source = (guides.DOCS_DIR / "partner-guide.md").read_text()
    assert guides.EXAMPLE_PROVIDER in source
    guide = guides.render(source, BASE)
    assert guides.EXAMPLE_PROVIDER not in guide.body
    assert BASE + "static/clickpass-button.js" in guide.body


def test_console_links_to_sections_that_exist() -> None:
    """Every C{/docs/partners#section} link in the console's templates names a heading."""
    templates = Path(guides.__file__).parents[1] / "web" / "templates"
    body = guides.render((guides.DOCS_DIR / "partner-guide.md").read_text(), BASE).body
    anchors = set(re.findall(r'<h\d id="([^"]+)"', body))
    linked = {
        anchor
        for template in templates.glob("partner_*.html")
        for anchor in re.findall(r'href="/docs/partners#([^"]+)"', template.read_text())
    }
    assert linked and linked <= anchors, linked - anchors


class PageMaker:
    """The part of the web kernel a guide's page uses: its language, and the page's context."""

    def __init__(self, language: str) -> None:
        self.settings = SimpleNamespace(base_url=BASE)
        self.language = language
        self.pages: list[dict[str, Any]] = []

    def choose_language(self, request: DummyRequest) -> str:
        return self.language

    def use_language(self, request: DummyRequest, language: str) -> None:
        self.language = language

    def render(self, request: DummyRequest, template: str, **context: Any) -> bytes:
        self.pages.append(context)
        return b"page"


def serve(docs: Path, language: str, path: bytes, lang: bytes | None = None) -> tuple[Any, ...]:
    """The guide at C{path} for a request in C{language} (C{?lang=} if given)."""
    app = PageMaker(language)
    served = guides.Guides(cast(WebApp, app), docs)
    served.load()
    request = DummyRequest([b""])
    as_served = cast(Request, request)
    as_served.path = path
    if lang is not None:
        request.args = {b"lang": [lang]}
    assert asyncio.run(served.guide(as_served)) == b"page"
    context = app.pages[0]
    return context, request.responseHeaders.getRawHeaders(b"content-language"), app.language


def test_a_guide_is_served_in_the_requests_language() -> None:
    """The request's language picks the translation; the page links to the other languages."""
    context, header, _ = serve(guides.DOCS_DIR, "de", b"/docs/partners")
    assert header == [b"de"]
    assert context["guide"].language == "de"
    assert context["guide"].title == "Ihre Website mit Clickpass verbinden"
    assert context["body"] == context["guide"].body
    assert 'href="/docs/partners/api"' in context["body"]
    assert [(t["path"], t["current"]) for t in context["translations"]] == [
        ("/docs/partners?lang=en", False),
        ("/docs/partners?lang=de", True),
        ("/docs/partners?lang=es", False),
    ]
    assert [g["title"] for g in context["guides"]] == [
        "Ihre Website mit Clickpass verbinden",
        "Die Partner-API von Clickpass",
    ]


def test_a_language_the_address_names_is_the_pages() -> None:
    """
    C{?lang=es} makes the page Spanish whatever the request's language, and
    its links to the other guides keep it; a language we do not speak there
    is ignored.
    """
    context, header, language = serve(guides.DOCS_DIR, "de", b"/docs/partners/api", b"es")
    assert header == [b"es"] and language == "es"
    assert context["guide"].title == "La API de socios de Clickpass"
    assert [g["path"] for g in context["guides"]] == [
        "/docs/partners?lang=es",
        "/docs/partners/api?lang=es",
    ]
    context, _, _ = serve(guides.DOCS_DIR, "de", b"/docs/partners", b"es")
    assert 'href="/docs/partners/api?lang=es"' in context["body"]
    for nonsense in (b"fr", b"", b"\xff\xfe", b"de-DE" * 1000):
        context, header, _ = serve(guides.DOCS_DIR, "en", b"/docs/partners", nonsense)
        assert header == [b"en"] and context["guide"].language == "en"
        assert 'href="/docs/partners/api"' in context["body"]


def test_english_when_there_is_no_translation(tmp_path: Path) -> None:
    """A language a guide is not translated into gets the English guide, said so."""
    (tmp_path / "partner-guide.md").write_text("# Guide\n\n## Section\n")
    (tmp_path / "es").mkdir()
    (tmp_path / "es" / "partner-guide.md").write_text("# Guía\n\n## Sección\n")
    context, header, _ = serve(tmp_path, "de", b"/docs/partners")
    assert header == [b"en"]
    assert context["guide"].language == "en" and context["guide"].title == "Guide"
    assert [t["language"] for t in context["translations"]] == ["en", "es"]
    context, header, _ = serve(tmp_path, "es", b"/docs/partners/")
    assert header == [b"es"] and '<h2 id="section">' in context["body"]


def test_code_blocks_take_the_keyboards_focus() -> None:
    """A code block, which may scroll sideways in its own box, is reachable by Tab."""
    body = guides.render("# T\n\n```sh\nls\n```\n\n    indented\n", BASE).body
    assert body.count('<pre tabindex="0">') == 2, body

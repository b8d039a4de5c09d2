"""The partner guides' rendering: Markdown to safe HTML, with this Clickpass's address."""

from __future__ import annotations

import re
from pathlib import Path

from clickpass.partners import guides

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

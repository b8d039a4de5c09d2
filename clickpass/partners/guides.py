"""
The partner guides, served by Clickpass itself: C{/docs/partners} (the
integration guide, docs/partner-guide.md), C{/docs/partners/api} (the
partner API, docs/partner-api.md) and C{/docs/partners/openapi.yaml} (its
OpenAPI document, as text). The partner console links here, so a partner
developer reads the guide of the Clickpass they integrate with, with that
Clickpass's own address in its examples, and never a repository path.

The Markdown is rendered once, when the worker installs its routes, by
markdown-it-py's C{js-default} preset: raw HTML in the Markdown is shown
as text, never passed through, and links with a script scheme
(C{javascript:}, C{vbscript:}, C{data:}, C{file:}) are not made links. The
pages carry no script, under the site's content security policy. A link
from one guide to another (C{partner-api.md}) becomes a link to its page
here. This module must never serve a file other than the three it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markupsafe import Markup

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.i18n import N_
from clickpass.web.app import WebApp
from clickpass.web.routing import HTTPError, Router

log = Logger()

# The repository's docs/ directory: Clickpass runs from its checkout
# (scripts/_venv.sh installs it in place).
DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
PREFIX = "/docs/partners"
# Each guide's file, and the path it is served at.
GUIDES = {"partner-guide.md": PREFIX, "partner-api.md": PREFIX + "/api"}
OPENAPI = ("partner-api.openapi.yaml", PREFIX + "/openapi.yaml")
# The provider's address the guides' examples use, replaced by this node's.
EXAMPLE_PROVIDER = "https://login.example.com/"


@dataclass(frozen=True)
class Guide:
    """One guide, rendered: its title (its first heading) and its HTML body."""

    title: str
    body: Markup


def _slug(text: str) -> str:
    """
    A heading's anchor, as GitHub makes it (lower case, punctuation dropped,
    spaces as hyphens), so a link to a section works on both.
    """
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-") or "section"


def _served() -> dict[str, str]:
    """Where each file a guide may link to is served here."""
    return {**GUIDES, OPENAPI[0]: OPENAPI[1]}


def renderer() -> MarkdownIt:
    """
    Markdown to HTML with no raw HTML passed through; every table in a box
    that scrolls on its own on a narrow screen; headings with anchors;
    links to the other guides pointed at their pages here.
    """
    md = MarkdownIt("js-default")
    served = _served()

    def table_open(
        renderer: RendererHTML, tokens: list[Token], idx: int, options: Any, env: Any
    ) -> str:
        return '<div class="table-wrap">\n<table>\n'

    def table_close(
        renderer: RendererHTML, tokens: list[Token], idx: int, options: Any, env: Any
    ) -> str:
        return "</table>\n</div>\n"

    def heading_open(
        renderer: RendererHTML, tokens: list[Token], idx: int, options: Any, env: Any
    ) -> str:
        token = tokens[idx]
        inline = tokens[idx + 1]
        seen: dict[str, int] = env.setdefault("anchors", {})
        anchor = _slug(inline.content)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        if count:
            anchor = f"{anchor}-{count}"
        token.attrSet("id", anchor)
        rendered: str = renderer.renderToken(tokens, idx, options, env)
        return rendered

    def link_open(
        renderer: RendererHTML, tokens: list[Token], idx: int, options: Any, env: Any
    ) -> str:
        token = tokens[idx]
        href = str(token.attrGet("href") or "")
        name, hash_mark, fragment = href.partition("#")
        if name in served:
            token.attrSet("href", served[name] + hash_mark + fragment)
        rendered: str = renderer.renderToken(tokens, idx, options, env)
        return rendered

    md.add_render_rule("table_open", table_open)
    md.add_render_rule("table_close", table_close)
    md.add_render_rule("heading_open", heading_open)
    md.add_render_rule("link_open", link_open)
    return md


def render(markdown: str, base_url: str) -> Guide:
    """
    One guide's Markdown as a L{Guide}, its examples naming the Clickpass
    at C{base_url}.
    """
    source = markdown.replace(EXAMPLE_PROVIDER, base_url)
    md = renderer()
    tokens = md.parse(source, {})
    title = next(
        (tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"),
        "Partner guide",
    )
    # Safe: markdown-it escapes all text and passes no raw HTML (html=False).
    body = Markup(md.renderer.render(tokens, md.options, {}))  # noqa: S704
    return Guide(title, body)


class Guides:
    """The guides' pages, rendered once from the files in C{docs}."""

    def __init__(self, app: WebApp, docs: Path = DOCS_DIR) -> None:
        self.app = app
        self.docs = docs
        self.pages: dict[str, Guide] = {}
        self.openapi: bytes | None = None

    def load(self) -> None:
        """Read and render the guides; a missing file leaves its page answering 404."""
        for name, path in GUIDES.items():
            try:
                text = (self.docs / name).read_text(encoding="utf-8")
            except OSError as e:
                log.warn("partner guide {name} not served: {error}", name=name, error=str(e))
                continue
            self.pages[path] = render(text, self.app.settings.base_url)
        try:
            self.openapi = (self.docs / OPENAPI[0]).read_bytes()
        except OSError as e:
            log.warn("partner guide {name} not served: {error}", name=OPENAPI[0], error=str(e))

    def _missing(self) -> HTTPError:
        return HTTPError(
            404, N_("The partner guides are not installed with this Clickpass: ask its operator.")
        )

    async def guide(self, request: Request) -> bytes:
        found = self.pages.get(request.path.decode("ascii", "replace").rstrip("/") or PREFIX)
        if found is None:
            raise self._missing()
        return self.app.render(
            request,
            "partner_docs.html",
            guide=found,
            guides=[
                {"path": path, "title": page.title, "current": page is found}
                for path, page in self.pages.items()
            ],
            openapi_path=OPENAPI[1] if self.openapi is not None else None,
        )

    async def openapi_document(self, request: Request) -> bytes:
        if self.openapi is None:
            raise self._missing()
        # As text: a browser shows it, a tool reads it as YAML all the same.
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.openapi


def install(app: WebApp, router: Router) -> Guides:
    guides = Guides(app)
    guides.load()
    for path in GUIDES.values():
        router.add("GET", path, guides.guide)
    router.add("GET", OPENAPI[1], guides.openapi_document)
    return guides

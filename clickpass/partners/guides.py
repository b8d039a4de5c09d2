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
here.

Each guide is also translated (C{docs/de/partner-guide.md}, C{docs/es/...}):
a page is served in the request's language (as every page is: the
partner's wish, the switcher, Accept-Language), or in the one its address
names (C{?lang=de}, the guide's links to its other languages), and in
English when there is no translation. A translation's headings keep the
English guide's anchors, so a link to a section (the console's, another
guide's) works in every language. This module must never serve a file
other than the ones it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markupsafe import Markup

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass import i18n
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
# The query parameter that names a page's language (a link to another language).
LANGUAGE_PARAMETER = b"lang"
# The provider's address the guides' examples use, replaced by this node's.
EXAMPLE_PROVIDER = "https://login.example.com/"


@dataclass(frozen=True)
class Guide:
    """
    One guide in one language, rendered: its title (its first heading),
    its HTML body, the same body with its links to the other guides naming
    its language (for a page whose address named it), and its headings'
    anchors in order.
    """

    title: str
    body: Markup
    language: str
    pinned_body: Markup
    anchors: tuple[str, ...]


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
    that scrolls on its own on a narrow screen, and every code block
    reachable by the keyboard (it scrolls on its own too); headings with anchors;
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
        made: list[str] = env.setdefault("anchor_list", [])
        fixed: tuple[str, ...] = env.get("fixed_anchors", ())
        if len(made) < len(fixed):
            # A translation's heading takes the anchor of the English one in its place.
            anchor = fixed[len(made)]
        else:
            anchor = _slug(inline.content)
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            if count:
                anchor = f"{anchor}-{count}"
        made.append(anchor)
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
            query = env.get("link_query", "") if name in GUIDES else ""
            token.attrSet("href", served[name] + query + hash_mark + fragment)
        rendered: str = renderer.renderToken(tokens, idx, options, env)
        return rendered

    def focusable(name: str) -> None:
        # A code block scrolls sideways in its own box on a narrow screen: it
        # takes the keyboard's focus, so the arrow keys can scroll it too.
        plain = cast(RendererHTML, md.renderer).rules[name]

        def rule(
            renderer: RendererHTML, tokens: list[Token], idx: int, options: Any, env: Any
        ) -> str:
            rendered: str = plain(tokens, idx, options, env)
            return rendered.replace("<pre>", '<pre tabindex="0">', 1)

        md.add_render_rule(name, rule)

    focusable("fence")
    focusable("code_block")
    md.add_render_rule("table_open", table_open)
    md.add_render_rule("table_close", table_close)
    md.add_render_rule("heading_open", heading_open)
    md.add_render_rule("link_open", link_open)
    return md


def render(
    markdown: str,
    base_url: str,
    language: str = i18n.DEFAULT,
    anchors: tuple[str, ...] = (),
) -> Guide:
    """
    One guide's Markdown in C{language} as a L{Guide}, its examples naming
    the Clickpass at C{base_url}; its headings take C{anchors} in order
    (the English guide's, for a translation), and make their own after.
    """
    source = markdown.replace(EXAMPLE_PROVIDER, base_url)
    md = renderer()
    tokens = md.parse(source, {})
    title = next(
        (tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"),
        "Partner guide",
    )
    env: dict[str, Any] = {"fixed_anchors": anchors}
    # Safe: markdown-it escapes all text and passes no raw HTML (html=False).
    body = Markup(md.renderer.render(tokens, md.options, env))  # noqa: S704
    pinned_env: dict[str, Any] = {"fixed_anchors": anchors, "link_query": f"?lang={language}"}
    # Parsed again: rendering rewrites the tokens' links.
    pinned_tokens = md.parse(source, {})
    pinned = Markup(md.renderer.render(pinned_tokens, md.options, pinned_env))  # noqa: S704
    return Guide(title, body, language, pinned, tuple(env.get("anchor_list", ())))


def translation_path(docs: Path, language: str, name: str) -> Path:
    """Where the guide C{name} is in C{language}: C{docs/de/partner-guide.md}."""
    return docs / name if language == i18n.DEFAULT else docs / language / name


class Guides:
    """The guides' pages, rendered once from the files in C{docs}."""

    def __init__(self, app: WebApp, docs: Path = DOCS_DIR) -> None:
        self.app = app
        self.docs = docs
        # Each guide's path, and the guide in each language it is written in.
        self.pages: dict[str, dict[str, Guide]] = {}
        self.openapi: bytes | None = None

    def load(self) -> None:
        """
        Read and render the guides; a missing English file leaves its page
        answering 404, a missing translation leaves that language in English.
        """
        for name, path in GUIDES.items():
            english = self._read(self.docs / name)
            if english is None:
                continue
            base_url = self.app.settings.base_url
            original = render(english, base_url)
            self.pages[path] = {i18n.DEFAULT: original}
            for language in i18n.LANGUAGES:
                if language == i18n.DEFAULT:
                    continue
                text = self._read(translation_path(self.docs, language, name))
                if text is not None:
                    self.pages[path][language] = render(text, base_url, language, original.anchors)
        try:
            self.openapi = (self.docs / OPENAPI[0]).read_bytes()
        except OSError as e:
            log.warn("partner guide {name} not served: {error}", name=OPENAPI[0], error=str(e))

    def _read(self, file: Path) -> str | None:
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            log.warn("partner guide {name} not served: {error}", name=str(file), error=str(e))
            return None

    def _missing(self) -> HTTPError:
        return HTTPError(
            404, N_("The partner guides are not installed with this Clickpass: ask its operator.")
        )

    async def guide(self, request: Request) -> bytes:
        path = request.path.decode("ascii", "replace").rstrip("/") or PREFIX
        translations = self.pages.get(path)
        if translations is None:
            raise self._missing()
        # A language the address names (a link to another language) is this
        # page's, for this request only; anything else there is ignored.
        named = (request.args or {}).get(LANGUAGE_PARAMETER, [b""])[0]
        pinned = i18n.known(named.decode("ascii", "replace"))
        if pinned is not None:
            self.app.use_language(request, pinned)
        language = pinned or self.app.choose_language(request)
        found = translations.get(language, translations[i18n.DEFAULT])
        query = f"?lang={pinned}" if pinned else ""
        page = self.app.render(
            request,
            "partner_docs.html",
            guide=found,
            body=found.pinned_body if pinned else found.body,
            guides=[
                {
                    "path": other_path + query,
                    "title": other.get(language, other[i18n.DEFAULT]).title,
                    "current": other_path == path,
                }
                for other_path, other in self.pages.items()
            ],
            translations=[
                {
                    "path": f"{path}?lang={code}",
                    "language": code,
                    "name": i18n.LANGUAGES[code],
                    "current": code == found.language,
                }
                for code in i18n.LANGUAGES
                if code in translations
            ],
            openapi_path=OPENAPI[1] if self.openapi is not None else None,
        )
        # What the page is written in: the guide's language (English when
        # the request's has no translation), whatever its frame is in.
        request.setHeader(b"content-language", found.language.encode("ascii"))
        return page

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

"""
The partner guides' translations keep step with the English guides: the
same code blocks in the same order, the same headings (so the sections
and their anchors match), the same inline code and the same links. An
English guide changed without its translations fails here (docs/translations.md
says how to bring them up to date).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from clickpass import i18n
from clickpass.partners import guides

TRANSLATED = [language for language in i18n.LANGUAGES if language != i18n.DEFAULT]
HOW = "bring it up to date with the English guide (docs/translations.md, 'The partner guides')"


@dataclass
class Skeleton:
    """What a translation must keep of its guide: everything but the prose."""

    code_blocks: list[tuple[str, str]]
    headings: list[str]
    inline_code: Counter[str]
    links: Counter[str]


def _inline(tokens: list[Token]) -> list[Token]:
    found = []
    for token in tokens:
        if token.children:
            found.extend(_inline(token.children))
        else:
            found.append(token)
    return found


def skeleton(markdown: str) -> Skeleton:
    """The code blocks, heading levels, inline code and link targets of C{markdown}."""
    tokens = MarkdownIt("js-default").parse(markdown)
    leaves = _inline([t for t in tokens if t.type == "inline"])
    return Skeleton(
        code_blocks=[(t.info, t.content) for t in tokens if t.type in ("fence", "code_block")],
        headings=[t.tag for t in tokens if t.type == "heading_open"],
        inline_code=Counter(t.content for t in leaves if t.type == "code_inline"),
        links=Counter(str(t.attrGet("href")) for t in leaves if t.type == "link_open"),
    )


def pairs() -> list[tuple[str, str]]:
    return [(language, name) for language in TRANSLATED for name in guides.GUIDES]


@pytest.mark.parametrize(("language", "name"), pairs())
def test_translation_keeps_the_english_guides_code_and_sections(language: str, name: str) -> None:
    english_file = guides.DOCS_DIR / name
    translated_file = guides.translation_path(guides.DOCS_DIR, language, name)
    assert translated_file.exists(), f"{translated_file} is missing: translate {english_file}"
    english = skeleton(english_file.read_text(encoding="utf-8"))
    translated = skeleton(translated_file.read_text(encoding="utf-8"))
    where = f"{translated_file.relative_to(guides.DOCS_DIR.parent)}"
    for index, (mine, theirs) in enumerate(
        zip(translated.code_blocks, english.code_blocks, strict=False)
    ):
        assert mine == theirs, f"{where}: code block {index + 1} differs from the English: {HOW}"
    assert len(translated.code_blocks) == len(english.code_blocks), (
        f"{where} has {len(translated.code_blocks)} code blocks, the English "
        f"{len(english.code_blocks)}: {HOW}"
    )
    assert translated.headings == english.headings, (
        f"{where}: headings {translated.headings} differ from the English {english.headings}: {HOW}"
    )
    assert translated.inline_code == english.inline_code, (
        f"{where}: inline code differs from the English "
        f"(missing {sorted((english.inline_code - translated.inline_code).elements())}, "
        f"extra {sorted((translated.inline_code - english.inline_code).elements())}): {HOW}"
    )
    assert translated.links == english.links, (
        f"{where}: links differ from the English "
        f"(missing {sorted((english.links - translated.links).elements())}, "
        f"extra {sorted((translated.links - english.links).elements())}): {HOW}"
    )


def test_an_english_edit_alone_fails_the_check(tmp_path: Path) -> None:
    """A changed command, or a new section, in the English guide no longer matches."""
    source = (guides.DOCS_DIR / "partner-guide.md").read_text(encoding="utf-8")
    german = skeleton(
        guides.translation_path(guides.DOCS_DIR, "de", "partner-guide.md").read_text("utf-8")
    )
    assert skeleton(source) == german
    changed = source.replace("--port 8090", "--port 8091", 1)
    assert skeleton(changed).code_blocks != german.code_blocks
    added = source + "\n## A new section\n"
    assert skeleton(added).headings != german.headings


def test_translations_keep_the_english_anchors() -> None:
    """
    A translation's sections have the English guide's anchors, so every
    link to a section (the guide's own, the console's) works in each language.
    """
    for name in guides.GUIDES:
        english = guides.render((guides.DOCS_DIR / name).read_text("utf-8"), "http://x/")
        own_links = {
            href.split("#", 1)[1]
            for href in skeleton((guides.DOCS_DIR / name).read_text("utf-8")).links
            if href.startswith("#")
        }
        assert own_links <= set(english.anchors)
        for language in TRANSLATED:
            text = guides.translation_path(guides.DOCS_DIR, language, name).read_text("utf-8")
            translated = guides.render(text, "http://x/", language, english.anchors)
            assert translated.anchors == english.anchors
            assert translated.title != english.title  # the title is translated
            for anchor in english.anchors:
                assert f'id="{anchor}"' in translated.body

"""
The translation catalogs' upkeep, behind scripts/i18n and the catalog test:
extract the messages of the code and the templates into
clickpass/locale/clickpass.pot, merge them into each language's .po, and
check that every language is complete (no missing, untranslated or fuzzy
message, placeholders kept, the .pot up to date).

    scripts/i18n extract     write clickpass.pot from the code and templates
    scripts/i18n update      extract, then merge into de and es (new: empty;
                             changed: fuzzy, to review)
    scripts/i18n compile     check each .po compiles (the node compiles them
                             in memory at start; no .mo file is kept)
    scripts/i18n check       fail, naming each message, unless every language
                             is complete and the .pot matches the code

Never writes anything but the catalogs.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "clickpass" / "locale"
POT = LOCALE / "clickpass.pot"
MAPPING = LOCALE / "babel.cfg"
LANGUAGES = ("de", "es")
KEYWORDS = {
    "_": None,
    "gettext": None,
    "ngettext": (1, 2),
    "pgettext": ((1, "c"), 2),
    "N_": None,
    "n_text": (1, 2),
}
# %(name)s, %(name)r, %s and %% (a literal percent sign, not a placeholder).
_PLACEHOLDER = re.compile(r"%(?:\([a-z_]+\))?[sdr]")


def po_path(language: str) -> Path:
    return LOCALE / language / "LC_MESSAGES" / "clickpass.po"


def extract() -> Catalog:
    """Every message of the code and templates, as a fresh template catalog."""
    with MAPPING.open() as f:
        method_map, options_map = parse_mapping_cfg(f, str(MAPPING))
    catalog = Catalog(
        project="Clickpass",
        msgid_bugs_address="",
        creation_date=datetime(2026, 12, 6, tzinfo=UTC),
        fuzzy=False,
    )
    for filename, lineno, message, comments, context in extract_from_dir(
        str(ROOT),
        method_map,
        options_map,
        keywords=KEYWORDS,
        comment_tags=("Translators:",),
        strip_comment_tags=True,
    ):
        if not message or (isinstance(message, str) and not message.strip()):
            continue
        catalog.add(
            message,
            None,
            [(filename, lineno)],
            auto_comments=comments,
            context=context,
        )
    return catalog


def _write(catalog: Catalog, path: Path) -> None:
    buffer = io.BytesIO()
    write_po(buffer, catalog, width=100, omit_header=False, sort_output=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def _read(path: Path, language: str | None = None) -> Catalog:
    with path.open("rb") as f:
        return read_po(f, locale=language, domain="clickpass")


def write_template() -> Catalog:
    template = extract()
    _write(template, POT)
    return template


def update() -> None:
    """Extract, and merge the template into each language's catalog."""
    template = write_template()
    for language in LANGUAGES:
        path = po_path(language)
        if path.exists():
            catalog = _read(path, language)
        else:
            catalog = Catalog(locale=language, domain="clickpass", project="Clickpass")
        catalog.update(template, update_header_comment=False)
        # Messages no longer in the code: dropped (git keeps the history).
        catalog.obsolete.clear()
        _write(catalog, path)


def _ids(message: Message) -> tuple[str, ...]:
    return tuple(message.id) if isinstance(message.id, (list, tuple)) else (message.id,)


def _strings(message: Message) -> tuple[str, ...]:
    if isinstance(message.string, (list, tuple)):
        return tuple(message.string)
    return (message.string or "",)


def problems() -> Iterator[str]:
    """Every reason the catalogs are not complete and current, one line each."""
    extracted = extract()
    if not POT.exists():
        yield f"{POT.relative_to(ROOT)} is missing: run scripts/i18n update"
        return
    written = _read(POT)
    wanted = {(m.id if isinstance(m.id, str) else m.id[0], m.context) for m in extracted if m.id}
    have = {(m.id if isinstance(m.id, str) else m.id[0], m.context) for m in written if m.id}
    for msgid, _ in sorted(wanted - have, key=str):
        yield f"clickpass.pot lacks {msgid!r} (in the code): run scripts/i18n update"
    for msgid, _ in sorted(have - wanted, key=str):
        yield f"clickpass.pot has {msgid!r}, no longer in the code: run scripts/i18n update"
    for language in LANGUAGES:
        path = po_path(language)
        if not path.exists():
            yield f"{path.relative_to(ROOT)} is missing: run scripts/i18n update"
            continue
        catalog = _read(path, language)
        for message in extracted:
            if not message.id:
                continue
            found = catalog.get(message.id, message.context)
            first = _ids(message)[0]
            if found is None:
                yield f"{language}: no entry for {first!r}"
                continue
            if found.fuzzy:
                yield f"{language}: fuzzy (to review) {first!r}"
                continue
            strings = _strings(found)
            if not all(strings):
                yield f"{language}: untranslated {first!r}"
                continue
            # Each translation uses the message's placeholders (a singular
            # may leave out the count, as "one" often is).
            wanted_places = set(_PLACEHOLDER.findall(_ids(message)[-1]))
            for string in strings:
                if set(_PLACEHOLDER.findall(string)) - wanted_places or (
                    len(strings) == 1 and set(_PLACEHOLDER.findall(string)) != wanted_places
                ):
                    yield f"{language}: placeholders differ in {first!r}: {string!r}"
                    break
        try:
            write_mo(io.BytesIO(), catalog, use_fuzzy=False)
        except Exception as e:  # reported, one line
            yield f"{language}: does not compile: {e}"


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "extract":
        template = write_template()
        print(f"{POT.relative_to(ROOT)}: {len(template)} messages")
        return 0
    if command == "update":
        update()
        print(f"updated {POT.relative_to(ROOT)} and {', '.join(LANGUAGES)}; now translate and")
        print("run scripts/i18n check")
        return 0
    if command in ("check", "compile"):
        found = list(problems())
        for line in found:
            print(line, file=sys.stderr)
        if found:
            print(f"{len(found)} problems", file=sys.stderr)
            return 1
        print("catalogs complete: " + ", ".join(LANGUAGES))
        return 0
    print("usage: scripts/i18n extract|update|compile|check", file=sys.stderr)
    return 2

"""
Every schema migration is expand-only, so that a node of the previous
release runs on a database the next release migrated (the rolling upgrade
of docs/operations.md): new tables and indexes, new columns that have a
default or allow NULL, and data written into them. Nothing is dropped,
renamed or retyped; that is a later release's contract step, once no node
uses the old shape, and it says so: its C{compatible_from} is its own
version (clickpass.storage.migrations), so older releases refuse to run on
it rather than break. Only such a declared step is exempt from the rule.
"""

from __future__ import annotations

import re

import pytest

from clickpass.storage.migrations import MIGRATIONS, compatible_from

CREATE = re.compile(r"CREATE (UNIQUE )?(TABLE|INDEX) IF NOT EXISTS\b", re.IGNORECASE)
ADD_COLUMN = re.compile(r"ALTER TABLE \w+ ADD (COLUMN )?(IF NOT EXISTS )?\w+ ", re.IGNORECASE)
DATA = re.compile(r"(INSERT|UPDATE)\b", re.IGNORECASE)
STATEMENTS = [
    pytest.param(statement, id=f"{m.version}.{i}")
    for m in MIGRATIONS
    if compatible_from(m) < m.version  # not a declared contract step
    for i, statement in enumerate(m.statements)
]


def expand_only_problem(statement: str) -> str | None:
    """Why C{statement} would break a node of the previous release, or None."""
    text = " ".join(statement.split())
    if CREATE.match(text) or DATA.match(text):
        return None
    if ADD_COLUMN.match(text):
        if ";" in text or re.search(r"\b(DROP|CHANGE|MODIFY|RENAME)\b", text, re.IGNORECASE):
            return "one ALTER TABLE may only add a column"
        not_null = re.search(r"\bNOT NULL\b", text, re.IGNORECASE)
        if not_null and not re.search(r"\bDEFAULT\b", text, re.IGNORECASE):
            return "a NOT NULL column needs a DEFAULT (older nodes insert without it)"
        return None
    return "only CREATE ... IF NOT EXISTS, ALTER TABLE ... ADD COLUMN, INSERT or UPDATE"


@pytest.mark.parametrize("statement", STATEMENTS)
def test_every_migration_statement_is_expand_only(statement: str) -> None:
    """Each statement of every migration leaves what older releases use as it was."""
    assert expand_only_problem(statement) is None, statement


@pytest.mark.parametrize(
    ("statement", "ok"),
    [
        ("CREATE TABLE IF NOT EXISTS t (id INTEGER)", True),
        ("CREATE INDEX IF NOT EXISTS t_a ON t (a)", True),
        ("ALTER TABLE t ADD COLUMN a INTEGER NOT NULL DEFAULT 0", True),
        ("ALTER TABLE t ADD COLUMN a VARCHAR(10)", True),
        ("ALTER TABLE t ADD COLUMN a INTEGER NOT NULL", False),
        ("ALTER TABLE t DROP COLUMN a", False),
        ("ALTER TABLE t RENAME TO u", False),
        ("ALTER TABLE t MODIFY a BIGINT", False),
        ("DROP TABLE t", False),
        ("CREATE TABLE t (id INTEGER)", False),
    ],
)
def test_the_check_tells_expand_from_contract(statement: str, ok: bool) -> None:
    """The rule above refuses what would break an older node and lets additions through."""
    assert (expand_only_problem(statement) is None) is ok

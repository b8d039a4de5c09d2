"""Pure pieces of the storage layer and of the MariaDB test helper, without a database."""

from __future__ import annotations

from pathlib import Path

import pymysql
import pytest

from twisted.enterprise.adbapi import ConnectionLost

from clickpass.storage import private_server
from clickpass.storage.sql import (
    Dialect,
    OutcomeUnknown,
    is_connection_lost,
    is_deadlock,
    one_line,
    placeholders,
)
from tests.support.mariadb import MariaDBServer, MariaDBUnavailable


def test_translate_turns_placeholders_into_the_drivers_own() -> None:
    """SQLite keeps ?; MariaDB gets %s, and a literal % is escaped for PyMySQL."""
    sql = "SELECT a FROM t WHERE b = ? AND c LIKE '%x'"
    assert Dialect("sqlite").translate(sql) == sql
    assert Dialect("mysql").translate(sql) == "SELECT a FROM t WHERE b = %s AND c LIKE '%%x'"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT '?', ?", "SELECT '?', %s"),
        ("SELECT 'it''s ?', ? FROM t", "SELECT 'it''s ?', %s FROM t"),
        ("SELECT 'a\\\\', ?", "SELECT 'a\\\\', %s"),
        ("SELECT 'a\\'?', ?", "SELECT 'a\\'?', %s"),
        ('SELECT "q?%", ?', 'SELECT "q?%%", %s'),
        ("SELECT `a?b` FROM t WHERE x = ?", "SELECT `a?b` FROM t WHERE x = %s"),
        ("SELECT ? /* why? 100% */", "SELECT %s /* why? 100%% */"),
        ("SELECT ? -- why?\nFROM t WHERE y = ?", "SELECT %s -- why?\nFROM t WHERE y = %s"),
        ("SELECT ? # why?\n, ?", "SELECT %s # why?\n, %s"),
        ("SELECT 1--?", "SELECT 1--%s"),
    ],
)
def test_translate_leaves_a_question_mark_in_text_alone(sql: str, expected: str) -> None:
    """
    A ? inside a string, a quoted name or a comment is not a placeholder
    (before, every ? was rewritten, and such a statement failed on MariaDB
    alone); a % anywhere is doubled, since PyMySQL formats the whole text.
    """
    assert Dialect("mysql").translate(sql) == expected
    assert Dialect("sqlite").translate(sql) == sql


def test_placeholders_for_an_in_clause() -> None:
    """One ? per value, comma separated."""
    assert placeholders([1, 2, 3]) == "?, ?, ?"
    assert placeholders([]) == ""


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (pymysql.err.OperationalError(2006, "MySQL server has gone away"), True),
        (pymysql.err.OperationalError(2013, "Lost connection to MySQL server"), True),
        (pymysql.err.OperationalError(1927, "Connection was killed"), True),
        (pymysql.err.InterfaceError(0, ""), True),
        (ConnectionLost(), True),
        (pymysql.err.OperationalError(1045, "Access denied"), False),
        (pymysql.err.OperationalError(1213, "Deadlock found"), False),
        (pymysql.err.IntegrityError(1062, "Duplicate entry"), False),
        (ValueError("no"), False),
    ],
)
def test_connection_loss_is_told_from_other_errors(error: Exception, lost: bool) -> None:
    """Only errors that mean the connection is gone count as connection loss."""
    assert is_connection_lost(error) is lost


def test_deadlock_is_recognised() -> None:
    """Error 1213 is a deadlock; a lock wait timeout (1205) is not."""
    assert is_deadlock(pymysql.err.OperationalError(1213, "Deadlock found"))
    assert not is_deadlock(pymysql.err.OperationalError(1205, "Lock wait timeout"))


def test_outcome_unknown_is_both_a_database_error_and_a_lost_connection() -> None:
    """Callers can catch OutcomeUnknown as a DatabaseError or as adbapi's ConnectionLost."""
    error = OutcomeUnknown("x")
    assert is_connection_lost(error)
    assert isinstance(error, ConnectionLost)


def test_one_line() -> None:
    """Multi-line messages are folded into one line; an empty one gives the type's name."""
    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line(ValueError()) == "ValueError"


def test_missing_binaries_fail_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without mariadbd, starting a server names the missing binary and the Debian package."""
    monkeypatch.setattr(private_server, "MARIADBD", str(tmp_path / "no-such-mariadbd"))
    with pytest.raises(
        MariaDBUnavailable, match=r"no-such-mariadbd.*apt-get install mariadb-server"
    ):
        MariaDBServer(tmp_path).start()


def test_server_command_line_is_private_and_extra_options_win(tmp_path: Path) -> None:
    """
    The server reads no system option files, binds the given loopback
    address, keeps its files in its own directory, and extra options come
    last so they override the fast defaults.
    """
    server = MariaDBServer(
        tmp_path, port=40000, extra_options=("--log-bin=binlog", "--server-id=2")
    )
    line = server.command_line()
    assert line[1] == "--no-defaults"
    assert "--bind-address=127.0.0.1" in line
    assert "--port=40000" in line
    assert f"--datadir={tmp_path / 'data'}" in line
    assert f"--socket={tmp_path / 'mariadb.sock'}" in line
    assert line[-2:] == ["--log-bin=binlog", "--server-id=2"]

"""
The storage layer: one interface over SQLite (the embedded default) and
MariaDB/MySQL (through PyMySQL), both driven by L{twisted.enterprise.adbapi}.

Queries are written once, with C{?} placeholders, against L{Transaction};
the dialect turns them into what the driver expects. Everything runs on
adbapi's thread pool: nothing here may block the reactor thread.

Code that already runs in a worker thread (python3-openid's store) calls
L{Storage.run_blocking}, which hands the work to the pool and waits.

A MariaDB connection that died while idle (server restarted, failover,
idle timeout) is reopened at the first statement of the next transaction
and that statement is sent again: nothing of that transaction had reached
the server. A connection lost later in a transaction fails the transaction
(the server rolls it back); one lost during COMMIT raises L{OutcomeUnknown},
because nobody can say whether the write was applied. A transaction that
lost a lock conflict (a deadlock victim, a lock wait that timed out) is
rolled back and run again whole, a few times, after a short jittered wait
(L{LockRetryPolicy}): so a function given to L{Storage.run} must have no
effects outside the database.

On SQLite a transaction begins with its first statement, read or write
(C{BEGIN}, sent by L{Transaction}), not at its first write as Python's
sqlite3 would begin it: what it read is what it writes on, even across
worker processes sharing the file. In WAL mode such a transaction that read
and then writes after another connection committed cannot write
("database is locked" at once; waiting could not help): it runs again at
once, this time holding the write lock from its first statement
(C{BEGIN IMMEDIATE}, waiting up to the busy timeout for it), so it cannot
lose that way twice. A transaction that only reads never takes the lock.

During a database switchover or failover a transaction that provably never
reached a writable primary runs again, with jittered backoff, for up to
C{[database] failover_wait} seconds (L{FailoverRetryPolicy}): no connection
could be made (refused, timed out), the server answered read-only
(1290, 1836: it refused the statement, and the transaction is rolled back),
or the connection was lost before any statement that may write was sent.
A pure read (only SELECT and SHOW sent) runs again after any connection
loss, even during its COMMIT. A transaction that sent a write and then lost
its connection is never run again here, and a COMMIT cut off is
L{OutcomeUnknown}: only the caller knows whether its work is idempotent
(L{run_through_failover}). Each retry is counted (L{AdbapiStorage.counts});
a give-up is one log line and L{NoWritablePrimary}.

An upsert is written as the dialect's upsert (L{Dialect.upsert}), never as
delete-then-insert or update-then-insert, whose gap locks deadlock on
MariaDB under concurrent load.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import random
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from clickpass.config import ConfigError, DatabaseSettings, Settings, read_secret_file
from clickpass.datadir import create_private_file

T = TypeVar("T")

Row = tuple[Any, ...]


class DatabaseError(Exception):
    """A storage operation failed; the message says what, for operators."""


class IntegrityError(DatabaseError):
    """A uniqueness or reference constraint refused a write."""


class OutcomeUnknown(DatabaseError, adbapi.ConnectionLost):
    """
    The connection was lost while the transaction committed: it may or may
    not have been applied. Retry only what is idempotent by key.
    """


class NoWritablePrimary(DatabaseError, adbapi.ConnectionLost):
    """
    No writable database primary took the transaction within
    C{[database] failover_wait}; nothing of it was applied.
    """


# MariaDB client and server error codes that mean "this connection is gone":
# can't connect (2002, 2003), server gone away (2006), lost during query
# (2013, 2055), server shutting down (1053), connection killed (1927),
# disconnected for inactivity (4031).
CONNECTION_LOST_CODES = frozenset({2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031})


def is_connection_lost(error: BaseException) -> bool:
    """Whether C{error} means the database connection is gone (not the statement wrong)."""
    if isinstance(error, adbapi.ConnectionLost):
        return True
    try:
        import pymysql
    except ImportError:  # pragma: no cover - pymysql is a dependency
        return False
    if isinstance(error, pymysql.err.InterfaceError):
        return True
    return (
        isinstance(error, pymysql.err.OperationalError)
        and bool(error.args)
        and error.args[0] in CONNECTION_LOST_CODES
    )


def is_deadlock(error: BaseException) -> bool:
    """
    Whether C{error} says the transaction was given up to break a deadlock,
    so nothing of it was applied and it may simply run again. On SQLite that
    is "database is locked" after the busy timeout: in WAL mode a
    transaction that read first and then wants to write while another
    process wrote gets it at once (waiting could not help), and its work was
    not committed.
    """
    return lock_conflict(error) in ("deadlock", "database is locked")


# MariaDB's answers to a transaction that lost a lock conflict: chosen as a
# deadlock victim (1213; the server rolled all of it back), or its wait for
# a lock timed out (1205; the server undid that statement, and the runner
# rolls back the rest). Either way nothing of it is applied once it is
# rolled back, and running it again may well succeed.
LOCK_CONFLICT_CODES = {1213: "deadlock", 1205: "lock wait timeout"}


def lock_conflict(error: BaseException) -> str | None:
    """
    What lock conflict C{error} reports ("deadlock", "lock wait timeout",
    or SQLite's "database is locked"), or L{None} when it reports none.
    """
    if isinstance(error, sqlite3.OperationalError):
        text = str(error)
        if "database is locked" in text or "database table is locked" in text:
            return "database is locked"
        return None
    try:
        import pymysql
    except ImportError:  # pragma: no cover - pymysql is a dependency
        return None
    if isinstance(error, pymysql.err.OperationalError) and error.args:
        return LOCK_CONFLICT_CODES.get(error.args[0])
    return None


# The server refuses a write because it is read-only (1290, 1836): it is not,
# or no longer, the primary (a switchover or failover is under way).
READ_ONLY_CODES = frozenset({1290, 1836})


def is_read_only_refusal(error: BaseException) -> bool:
    """Whether C{error} is the server refusing a write because it is read-only."""
    try:
        import pymysql
    except ImportError:  # pragma: no cover - pymysql is a dependency
        return False
    return (
        isinstance(error, pymysql.err.MySQLError)
        and bool(error.args)
        and error.args[0] in READ_ONLY_CODES
    )


@dataclass(frozen=True)
class FailoverRetryPolicy:
    """
    How long, and how often, a transaction that never reached a writable
    primary is run again: for up to C{wait} seconds from its first such
    failure, the waits doubling from C{first_delay} up to C{max_delay},
    each drawn between half and all of that (jitter).
    """

    wait: float = 10.0
    first_delay: float = 0.05
    max_delay: float = 0.5

    def delay(self, retry: int, draw: float) -> float:
        """The wait before the C{retry}-th run again (1 for the first); C{draw} in [0, 1)."""
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** (retry - 1))
        return ceiling * (0.5 + draw / 2)


@dataclass(frozen=True)
class LockRetryPolicy:
    """
    How often, and after how long, a transaction that lost a lock conflict
    runs again. The waits double from C{first_delay} up to C{max_delay};
    each is drawn between half and all of that, so that transactions which
    collided once do not collide again in step. With the defaults a
    transaction runs at most 5 times and waits at most 0.15 s in all.
    """

    attempts: int = 5
    first_delay: float = 0.01
    max_delay: float = 0.2

    def delay(self, retry: int, draw: float) -> float:
        """
        The wait before running again for the C{retry}-th time (1 for the
        first), given C{draw}, uniform in [0, 1).
        """
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** (retry - 1))
        return ceiling * (0.5 + draw / 2)


def one_line(error: BaseException) -> str:
    """An error as one line of text, for logs and operators."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL of the two backends."""

    name: Literal["sqlite", "mysql"]

    @property
    def autoincrement_pk(self) -> str:
        if self.name == "sqlite":
            return "INTEGER PRIMARY KEY AUTOINCREMENT"
        return "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY"

    @property
    def table_options(self) -> str:
        if self.name == "sqlite":
            return ""
        return " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

    def insert_ignore(self) -> str:
        """
        The statement head that inserts a row unless its key exists. Only a
        duplicate key is ignored: on MariaDB, L{Transaction.execute} turns
        any other problem that IGNORE downgraded to a warning back into an
        error.
        """
        return "INSERT OR IGNORE" if self.name == "sqlite" else "INSERT IGNORE"

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        key: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> str:
        """
        One statement that inserts a row of C{columns} (one C{?} each) or,
        when a row with the same unique C{key} exists, sets its C{update}
        columns (by default every column not in C{key}) to the new values.
        Never delete-then-insert (or update-then-insert) instead: on MariaDB
        their gap locks deadlock with another transaction doing the same.
        C{key} must be a primary key or a unique index on exactly those
        columns, and on MariaDB it must be the table's only unique key with
        no prefix length: C{ON DUPLICATE KEY} fires on any unique key.
        """
        return _upsert(self.name, table, tuple(columns), tuple(key), tuple(update or ()))

    def translate(self, sql: str) -> str:
        """
        Turn C{?} placeholders into the driver's own. A C{?} inside a quoted
        string, a quoted name or a comment is text, not a placeholder, and
        stays; every C{%} is doubled, since PyMySQL formats the whole
        statement with C{%}.
        """
        if self.name == "sqlite":
            return sql
        return _mysql_statement(sql)


@functools.lru_cache(maxsize=256)
def _upsert(
    dialect: str,
    table: str,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    update: tuple[str, ...],
) -> str:
    changed = update or tuple(c for c in columns if c not in key)
    if not changed:
        raise ValueError(f"an upsert into {table} has no column to update")
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders(columns)}) "
    if dialect == "sqlite":
        sets = ", ".join(f"{c} = excluded.{c}" for c in changed)
        return head + f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
    sets = ", ".join(f"{c} = VALUES({c})" for c in changed)
    return head + f"ON DUPLICATE KEY UPDATE {sets}"


# What a MariaDB statement holds besides placeholders: strings ('' and \'
# escape a quote), quoted names, comments; each taken whole, so that a ? in
# them is not a placeholder.
_MYSQL_TOKENS = re.compile(
    r"""
      '(?:[^'\\]|\\.|'')*'
    | "(?:[^"\\]|\\.|"")*"
    | `(?:[^`]|``)*`
    | /\*.*?\*/
    | (?:--[ \t]|\#)[^\n]*
    | [?%]
    """,
    re.DOTALL | re.VERBOSE,
)


def _mysql_token(match: re.Match[str]) -> str:
    text = match.group()
    if text == "?":
        return "%s"
    return text.replace("%", "%%")


@functools.lru_cache(maxsize=2048)
def _mysql_statement(sql: str) -> str:
    # Statements are mostly constants, and this runs for each one executed.
    return _MYSQL_TOKENS.sub(_mysql_token, sql)


class Transaction:
    """
    One database transaction, used from a pool thread. It commits when the
    function given to L{Storage.run} returns, and rolls back if it raises.
    """

    log = Logger()

    def __init__(self, cursor: Any, dialect: Dialect, *, write_lock: bool = False) -> None:
        self._cursor = cursor
        self.dialect = dialect
        self._statements = 0
        # SQLite: the statement that begins this transaction, sent before its
        # first one. Python's sqlite3 would begin it only at the first write,
        # leaving the reads before it outside the transaction.
        self._begin: str | None = None
        if dialect.name == "sqlite":
            self._begin = "BEGIN IMMEDIATE" if write_lock else "BEGIN"
        # Whether a statement that may write was sent on a live connection:
        # until then, losing the connection cannot have applied anything.
        self.may_have_written = False
        # Whether a statement that commits by itself (DDL) was sent: what
        # came before it is applied whatever happens next.
        self.committed_implicitly = False

    def take_write_lock(self) -> None:
        """
        Hold the database's write lock from this transaction's first
        statement: on SQLite, wait for it (up to the busy timeout) before
        reading anything, so that no other connection writes between this
        transaction's reads and its writes (a migration, whose DDL cannot
        simply be run again). Call it before the first statement. On MariaDB
        it does nothing: InnoDB locks the rows a transaction writes.
        """
        if self._statements:
            raise RuntimeError("take_write_lock must come before the transaction's first statement")
        if self._begin is not None:
            self._begin = "BEGIN IMMEDIATE"

    def execute(self, sql: str, *params: object) -> int:
        """Run one statement; return the number of rows it changed."""
        if self._begin is not None:
            begin, self._begin = self._begin, None
            self._cursor.execute(begin)
        statement = self.dialect.translate(sql)
        first = self._statements == 0
        self._statements += 1
        writes = self.may_have_written or not _is_read(statement)
        self.may_have_written = writes
        if not self.committed_implicitly and _commits_implicitly(statement):
            self.committed_implicitly = True
        try:
            self._send(statement, params)
        except Exception as e:
            if not (first and is_connection_lost(e) and self._can_reconnect()):
                raise
            # The connection died while it sat in the pool. This is the
            # transaction's first statement, so nothing of it was applied
            # (autocommit is off: a lost connection's work is rolled back):
            # sending it again on a new connection is safe, and so is
            # running the whole transaction again if no new one can be made.
            self.may_have_written = False
            self.log.info("database connection was lost ({error}); reconnecting", error=one_line(e))
            self._cursor.reconnect()
            self._cursor.reopen()
            self.may_have_written = writes
            self._send(statement, params)
        changed = int(self._cursor.rowcount or 0)
        if self.dialect.name == "mysql" and statement.lstrip()[:13].upper() == "INSERT IGNORE":
            self._refuse_ignored_errors()
        return changed

    def _refuse_ignored_errors(self) -> None:
        # MariaDB's INSERT IGNORE turns every error into a warning, not only
        # the duplicate key it is meant for: a value too long is truncated,
        # a NULL stored as ''. Only a duplicate key may be ignored.
        if not getattr(self._cursor, "warning_count", 0):
            return
        self._cursor.execute("SHOW WARNINGS")
        for _level, code, message in self._cursor.fetchall():
            if int(code) != 1062:
                raise DatabaseError(f"insert refused: {message}")

    def _send(self, statement: str, params: tuple[object, ...]) -> None:
        try:
            self._cursor.execute(statement, params)
        except Exception as e:
            if _is_integrity_error(e):
                raise IntegrityError(str(e)) from e
            raise

    def _can_reconnect(self) -> bool:
        # Only adbapi's transactions (in the pool, with cp_reconnect) can
        # reopen their connection; a DirectStorage's plain cursor cannot.
        return (
            self.dialect.name == "mysql"
            and isinstance(self._cursor, adbapi.Transaction)
            and bool(getattr(self._cursor._pool, "reconnect", False))
        )

    def fetchone(self, sql: str, *params: object) -> Row | None:
        """Run a query and return its first row, or L{None}."""
        self.execute(sql, *params)
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def fetchall(self, sql: str, *params: object) -> list[Row]:
        """Run a query and return all its rows."""
        self.execute(sql, *params)
        return [tuple(r) for r in self._cursor.fetchall()]

    def scalar(self, sql: str, *params: object) -> Any:
        """Run a query and return the first column of its first row, or L{None}."""
        row = self.fetchone(sql, *params)
        return row[0] if row else None

    @property
    def lastrowid(self) -> int:
        return int(self._cursor.lastrowid)


def _is_read(statement: str) -> bool:
    """Whether C{statement} only reads (SELECT, SHOW): it cannot change data."""
    head = statement.lstrip()[:6].upper()
    return head == "SELECT" or head[:4] == "SHOW"


_IMPLICIT_COMMIT = ("CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE")


def _commits_implicitly(statement: str) -> bool:
    """Whether C{statement} is DDL, which MariaDB commits at once, whatever follows."""
    return statement.lstrip()[:8].upper().startswith(_IMPLICIT_COMMIT)


def _is_integrity_error(e: Exception) -> bool:
    if isinstance(e, sqlite3.IntegrityError):
        return True
    try:
        import pymysql
    except ImportError:  # pragma: no cover - pymysql is a dependency
        return False
    return isinstance(e, pymysql.err.IntegrityError)


class Storage(Protocol):
    """What the application needs of the database."""

    dialect: Dialect

    def run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        """
        Run C{fn(transaction, *args)} in one transaction on the pool. C{fn}
        may be run more than once (after a lost lock conflict: a deadlock, a
        lock wait timeout), so its only effects must be in the database.
        """

    def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """From a non-reactor thread: run C{fn} like L{run} and wait for it."""

    def describe(self) -> str:
        """A short description of the backend for operators (no secrets)."""

    def close(self) -> None:
        """Close every connection."""


class _Pool(adbapi.ConnectionPool):
    """
    adbapi's pool, with connection loss handled in one log line: a
    connection that fails its rollback is dropped (and reopened on next
    use) instead of logging tracebacks, and a commit cut off by a lost
    connection raises L{OutcomeUnknown}.

    A transaction that fails is rolled back here; whether it runs again
    is L{AdbapiStorage}'s decision, taken on the reactor thread so that no
    pool thread sleeps through the wait.
    """

    log = Logger()

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:
        conn = self.connectionFactory(self)
        trans = self.transactionFactory(self, conn)
        try:
            result = interaction(trans, *args, **kw)
            trans.close()
        except BaseException as e:
            self._abandon(conn, e)
            raise
        try:
            conn.commit()
        except BaseException as e:
            self._abandon(conn, e)
            if is_connection_lost(e):
                raise OutcomeUnknown(
                    "the database connection was lost while committing; the write may "
                    f"or may not have been applied ({one_line(e)})"
                ) from e
            raise
        return result

    def _abandon(self, conn: adbapi.Connection, error: BaseException) -> None:
        """Roll back after C{error}; drop the connection if it is no longer usable."""
        raw: Any = conn._connection
        try:
            raw.rollback()
            if is_read_only_refusal(error):
                # A connection to a server that is no longer the primary:
                # the next transaction connects again, through the VIP.
                with contextlib.suppress(Exception):
                    self.disconnect(raw)
                return
            if is_connection_lost(error):
                # The statement said the connection was lost; make sure.
                raw.cursor().execute(self.good_sql)
        except Exception as e:
            self.log.warn(
                "database connection lost ({error}; rollback: {rollback}); it will be "
                "reopened when next needed",
                error=one_line(error),
                rollback=one_line(e),
            )
            with contextlib.suppress(Exception):
                self.disconnect(raw)

    def _close(self, conn: Any) -> None:
        # Closing a connection that is already dead is not worth a traceback.
        with contextlib.suppress(Exception):
            conn.close()


class _Run:
    """One L{AdbapiStorage.run}: its attempts, and the failover wait once one began."""

    __slots__ = ("failover_deadline", "failover_retries", "name", "transaction", "write_lock")

    def __init__(self, name: str) -> None:
        self.name = name
        # The last attempt's transaction (None: no connection was made).
        self.transaction: Transaction | None = None
        self.failover_deadline: float | None = None
        self.failover_retries = 0
        # SQLite: whether the next attempt holds the write lock from its start.
        self.write_lock = False


def never_reached_primary(error: BaseException, transaction: Transaction | None) -> bool:
    """
    Whether a transaction that failed with C{error} provably applied nothing
    and may run again on another primary: the server refused it as
    read-only, or the connection was lost before anything that may write was
    sent (or could not be made at all: C{transaction} is L{None}); a pure
    read may have lost it anywhere, its COMMIT included. Never after DDL
    (committed at once), nor for L{NoWritablePrimary} (a give-up).
    """
    if isinstance(error, NoWritablePrimary):
        return False
    if transaction is not None and transaction.committed_implicitly:
        return False  # its DDL is applied: running it again is the caller's call
    if is_read_only_refusal(error):
        return True
    if not is_connection_lost(error):
        return False
    return transaction is None or not transaction.may_have_written


class AdbapiStorage:
    """
    L{Storage} on an adbapi connection pool. A transaction that lost a lock
    conflict (L{lock_conflict}) runs again as L{LockRetryPolicy} says, each
    time logged and counted in L{counts}; the last failure reaches the
    caller. On SQLite the first such retry is at once, with the write lock
    held from the start (a lost snapshot: see the module's docstring), and
    logged at debug level only. One that never reached a writable primary
    (L{never_reached_primary}) runs again as L{FailoverRetryPolicy} says,
    each retry counted in L{counts}, a give-up logged once and raised as
    L{NoWritablePrimary}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorThreads,
        dialect: Dialect,
        pool: adbapi.ConnectionPool,
        description: str,
        *,
        clock: IReactorTime | None = None,
        retry: LockRetryPolicy = LockRetryPolicy(),
        failover: FailoverRetryPolicy = FailoverRetryPolicy(),
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._reactor = reactor
        self.dialect = dialect
        self._pool = pool
        self._description = description
        self._clock = clock if clock is not None else IReactorTime(reactor)
        self._retry = retry
        self._failover = failover
        self._draw = draw
        # For /metrics: transactions run again because no writable primary
        # took them (a switchover, a failover), and those given up; and
        # lock conflicts lost (each one ran again or reached the caller).
        self.counts: Counter[str] = Counter()

    def run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        dialect = self.dialect
        # The transaction runs in its caller's context (the pool's threads
        # do not carry it): mail rendered inside it is in the language of
        # the request that caused it.
        context = contextvars.copy_context()
        state = _Run(getattr(fn, "__qualname__", repr(fn)))

        def interaction(cursor: Any) -> T:
            transaction = Transaction(cursor, dialect, write_lock=state.write_lock)
            state.transaction = transaction
            return context.run(fn, transaction, *args)

        return self._attempt(interaction, 1, state)

    def _attempt(self, interaction: Callable[[Any], T], attempt: int, state: _Run) -> Deferred[T]:
        state.transaction = None
        d: Deferred[T] = self._pool.runInteraction(interaction)
        # Only a failure pays for the retry: success goes straight through.
        d.addErrback(self._after_failure, interaction, attempt, state)
        return d

    def _after_failure(
        self, failure: Failure, interaction: Callable[[Any], T], attempt: int, state: _Run
    ) -> Failure | Deferred[T]:
        error = failure.value
        if error is None:  # pragma: no cover - a Failure always holds its exception
            return failure
        if never_reached_primary(error, state.transaction) and self.dialect.name == "mysql":
            return self._after_no_primary(failure, error, interaction, attempt, state)
        conflict = lock_conflict(error)
        if conflict is None:
            return failure
        self.counts["lock_conflicts"] += 1
        name = state.name
        if attempt >= self._retry.attempts:
            self.log.warn(
                "transaction {transaction} lost a lock conflict ({conflict}) {attempt} times; "
                "giving up",
                transaction=name,
                conflict=conflict,
                attempt=attempt,
            )
            return failure
        if self.dialect.name == "sqlite" and not state.write_lock:
            # It read, and another connection wrote before it could: once
            # more at once, holding the write lock from its first statement
            # (its BEGIN IMMEDIATE waits for the lock, so no jitter needed).
            state.write_lock = True
            self.log.debug(
                "transaction {transaction} lost its snapshot to another writer ({conflict}); "
                "running it again with the write lock",
                transaction=name,
                conflict=conflict,
            )
            return self._attempt(interaction, attempt + 1, state)
        delay = self._retry.delay(attempt, self._draw())
        self.log.info(
            "transaction {transaction} lost a lock conflict ({conflict}); running it again "
            "in {delay:.3f}s (attempt {next} of {attempts})",
            transaction=name,
            conflict=conflict,
            delay=delay,
            next=attempt + 1,
            attempts=self._retry.attempts,
        )
        waited: Deferred[None] = deferLater(self._clock, delay)
        return waited.addCallback(lambda _: self._attempt(interaction, attempt + 1, state))

    def _after_no_primary(
        self,
        failure: Failure,
        error: BaseException,
        interaction: Callable[[Any], T],
        attempt: int,
        state: _Run,
    ) -> Failure | Deferred[T]:
        """Run again, after a jittered wait, until the failover wait is over; then give up."""
        now = self._clock.seconds()
        if state.failover_deadline is None:
            state.failover_deadline = now + self._failover.wait
        delay = self._failover.delay(state.failover_retries + 1, self._draw())
        if now + delay > state.failover_deadline:
            self.counts["failover_gave_up"] += 1
            message = (
                f"no writable database primary took transaction {state.name} within "
                f"{self._failover.wait:g}s ({state.failover_retries + 1} attempts; last: "
                f"{one_line(error)}); nothing of it was applied"
            )
            self.log.warn("{message}", message=message)
            given_up = NoWritablePrimary(message)
            given_up.__cause__ = error
            return Failure(given_up)
        state.failover_retries += 1
        self.counts["failover_retries"] += 1
        waited: Deferred[None] = deferLater(self._clock, delay)
        return waited.addCallback(lambda _: self._attempt(interaction, attempt + 1, state))

    def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        if isInIOThread():
            # blockingCallFromThread would wait forever for the reactor it blocks.
            raise RuntimeError("run_blocking was called on the reactor thread; it would deadlock")

        def run_here() -> Deferred[T]:
            return self.run(fn, *args)

        # Typed for this one use: from a function returning Deferred[T] alone,
        # mypy cannot tell whether blockingCallFromThread answers T or
        # Deferred[T] (its parameter is a union of both callables).
        wait_for: Callable[[IReactorThreads, Callable[[], Deferred[T]]], T] = blockingCallFromThread
        result = wait_for(self._reactor, run_here)
        return result

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        self._pool.close()


class DirectStorage:
    """
    L{Storage} on one plain DB-API connection, run in the calling thread.
    For command-line tools (C{clickpass-ctl db migrate}) that have no
    reactor; never for the node, whose reactor must not block. On SQLite a
    transaction that lost a lock conflict (another process wrote after it
    read) runs once more, holding the write lock from its start; on
    MariaDB a lock conflict reaches the caller.
    """

    def __init__(self, connection: Any, dialect: Dialect, description: str) -> None:
        self._connection = connection
        self.dialect = dialect
        self._description = description

    def run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        from twisted.internet.defer import fail, succeed

        try:
            result = self.run_blocking(fn, *args)
        except BaseException:
            return fail()
        return succeed(result)

    def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return self._run_once(fn, args, write_lock=False)
        except Exception as e:
            if self.dialect.name != "sqlite" or lock_conflict(e) is None:
                raise
        # It read, and a node's worker wrote before it could: once more,
        # holding the write lock from its first statement (waiting for it up
        # to the busy timeout), so it cannot lose that way again.
        return self._run_once(fn, args, write_lock=True)

    def _run_once(self, fn: Callable[..., T], args: tuple[object, ...], *, write_lock: bool) -> T:
        cursor = self._connection.cursor()
        try:
            result = fn(Transaction(cursor, self.dialect, write_lock=write_lock), *args)
            self._connection.commit()
            return result
        except BaseException:
            self._connection.rollback()
            raise
        finally:
            cursor.close()

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        self._connection.close()


def configure_sqlite(connection: sqlite3.Connection) -> None:
    """Set the pragmas every Clickpass SQLite connection needs."""
    # WAL lets several worker processes read while one writes; FULL sync
    # means a commit that returned survives a power loss.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=10000")


def open_sqlite(reactor: IReactorThreads, path: Path) -> AdbapiStorage:
    """Open (creating if needed, mode 0600) the SQLite database at C{path}."""
    # SQLite would create the file with the process's umask, and its -wal
    # and -shm files with the database file's mode: make it private first.
    create_private_file(path)
    pool = _Pool(
        "sqlite3",
        str(path),
        check_same_thread=False,
        timeout=10.0,
        cp_min=1,
        cp_max=1,
        cp_openfun=configure_sqlite,
        cp_reactor=reactor,
        cp_noisy=False,
    )
    return AdbapiStorage(reactor, Dialect("sqlite"), pool, f"sqlite {path}")


_DEFAULTS = DatabaseSettings()

# Strict on every connection, whatever the server's own configuration says:
# a value that does not fit is an error, never silently truncated.
MYSQL_SQL_MODE = (
    "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ZERO_DATE,NO_ZERO_IN_DATE,"
    "NO_ENGINE_SUBSTITUTION"
)


def open_mysql(
    reactor: IReactorThreads,
    *,
    host: str = "127.0.0.1",
    port: int = 3306,
    unix_socket: str = "",
    user: str,
    password: str,
    database: str,
    pool_min: int = 2,
    pool_max: int = 8,
    connect_timeout: float = _DEFAULTS.connect_timeout,
    read_timeout: float = _DEFAULTS.read_timeout,
    write_timeout: float = _DEFAULTS.write_timeout,
    lock_wait_timeout: int = _DEFAULTS.lock_wait_timeout,
    failover_wait: float = _DEFAULTS.failover_wait,
) -> AdbapiStorage:
    """
    Open a connection pool to a MariaDB/MySQL server through PyMySQL. The
    timeouts are C{[database]}'s (L{DatabaseSettings}); they bound how long
    a statement waits on a primary that froze or became unreachable, so
    that the application rides a failover (C{docs/database-failover.md}).
    """
    kwargs: dict[str, Any] = {
        "user": user,
        "password": password,
        "database": database,
        "charset": "utf8mb4",
        "autocommit": False,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "write_timeout": write_timeout,
        "sql_mode": MYSQL_SQL_MODE,
        # A statement waiting for a lock must fail (1205, and its transaction
        # runs again) before the read timeout gives its connection up for
        # lost; the server's own default is 50 s.
        "init_command": f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait_timeout)}",
    }
    if unix_socket:
        kwargs["unix_socket"] = unix_socket
        where = unix_socket
    else:
        kwargs["host"] = host
        kwargs["port"] = port
        where = f"{host}:{port}"
    pool = _Pool(
        "pymysql",
        cp_min=pool_min,
        cp_max=pool_max,
        cp_reconnect=True,
        cp_good_sql="SELECT 1",
        cp_reactor=reactor,
        cp_noisy=False,
        **kwargs,
    )
    return AdbapiStorage(
        reactor,
        Dialect("mysql"),
        pool,
        f"mysql {user}@{where}/{database}",
        failover=FailoverRetryPolicy(wait=failover_wait),
    )


def open_storage(reactor: IReactorThreads, settings: Settings) -> AdbapiStorage:
    """Open the storage the configuration names."""
    db = settings.database
    if db.backend == "sqlite":
        return open_sqlite(reactor, settings.sqlite_path)
    password = ""
    if db.password_file:
        password = read_secret_file(
            settings.data_path(db.password_file), "[database] password_file"
        )
    return open_mysql(
        reactor,
        host=db.host,
        port=db.port,
        unix_socket=db.unix_socket,
        user=db.user,
        password=password,
        database=db.name,
        pool_min=db.pool_min,
        pool_max=db.pool_max,
        connect_timeout=db.connect_timeout,
        read_timeout=db.read_timeout,
        write_timeout=db.write_timeout,
        lock_wait_timeout=db.lock_wait_timeout,
        failover_wait=db.failover_wait,
    )


def placeholders(values: Sequence[object]) -> str:
    """C{?, ?, ?} for an C{IN (...)} clause of C{len(values)} items."""
    return ", ".join("?" for _ in values)


# The database failing over: MariaDB refuses writes while read-only (1290,
# 1836), and connections to the old primary are ended or refused.
FAILOVER_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.5, 1.0)


def is_failover_refusal(error: BaseException) -> bool:
    """
    Whether C{error} says the transaction was refused before it committed
    because the database is changing primary: the connection was lost
    during the transaction (the server rolled it back), or the server is
    read-only. Nothing of it was applied, so it may run again. Never true
    for L{OutcomeUnknown}, nor for L{NoWritablePrimary} (the storage already
    waited C{failover_wait} for a primary).
    """
    if isinstance(error, OutcomeUnknown | NoWritablePrimary):
        return False
    return is_connection_lost(error) or is_read_only_refusal(error)


async def run_through_failover(
    clock: IReactorTime,
    storage: Storage,
    fn: Callable[..., T],
    *args: object,
    idempotent: bool = False,
    budget: float = 10.0,
) -> T:
    """
    L{Storage.run}, carried through a database failover: a transaction
    refused before it committed (L{is_failover_refusal}) runs again, with
    backoff, for up to C{budget} seconds, reconnecting through the database
    VIP. A commit whose outcome is unknown (L{OutcomeUnknown}) runs again
    only when C{idempotent}: C{fn} must then find its own earlier write by
    key and not apply it twice. Otherwise it is raised, never retried: the
    caller reports the outcome as unknown.
    """
    waited = 0.0
    attempt = 0
    while True:
        try:
            return await storage.run(fn, *args)
        except Exception as e:
            again = is_failover_refusal(e) or (idempotent and isinstance(e, OutcomeUnknown))
            delay = FAILOVER_RETRY_DELAYS[min(attempt, len(FAILOVER_RETRY_DELAYS) - 1)]
            if not again or waited + delay > budget:
                raise
            attempt += 1
            waited += delay
            _failover_log.info(
                "database refused a transaction during a failover ({error}); running it "
                "again in {delay}s (attempt {attempt})",
                error=one_line(e),
                delay=delay,
                attempt=attempt + 1,
            )
            await deferLater(clock, delay, lambda: None)


_failover_log = Logger(namespace="clickpass.storage.failover")


__all__ = [
    "MYSQL_SQL_MODE",
    "AdbapiStorage",
    "ConfigError",
    "DatabaseError",
    "Dialect",
    "FailoverRetryPolicy",
    "IntegrityError",
    "LockRetryPolicy",
    "NoWritablePrimary",
    "OutcomeUnknown",
    "Storage",
    "Transaction",
    "configure_sqlite",
    "is_connection_lost",
    "is_deadlock",
    "is_failover_refusal",
    "is_read_only_refusal",
    "lock_conflict",
    "never_reached_primary",
    "one_line",
    "open_mysql",
    "open_sqlite",
    "open_storage",
    "placeholders",
    "run_through_failover",
]

"""
The application side of a database failover, on a task.Clock with a fake
storage: a transaction refused before it committed (connection lost,
read-only server) runs again with backoff; a commit of unknown outcome runs
again only when the work is idempotent by key, and then applies once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pymysql
import pytest

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from clickpass.storage.sql import (
    IntegrityError,
    OutcomeUnknown,
    is_failover_refusal,
    run_through_failover,
)

T = TypeVar("T")

READ_ONLY = pymysql.err.OperationalError(1290, "The MariaDB server is running with --read-only")
LOST = pymysql.err.OperationalError(2013, "Lost connection to server during query")


class FakeStorage:
    """Runs C{fn(rows)}; the scripted failures come first, each before or after applying."""

    def __init__(self, script: list[tuple[str, Exception]]) -> None:
        self.rows: dict[str, str] = {}
        self.script = list(script)
        self.runs = 0

    def run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        self.runs += 1
        if self.script:
            when, error = self.script.pop(0)
            if when == "after":
                fn(self.rows, *args)  # applied, but the answer was lost
            return fail(error)
        return succeed(fn(self.rows, *args))

    def run_blocking(self, fn: Callable[..., T], *args: object) -> T:  # pragma: no cover
        raise NotImplementedError


def sign_up(rows: dict[str, str], email: str, name: str) -> str:
    """Idempotent by key: an earlier identical write is found, not applied twice."""
    if email in rows:
        if rows[email] != name:
            raise IntegrityError(f"{email} exists")
        return "existing"
    rows[email] = name
    return "created"


def start(clock: Clock, storage: FakeStorage, **kw: Any) -> Deferred[str]:
    return Deferred.fromCoroutine(
        run_through_failover(clock, storage, sign_up, "a@example.org", "A", **kw)  # type: ignore[arg-type]
    )


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not finished"
    return results[0]


def test_refusals_during_a_failover_are_run_again_with_backoff() -> None:
    """Read-only and lost-connection refusals: it runs again until a primary takes it."""
    clock = Clock()
    storage = FakeStorage([("before", READ_ONLY), ("before", LOST), ("before", READ_ONLY)])
    d = start(clock, storage)
    assert not d.called and storage.runs == 1
    clock.advance(0.05)
    clock.advance(0.1)
    assert storage.runs == 3 and not d.called
    clock.advance(0.2)
    assert outcome(d) == "created"
    assert storage.runs == 4 and storage.rows == {"a@example.org": "A"}


def test_unknown_outcome_is_reported_not_retried_when_not_idempotent() -> None:
    """A commit that may have applied is raised as OutcomeUnknown, never run twice."""
    clock = Clock()
    storage = FakeStorage([("after", OutcomeUnknown("lost while committing"))])
    d = start(clock, storage)
    result = outcome(d)
    assert result.check(OutcomeUnknown)
    assert storage.runs == 1


def test_unknown_outcome_of_an_idempotent_write_is_resolved_by_key() -> None:
    """Idempotent by key: the rerun finds the earlier write and the row exists once."""
    clock = Clock()
    storage = FakeStorage([("after", OutcomeUnknown("lost while committing"))])
    d = start(clock, storage, idempotent=True)
    clock.advance(0.05)
    assert outcome(d) == "existing"
    assert storage.runs == 2 and storage.rows == {"a@example.org": "A"}


def test_other_errors_are_raised_at_once() -> None:
    """A constraint or syntax error is the caller's problem: no retry."""
    clock = Clock()
    storage = FakeStorage([("before", IntegrityError("duplicate"))])
    result = outcome(start(clock, storage))
    assert result.check(IntegrityError) and storage.runs == 1


def test_the_retry_budget_ends_with_the_last_error() -> None:
    """No primary for longer than the budget: the refusal is raised."""
    clock = Clock()
    storage = FakeStorage([("before", READ_ONLY)] * 100)
    d = start(clock, storage, budget=2.0)
    for _ in range(100):
        clock.advance(0.05)
    result = outcome(d)
    assert result.check(pymysql.err.OperationalError)
    assert 3 < storage.runs < 10


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (READ_ONLY, True),
        (LOST, True),
        (pymysql.err.OperationalError(1836, "read-only mode"), True),
        (OutcomeUnknown("x"), False),
        (pymysql.err.IntegrityError(1062, "Duplicate entry"), False),
        (ValueError("bug"), False),
    ],
)
def test_which_errors_are_failover_refusals(error: Exception, expected: bool) -> None:
    """Only errors that prove nothing was applied count as refusals."""
    assert is_failover_refusal(error) is expected

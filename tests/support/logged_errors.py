"""
Errors that code under test logged through Twisted's global log publisher
(C{log.failure}, C{log.err}, an unhandled error in a Deferred): the suite
fails a test whose code logged one it did not expect (tests/conftest.py).

A test that provokes such an error on purpose says so with the marker
C{@pytest.mark.logs_errors("why")}, or asks for the fixture
C{logged_errors} and checks what was logged itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer


def is_error(event: LogEvent) -> bool:
    """Whether C{event} reports a failure (a traceback), not only a message."""
    return event.get("log_failure") is not None or bool(event.get("isError"))


def describe(event: LogEvent) -> str:
    """One logged error as text: its message and, when there is one, its traceback."""
    text = formatEvent(event)
    failure: Any = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    return text


@implementer(ILogObserver)
class ErrorCollector:
    """Keeps the error events it observes."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if is_error(event):
            self.events.append(event)

    def report(self) -> str:
        """Every error kept, described, for a failing test's message."""
        return "\n\n".join(describe(event) for event in self.events)


@contextmanager
def collecting_errors() -> Iterator[ErrorCollector]:
    """An L{ErrorCollector} on the global log publisher while the block runs."""
    collector = ErrorCollector()
    globalLogPublisher.addObserver(collector)
    try:
        yield collector
    finally:
        globalLogPublisher.removeObserver(collector)

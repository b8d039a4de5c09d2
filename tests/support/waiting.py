"""
Waiting for something to become true, the one way the tests do it: poll a
check until it holds, with a generous deadline, and never sleep a fixed time
to let something happen.

L{wait_for} and L{eventually} block the calling thread (for synchronous
tests driving processes); L{wait_for_on} and L{eventually_on} wait on the
reactor (for tests running on it, where a blocking sleep would stop the very
thing being waited for).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

T = TypeVar("T")

# How often a check is tried: often enough that a test does not wait long
# after the fact, seldom enough that polling costs little.
INTERVAL = 0.05


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "the condition",
    interval: float = INTERVAL,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """
    Call C{check} until it returns something true (not None, False, 0 or
    empty), and return that.

    @param ignore: exceptions that count as "not yet" (a server still
        starting refuses connections, say) instead of failing at once.
    @raise AssertionError: after C{timeout} seconds, naming C{what} and the
        last value C{check} returned.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except ignore as e:
            last = e
        else:
            if last:
                return cast(T, last)
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")
        time.sleep(interval)


def eventually(check: Callable[[], object], timeout: float, interval: float = INTERVAL) -> bool:
    """True as soon as C{check} returns something true; False after C{timeout} seconds."""
    try:
        wait_for(check, timeout, interval=interval)
    except AssertionError:
        return False
    return True


async def _result(value: object) -> object:
    """C{value}, or what it fires with when it is a Deferred or an awaitable."""
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


async def wait_for_on(
    reactor: IReactorTime,
    check: Callable[[], object],
    timeout: float = 30.0,
    what: str = "the condition",
    interval: float = INTERVAL,
) -> Any:
    """
    Like L{wait_for}, on the reactor: C{check} may return a value, a
    Deferred or an awaitable; the reactor runs between tries.
    """
    deadline = reactor.seconds() + timeout
    last: Any = None
    while True:
        last = await _result(check())
        if last:
            return last
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")
        await deferLater(reactor, interval, lambda: None)


def eventually_on(
    reactor: IReactorTime,
    check: Callable[[], object],
    timeout: float,
    interval: float = INTERVAL,
) -> Deferred[bool]:
    """A Deferred that fires True as soon as C{check} holds, False after C{timeout}."""

    async def waiting() -> bool:
        try:
            await wait_for_on(reactor, check, timeout, interval=interval)
        except AssertionError:
            return False
        return True

    return ensureDeferred(waiting())

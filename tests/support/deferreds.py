"""
Typed helpers around pytest-twisted, so test modules stay mypy-strict.

Nothing here starts or stops the reactor; pytest-twisted does that.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

import pytest_twisted

from twisted.internet.defer import Deferred

P = ParamSpec("P")
T = TypeVar("T")


def async_test(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Deferred[T]]:
    """Run an C{async def} test on the reactor (pytest-twisted's ensureDeferred), typed."""
    return cast(Callable[P, Deferred[T]], pytest_twisted.ensureDeferred(fn))


def block_on(d: Deferred[T]) -> T:
    """Wait for C{d} from synchronous test code (a fixture) while the reactor runs."""
    return cast(T, pytest_twisted.blockon(d))

"""
The reactor a node and its workers run on: Twisted's epoll reactor with a
leaner dispatch of plain read events.

Twisted's epoll reactor wraps every I/O event in C{log.callWithLogger},
which sets the log context (the selectable's C{logPrefix()} as the
C{system} of legacy C{twisted.python.log} calls) through three more
layers of calls, and checks C{fileno()} (two more) before C{doRead()}.
A proxied request is at least two events in the front (the client's
request, the worker's response) and two in the worker, and that wrapping
was about a sixth of the front's CPU per request (C{docs/balancer.md}).

L{LeanEpollReactor} does the same for an event that is only "readable",
which is nearly every event under load, with three calls: it checks
C{fileno()}, pushes the same log context (C{system} = C{logPrefix()}) on
the reactor thread's context stack itself, and calls C{doRead()}.
Everything else (writable, hang-up, error), and every failure, even of a
plain read, goes through the inherited code, so errors are logged, and
connections lost, exactly as Twisted does it.

It also works out how long it may sleep (C{timeout()}, once per turn of the
loop) without Twisted's two builtin C{min}/C{max} calls, with the same
answer.

This module must never change what a protocol sees: the same calls, in
the same order, with the same failures and the same log context.
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLIN
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import context, log
from twisted.python.failure import Failure
from twisted.python.log import ILogContext

# The longest sleep epoll_wait takes (2 ** 31 milliseconds), as in Twisted.
_LONGEST_SLEEP = 2147483


class LeanEpollReactor(EPollReactor):
    """An epoll reactor that dispatches plain read events in three calls."""

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # Wait indefinitely.
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        # What log.callWithLogger pushes, pushed by hand: the reactor
        # thread's log context with the selectable's prefix as "system".
        contexts = context.theContextTracker.currentContext().contexts
        around = context.get(ILogContext)
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event != EPOLLIN:
                log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                continue
            try:
                if selectable.fileno() == -1:
                    raise ValueError("no file descriptor")
                contexts.append({ILogContext: {**around, "system": selectable.logPrefix()}})
            except BaseException:
                # A lost descriptor or a buggy logPrefix: Twisted's own
                # dispatch reports it.
                log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                continue
            try:
                why = selectable.doRead()
            except BaseException:
                why = None
                log.callWithLogger(selectable, self._readFailed, selectable, Failure())
            finally:
                contexts.pop()
            if why:
                log.callWithLogger(selectable, self._disconnectSelectable, selectable, why, True)

    doIteration = doPoll

    def timeout(self) -> float | None:
        # ReactorBase.timeout, with the clamping written out: it runs once
        # per turn of the loop, one or two turns per proxied request.
        if self._newTimedCalls:
            self._insertNewDelayedCalls()
        pending = self._pendingTimedCalls
        if not pending:
            return None
        delay: float = pending[0].time - self.seconds()
        if delay < 0:
            return 0
        return delay if delay < _LONGEST_SLEEP else _LONGEST_SLEEP

    def _readFailed(self, selectable: Any, failure: Failure) -> None:
        # What the inherited _doReadOrWrite does when doRead raises.
        log.err(failure)
        self._disconnectSelectable(selectable, failure.value, True)


def install() -> LeanEpollReactor:
    """Install L{LeanEpollReactor} as the global reactor and return it."""
    from twisted.internet.main import installReactor

    reactor = LeanEpollReactor()
    installReactor(reactor)
    return reactor


def install_unless_chosen() -> None:
    """
    Install L{LeanEpollReactor} unless a reactor is installed already (for
    example by C{twistd --reactor=NAME}, which is then respected).
    """
    if "twisted.internet.reactor" not in sys.modules:
        install()

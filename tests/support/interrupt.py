"""
Ctrl-C for a test run whose reactor runs in pytest-twisted's greenlet.

pytest-twisted keeps Twisted from taking SIGINT over, so that the signal
raises KeyboardInterrupt as in any Python program. But while a test waits
on a Deferred, the code running is the reactor's main loop in its own
greenlet, and Twisted's main loop logs every exception that reaches it
(BaseException too) and carries on: the KeyboardInterrupt was swallowed,
and Ctrl-C stopped nothing until the test ended by itself.

L{install} replaces the handler with one that raises KeyboardInterrupt in
the greenlet pytest runs in (where it ends the run as usual); the reactor's
greenlet stays where it was until teardown resumes it, and then unwinds
what was interrupted there.
"""

from __future__ import annotations

import signal
from types import FrameType

import greenlet


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Raise KeyboardInterrupt where pytest runs, not in the reactor's loop."""
    current = greenlet.getcurrent()
    if current.parent is None:
        # pytest's own greenlet: the ordinary KeyboardInterrupt.
        signal.default_int_handler(signum, frame)
        return
    # The reactor's greenlet: its parent is waiting for it in a blockon.
    current.parent.throw(KeyboardInterrupt)
    # Resumed (by a fixture's teardown, or pytest-twisted stopping the
    # reactor): end what was interrupted (a test's blocking call, say)
    # instead of letting it run on.
    raise KeyboardInterrupt


def install() -> None:
    """Take SIGINT over, in the main thread, unless someone chose to ignore it."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    signal.signal(signal.SIGINT, interrupt)

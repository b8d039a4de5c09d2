"""
Housekeeping: delete what has expired (sessions, OpenID nonces and
associations, old sign-in failure counters) on a timer.

Each task is an async callable taking the current time; a failing task is
logged and the others still run. Nothing here decides what expires: the
owners of the data do; this only calls them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

Task = tuple[str, Callable[[int], Awaitable[int]]]

DEFAULT_INTERVAL = 600.0


class Housekeeping(Service):
    """Runs the expiry tasks every C{interval} seconds, starting at once."""

    log = Logger()

    def __init__(
        self, clock: IReactorTime, tasks: Sequence[Task], interval: float = DEFAULT_INTERVAL
    ) -> None:
        self.setName("housekeeping")
        self._clock = clock
        self._tasks = list(tasks)
        self._interval = interval
        self._loop: LoopingCall | None = None
        self.runs = 0

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.run_once)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: self.log.failure("housekeeping loop stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def run_once(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        now = int(self._clock.seconds())
        for name, task in self._tasks:
            try:
                removed = await task(now)
            except Exception:
                self.log.failure("housekeeping task {task} failed", task=name)
                continue
            if removed:
                self.log.info("housekeeping: {task} removed {count}", task=name, count=removed)
        self.runs += 1

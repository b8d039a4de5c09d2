"""Housekeeping runs every expiry task on a timer, whatever one of them does."""

from __future__ import annotations

import pytest

from twisted.internet.task import Clock

from clickpass.housekeeping import Housekeeping


def test_tasks_run_at_start_and_every_interval() -> None:
    """Every task runs at once, then each interval, with the clock's time; stop ends it."""
    clock = Clock()
    clock.advance(1000)
    seen: list[tuple[str, int]] = []

    async def sessions(now: int) -> int:
        seen.append(("sessions", now))
        return 2

    async def nonces(now: int) -> int:
        seen.append(("nonces", now))
        return 0

    service = Housekeeping(clock, [("sessions", sessions), ("nonces", nonces)], interval=60)
    service.startService()
    assert seen == [("sessions", 1000), ("nonces", 1000)]
    clock.advance(59)
    assert len(seen) == 2
    clock.advance(1)
    assert seen[2:] == [("sessions", 1060), ("nonces", 1060)]
    service.stopService()
    clock.advance(600)
    assert len(seen) == 4
    assert service.runs == 2


@pytest.mark.logs_errors("a failing task is logged")
def test_a_failing_task_does_not_stop_the_others() -> None:
    """A task that raises is logged; the next task and the next round still run."""
    clock = Clock()
    ran: list[int] = []

    async def broken(now: int) -> int:
        raise RuntimeError("database went away")

    async def fine(now: int) -> int:
        ran.append(now)
        return 1

    service = Housekeeping(clock, [("broken", broken), ("fine", fine)], interval=10)
    service.startService()
    clock.advance(10)
    assert ran == [0, 10]
    service.stopService()

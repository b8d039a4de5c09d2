"""
The router keeps the handlers still running, so a stopping worker can wait
for the requests already inside the application before it closes the
storage (L{Router.when_idle}, L{Router.in_flight}).
"""

from __future__ import annotations

from typing import Any

import pytest

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred

from clickpass.web.routing import HTTPError, Router


def router_with_gates() -> tuple[Router, dict[str, Deferred[bytes]]]:
    """A router whose C{/wait/NAME} handler waits for C{gates[NAME]} to fire."""
    router = Router()
    gates: dict[str, Deferred[bytes]] = {}

    async def wait(request: Any, name: str) -> bytes:
        gate: Deferred[bytes] = Deferred()
        gates[name] = gate
        return await gate

    async def quick(request: Any) -> bytes:
        return b"quick\n"

    router.add("GET", "/wait/{name}", wait)
    router.add("GET", "/quick", quick)
    return router, gates


def test_when_idle_fires_at_once_with_nothing_running() -> None:
    """With no handler running, the wait is over before it starts."""
    router, _ = router_with_gates()
    idle = router.when_idle()
    assert idle.called
    assert router.in_flight == 0


def test_when_idle_fires_once_every_running_handler_has_finished() -> None:
    """
    Handlers waiting on something count as running until they return; the
    wait ends when the last one has, and each request still gets its answer.
    """
    router, gates = router_with_gates()
    client: Any = StubTreq(router)
    first = client.get("http://h/wait/one")
    second = client.get("http://h/wait/two")
    client.flush()
    assert router.in_flight == 2
    idle = router.when_idle()
    assert not idle.called

    gates["one"].callback(b"one\n")
    client.flush()
    assert router.in_flight == 1
    assert not idle.called
    assert first.result.code == 200

    gates["two"].callback(b"two\n")
    client.flush()
    assert router.in_flight == 0
    assert idle.called
    assert second.result.code == 200
    body = client.content(second.result)
    client.flush()
    assert body.result == b"two\n"


@pytest.mark.logs_errors("a failing handler is logged")
def test_handlers_that_fail_count_as_finished() -> None:
    """An HTTPError or an unexpected exception ends the handler's run too."""
    router, gates = router_with_gates()
    client: Any = StubTreq(router)
    refused = client.get("http://h/wait/refused")
    broken = client.get("http://h/wait/broken")
    client.flush()
    idle = router.when_idle()
    gates["refused"].errback(HTTPError(403, "no"))
    gates["broken"].errback(RuntimeError("a bug"))
    client.flush()
    assert idle.called
    assert router.in_flight == 0
    assert refused.result.code == 403
    assert broken.result.code == 500


def test_handlers_that_finish_at_once_are_not_kept() -> None:
    """A handler that returns without waiting is never counted as running."""
    router, _ = router_with_gates()
    client: Any = StubTreq(router)
    response = client.get("http://h/quick")
    client.flush()
    assert response.result.code == 200
    assert router.in_flight == 0
    assert router.when_idle().called


def test_a_cancelled_wait_leaves_the_others_waiting() -> None:
    """Cancelling one wait (a timeout) ends only that wait."""
    router, gates = router_with_gates()
    client: Any = StubTreq(router)
    client.get("http://h/wait/one")
    client.flush()
    given_up = router.when_idle()
    kept = router.when_idle()
    given_up.cancel()
    failures: list[Any] = []
    given_up.addErrback(failures.append)
    assert failures[0].check(CancelledError)

    gates["one"].callback(b"one\n")
    client.flush()
    assert kept.called
    assert router.in_flight == 0

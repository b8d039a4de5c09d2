"""
Readiness: can this process serve requests right now? Used by C{/readyz}.

The web application is ready when its database answers and accepts writes
within a short time: a no-op update of one row (no data changes, nothing
replicated) goes through the same pool and transaction path as a real
write, so a server that went read-only (a demoted primary), a locked
SQLite file or a hung connection all show as not ready. Liveness
(C{/healthz}) stays separate: a process that is alive but not ready must
not be restarted, only taken out of rotation.

This module must never change data and never wait longer than its timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.interfaces import IReactorTime

from clickpass.storage.sql import Storage, Transaction

DEFAULT_TIMEOUT = 2.0


def _probe(tx: Transaction) -> str | None:
    if tx.dialect.name == "mysql":
        read_only = tx.scalar("SELECT @@global.read_only")
        if read_only and int(read_only):
            return "the database server is read-only (a replica or a demoted primary)"
    # Touch one row without changing it: takes the write path, writes nothing.
    tx.execute("UPDATE node_metadata SET value = value WHERE name = ?", "secret_fingerprint")
    return None


async def database_problem(
    storage: Storage, clock: IReactorTime, timeout: float = DEFAULT_TIMEOUT
) -> str | None:
    """None when the database answers and accepts writes; otherwise one line saying why not."""
    d = storage.run(_probe)
    d.addTimeout(timeout, clock)
    try:
        problem: str | None = await d
    except (TimeoutError, CancelledError):
        return f"the database did not answer within {timeout:g}s"
    except Exception as e:
        return "the database refused: " + " ".join((str(e) or type(e).__name__).split())[:200]
    return problem


async def readiness(app: Any, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """The reasons the web application cannot serve (empty when it can)."""
    problems: list[str] = []
    problem = await database_problem(app.storage, app.reactor, timeout)
    if problem is not None:
        problems.append(problem)
    return problems


__all__ = ["database_problem", "readiness"]

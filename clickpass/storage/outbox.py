"""
Leased outboxes: what the node's durable outboxes (mail, partner webhooks,
back-channel logout tokens) have in common, so that each feature gives
only what is its own (its table and queries, how to send one row, its
backoff settings, its logs and metrics).

A row is committed in the transaction of the change that causes it. A
node's delivery service then, in a loop on the reactor:

  - claims due rows with a lease (L{claim_rows}): on MariaDB the rows are
    read C{FOR UPDATE SKIP LOCKED}, so nodes sharing a database pass over
    each other's rows instead of queueing behind them; on SQLite (one
    writer at a time) and on MariaDB alike, a row is taken only by the
    conditional update that still finds its lease free, so two claimers
    never get the same row, and a node that died while sending leaves its
    rows to be claimed again once their lease has run out;
  - sends them, then marks each sent, or failed with a retry time from
    L{Backoff}, or given up; a delivery whose mark the database does not
    take (no writable primary for longer than C{[database] failover_wait})
    is kept in memory and its mark tried again, with backoff, while the
    node still holds the row's lease (L{LeasedOutboxService.record_delivery}):
    the next round applies such marks first and claims nothing while one is
    left, so the node never sends again what it delivered. Only when the
    lease has run out is the mark given up (one log line), and the row is
    sent again: as it is after the node restarts (the marks in memory are
    lost) or dies; delivery is at least once;
  - looks again at once when it found work (or was woken, L{wake}), else
    after the poll interval.

This module must never import a feature (storage sits below them), never
send anything itself, and never block the reactor (the database through
L{Storage}).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass.storage.sql import Dialect, Transaction, one_line, placeholders

T = TypeVar("T")

# Seconds an hour: how often a service forgets old rows.
CLEANUP_INTERVAL = 3600


@dataclass(frozen=True)
class Backoff:
    """
    When to try again after a failed attempt: C{initial} seconds after the
    first failure, doubling with each one, at most C{maximum}; rounded up to
    whole seconds, and never fewer than C{minimum}.
    """

    initial: float
    maximum: float
    minimum: int = 0

    def wait(self, attempts: int) -> float:
        """Seconds to wait after the C{attempts}-th failed attempt (1, 2, ...)."""
        return float(min(self.maximum, self.initial * 2 ** max(0, attempts - 1)))

    def retry_at(self, now: int, attempts: int) -> int:
        """The time of the next attempt after the C{attempts}-th failure, at C{now}."""
        return now + max(self.minimum, int(self.wait(attempts) + 0.999))

    def after_failure(
        self, now: int, attempts: int, give_up_at: int, *, last_try_at_give_up: bool = False
    ) -> Retry:
        """
        What follows the C{attempts}-th failure, at C{now}, of a row given up
        from C{give_up_at} on: the next attempt, or giving up. With
        C{last_try_at_give_up}, a backoff that would jump past C{give_up_at}
        is cut short, so the last try comes at that time itself.
        """
        at = self.retry_at(now, attempts)
        if last_try_at_give_up:
            at = min(at, give_up_at)
        return Retry(at, now >= give_up_at)


# How soon a delivery's mark the database did not take is tried again:
# after 1 s, doubling, at most every 30 s (each try itself waits up to
# [database] failover_wait for a writable primary).
MARK_RETRY = Backoff(1.0, 30.0)


@dataclass(frozen=True)
class Retry:
    """After a failed attempt: when to try again, unless the row is given up."""

    at: int
    give_up: bool


def skip_locked(dialect: Dialect) -> str:
    """What ends a claiming C{SELECT}: row locks that others pass over, where there are any."""
    return " FOR UPDATE SKIP LOCKED" if dialect.name == "mysql" else ""


def claim_rows(
    tx: Transaction,
    table: str,
    select: str,
    args: Sequence[object],
    now: int,
    lease: int,
    *,
    pending: int = 0,
    owner: str | None = None,
    lock: bool = True,
    own_again: bool = False,
) -> list[tuple[Any, ...]]:
    """
    Lease the rows C{select} finds (their id first; it should ask only for
    pending rows due at C{now} whose lease has run out) until C{now +
    lease}, to C{owner} when the table records one (C{lease_owner}). A row
    is leased only by the update that still finds its lease free: of two
    claimers, only one gets it. With C{lock}, MariaDB reads the rows C{FOR
    UPDATE SKIP LOCKED} (leave it off where the query joins other tables,
    whose rows it would lock too). Return the leased rows, in C{select}'s
    order.

    With C{own_again}, a row still leased to C{owner} counts as free too
    (C{select} should find those as well): an earlier claim of C{owner}'s
    whose COMMIT was cut off (a database failover) may have been applied,
    and its rows then wait for nobody. Only for a C{owner} with nothing of
    its own being sent while it claims (a service whose rounds never
    overlap), or a row would be sent twice.
    """
    rows = tx.fetchall(select + (skip_locked(tx.dialect) if lock else ""), *args)
    owned = ", lease_owner = ?" if owner is not None else ""
    free = "lease_until <= ?"
    free_args: list[object] = [now]
    if own_again:
        if owner is None:
            raise ValueError("own_again needs the owner")
        free = "(lease_until <= ? OR lease_owner = ?)"
        free_args.append(owner)
    claimed = []
    for row in rows:
        values: list[object] = [now + lease]
        if owner is not None:
            values.append(owner)
        if tx.execute(
            f"UPDATE {table} SET lease_until = ?{owned} WHERE id = ? AND state = ? AND {free}",
            *values,
            row[0],
            pending,
            *free_args,
        ):
            claimed.append(tuple(row))
    return claimed


@dataclass(frozen=True)
class Unmarked:
    """
    A delivery not recorded yet: C{record} marks it (again), until
    C{lease_ends}, when the node's lease of the row runs out; C{what} names
    it in the log.
    """

    record: Callable[[], Deferred[Any]]
    lease_ends: float
    what: str


def release_rows(
    tx: Transaction,
    table: str,
    row_ids: Sequence[int],
    *,
    pending: int = 0,
    owner: str | None = None,
) -> None:
    """
    Give claimed rows back unsent (their lease ends now), only C{owner}'s
    when given (their owner is then cleared).
    """
    if not row_ids:
        return
    owned = " AND lease_owner = ?" if owner is not None else ""
    clear = ", lease_owner = ''" if owner is not None else ""
    tx.execute(
        f"UPDATE {table} SET lease_until = 0{clear} WHERE id IN ({placeholders(row_ids)}) "
        f"AND state = ?{owned}",
        *row_ids,
        pending,
        *([owner] if owner is not None else []),
    )


class LeasedOutboxService(Service):
    """
    The loop of a node's outbox delivery: look, deliver, look again. A
    feature subclasses it with L{deliver_due} (claim and send what is due;
    return how much work was done) and, when it keeps old rows, L{clean};
    it records each delivery through L{record_delivery}.

    Rounds never overlap: the next is scheduled when one has ended.
    """

    log = Logger()

    def __init__(self, name: str, clock: IReactorTime, poll_interval: float) -> None:
        self.setName(name)
        self._clock = clock
        self._poll_interval = poll_interval
        self._call: IDelayedCall | None = None
        self._running: Deferred[int] | None = None
        self._woken = False
        self._next_cleanup = 0.0
        # Set while the service stops: what has not started yet goes back.
        self.stopping = False
        # Deliveries whose mark the database did not take, by row.
        self.unmarked: dict[Hashable, Unmarked] = {}
        self._marking = DeferredLock()
        self._mark_call: IDelayedCall | None = None
        self._mark_tries = 0

    # What a feature gives.

    async def deliver_due(self, now: int) -> int:
        """Claim what is due at C{now} and deliver it; how much was done (0: nothing)."""
        raise NotImplementedError

    async def clean(self, now: int) -> None:
        """Forget rows kept long enough (called at most once per C{CLEANUP_INTERVAL})."""

    def look_again_now(self, done: int) -> bool:
        """Whether a round that did C{done} leaves work due right away."""
        return done > 0

    def round_failed(self, failure: Failure) -> None:
        """A round failed as a whole (the database, say); the next comes after the poll."""
        self.log.failure("{service} round failed", failure, service=self.name)

    # Life cycle.

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self._schedule(0)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.stopping = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._mark_call is not None and self._mark_call.active():
            self._mark_call.cancel()
        self._mark_call = None
        if self.unmarked:
            self.log.warn(
                "{service} stopping with {count} deliveries not recorded: they will be "
                "sent again once their lease runs out",
                service=self.name,
                count=len(self.unmarked),
            )
        if self._running is not None:
            d: Deferred[None] = Deferred()
            self._running.addBoth(lambda _: d.callback(None))
            return d
        return None

    def wake(self) -> None:
        """
        New rows were committed: look now rather than at the next poll (at
        the end of the round under way, if one is).
        """
        if not self.running:
            return
        if self._running is not None:
            self._woken = True
        elif self._call is not None and self._call.active():
            self._call.reset(0)

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        self._woken = False
        self._running = self.run_once()

        def done(work: int) -> None:
            self._running = None
            again = self._woken or self.look_again_now(work)
            self._schedule(0 if again else self._poll_interval)

        def failed(failure: Failure) -> None:
            self._running = None
            self.round_failed(failure)
            self._schedule(self._poll_interval)

        self._running.addCallbacks(done, failed)

    # One round.

    def run_once(self) -> Deferred[int]:
        """One round: forget old rows when it is time, deliver what is due."""
        return Deferred.fromCoroutine(self._round())

    async def _round(self) -> int:
        if self.unmarked and not await self.apply_unmarked():
            # A claim now could take a row delivered but not recorded
            # again (claim_rows' own_again) and send it twice: wait.
            return 0
        now = int(self._clock.seconds())
        if now >= self._next_cleanup:
            self._next_cleanup = now + CLEANUP_INTERVAL
            await self.clean(now)
        return await self.deliver_due(now)

    # Recording deliveries.

    async def record_delivery(
        self, key: Hashable, lease_ends: float, record: Callable[[], Deferred[Any]], what: str
    ) -> bool:
        """
        Record that the row C{key} was delivered: C{record} marks it (and
        may be run more than once). When the database does not take it, the
        mark is kept (L{unmarked}) and tried again in the background, with
        L{MARK_RETRY}'s backoff, while this node still holds the row's lease
        (until C{lease_ends}); the next round applies it before claiming
        anything. Never raises; whether it was recorded now. C{what} names
        the delivery in the log.
        """
        try:
            await record()
            return True
        except Exception as e:
            self.unmarked[key] = Unmarked(record, lease_ends, what)
            self.log.info(
                "{what} delivered but not recorded ({error}); trying again while its lease "
                "holds ({left}s)",
                what=what,
                error=one_line(e),
                left=max(0, int(lease_ends - self._clock.seconds())),
            )
            self._mark_later()
            return False

    async def apply_unmarked(self) -> bool:
        """
        Try the deliveries not recorded yet again, and give up those whose
        lease has run out (one log line each); whether none is left.
        """
        await self._marking.acquire()
        try:
            return await self._apply_unmarked()
        finally:
            self._marking.release()

    async def _apply_unmarked(self) -> bool:
        if self._mark_call is not None and self._mark_call.active():
            self._mark_call.cancel()
        self._mark_call = None
        now = self._clock.seconds()
        for key, mark in list(self.unmarked.items()):
            if now >= mark.lease_ends:
                del self.unmarked[key]
                self.log.warn(
                    "{what} was delivered, but no database took the record of it while "
                    "this node held its lease: it will be sent again",
                    what=mark.what,
                )
        tries = list(self.unmarked.items())
        results = await DeferredList(
            [maybeDeferred(mark.record) for _, mark in tries],
            consumeErrors=True,
        )
        for (key, _), (ok, _) in zip(tries, results, strict=True):
            if ok:
                self.unmarked.pop(key, None)
        if not self.unmarked:
            self._mark_tries = 0
            return True
        self._mark_tries += 1
        self._mark_later()
        return False

    def _mark_later(self) -> None:
        if not self.running or (self._mark_call is not None and self._mark_call.active()):
            return
        delay = MARK_RETRY.wait(self._mark_tries + 1)
        # Not past the first lease to run out: its give-up is logged then.
        first_end = min(mark.lease_ends for mark in self.unmarked.values())
        delay = max(0.0, min(delay, first_end - self._clock.seconds()))

        def again() -> None:
            self._mark_call = None
            Deferred.fromCoroutine(self.apply_unmarked()).addErrback(
                lambda f: self.log.failure("{service} marks failed", f, service=self.name)
            )

        self._mark_call = self._clock.callLater(delay, again)

    # Delivery in order, for outboxes whose rows go to one receiver each.

    async def deliver_in_order(
        self,
        due: Sequence[T],
        receiver: Callable[[T], Hashable],
        lease_ends: int,
        attempt_time: float,
        deliver: Callable[[T], Awaitable[None]],
        delivered: Callable[[T], Awaitable[None]],
        failed: Callable[[T, Exception], Awaitable[None]],
        release: Callable[[list[T]], Awaitable[None]],
        what: str,
    ) -> int:
        """
        Deliver claimed rows, each receiver's one at a time in order and the
        receivers side by side; return how many went. C{deliver} sends a
        row (raising when it did not go), C{delivered} records that it went
        (through L{record_delivery}). A receiver's rows stop at its first
        failure (C{failed} records it), or when the next attempt could
        outlast the lease (C{attempt_time}: the longest an attempt and its
        record may take), since another node may then claim the rows and
        must not find one still being sent: the rest are released for the
        next round, in order. C{what} names a receiver's delivery in the
        log when it fails as a whole.
        """
        by_receiver: dict[Hashable, list[T]] = {}
        for row in due:
            by_receiver.setdefault(receiver(row), []).append(row)

        async def one_receiver(rows: list[T]) -> int:
            sent = 0
            for i, row in enumerate(rows):
                if self._clock.seconds() + attempt_time > lease_ends:
                    await release(rows[i:])
                    return sent
                try:
                    await deliver(row)
                except Exception as e:
                    await failed(row, e)
                    await release(rows[i + 1 :])
                    return sent
                await delivered(row)
                sent += 1
            return sent

        results = await DeferredList(
            [Deferred.fromCoroutine(one_receiver(rows)) for rows in by_receiver.values()],
            consumeErrors=True,
        )
        sent = 0
        for ok, value in results:
            if ok:
                sent += int(value)
            else:
                self.log.failure(what, cast(Failure, value))
        return sent


__all__ = [
    "CLEANUP_INTERVAL",
    "MARK_RETRY",
    "Backoff",
    "LeasedOutboxService",
    "Retry",
    "Unmarked",
    "claim_rows",
    "release_rows",
    "skip_locked",
]

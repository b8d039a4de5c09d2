"""
Accounts on both storage backends: sign-up rules, argon2id hashes, the one
generic sign-in refusal, throttling kept in the database (so it holds across
worker processes), sessions and their rotation, expiry and end.

Time comes from a task.Clock; nothing here sleeps.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Collection
from typing import Any, Literal, cast

import pymysql
import pytest
from argon2 import PasswordHasher

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from clickpass.accounts.service import (
    Account,
    AccountError,
    Accounts,
    HashingBusy,
    SignInRefused,
    Throttled,
    session_hash,
)
from clickpass.accounts.settings import AccountsSettings
from clickpass.settings_base import ConfigError
from clickpass.storage.sql import AdbapiStorage, OutcomeUnknown, Storage
from tests.conftest import global_reactor
from tests.support.deferreds import async_test
from tests.support.storage import DatabaseTarget

NOW = 1_700_000_000
PASSWORD = "correct horse battery"
SETTINGS = AccountsSettings(
    min_password_length=10,
    session_lifetime=3600,
    throttle_window=900,
    throttle_per_account=3,
    throttle_per_address=5,
)
# Cheap parameters keep the tests fast; the type is still argon2id.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def make_accounts(
    target: DatabaseTarget, storage: Storage, clock: Clock, settings: AccountsSettings = SETTINGS
) -> Accounts:
    """One worker's Accounts on C{storage} (a pool on C{target}'s database)."""
    return Accounts(target.reactor, storage, settings, clock=clock.seconds, hasher=FAST_HASHER)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


@pytest.fixture
def accounts(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> Accounts:
    return make_accounts(database_target, storage_backend, clock)


async def _stored_hash(storage: Storage, email: str) -> str:
    value: str = await storage.run(
        lambda tx: tx.scalar("SELECT password_hash FROM accounts WHERE email = ?", email)
    )
    return value


# Sign-up.


@async_test
async def test_sign_up_creates_an_account_with_an_argon2id_hash(
    accounts: Accounts, storage_backend: AdbapiStorage
) -> None:
    """Sign-up stores the normalised email and an argon2id hash, never the password."""
    account = await accounts.sign_up("  Ann@Example.ORG ", PASSWORD)
    assert account.email == "ann@example.org"
    assert not account.disabled
    assert len(account.uid) == 32
    stored = await _stored_hash(storage_backend, "ann@example.org")
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


@async_test
async def test_default_hasher_is_argon2id(
    reactor: IReactorThreads, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """With no hasher given, Accounts hashes with argon2id."""
    accounts = Accounts(reactor, storage_backend, SETTINGS, clock=clock.seconds)
    await accounts.sign_up("ann@example.org", PASSWORD)
    assert (await _stored_hash(storage_backend, "ann@example.org")).startswith("$argon2id$v=19$")


@async_test
async def test_hashes_cost_what_the_settings_say_and_old_costs_are_rehashed(
    reactor: IReactorThreads, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    With no hasher given, Accounts hashes at [accounts] hash_memory and
    hash_passes; the product's defaults are 64 MiB and 3 passes. After an
    operator changes the costs, a sign-in under a hash made at the old ones
    rehashes the password at the new.
    """
    assert (AccountsSettings().hash_memory, AccountsSettings().hash_passes) == (65536, 3)
    cheap = dataclasses.replace(SETTINGS, hash_memory=64, hash_passes=1, hash_below_floor=True)
    before = Accounts(reactor, storage_backend, cheap, clock=clock.seconds)
    await before.sign_up("ann@example.org", PASSWORD)
    assert "$m=64,t=1,p=4$" in await _stored_hash(storage_backend, "ann@example.org")
    dearer = dataclasses.replace(cheap, hash_memory=128, hash_passes=2)
    after = Accounts(reactor, storage_backend, dearer, clock=clock.seconds)
    await after.authenticate("ann@example.org", PASSWORD, "192.0.2.1")
    assert "$m=128,t=2,p=4$" in await _stored_hash(storage_backend, "ann@example.org")


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("", PASSWORD, "Enter your email address."),
        ("not-an-email", PASSWORD, "does not look like an email address"),
        ("a@b", PASSWORD, "does not look like an email address"),
        ("a b@example.org", PASSWORD, "does not look like an email address"),
        ("x" * 250 + "@example.org", PASSWORD, "does not look like an email address"),
        ("ann@example.org", "short", "at least 10 characters"),
        ("ann@example.org", "x" * 1025, "at most 1024 characters"),
    ],
)
@async_test
async def test_sign_up_refuses_bad_input_with_one_clear_message(
    accounts: Accounts,
    storage_backend: AdbapiStorage,
    email: str,
    password: str,
    message: str,
) -> None:
    """Bad emails and passwords are refused with a sentence saying what to fix; nothing stored."""
    with pytest.raises(AccountError, match=message):
        await accounts.sign_up(email, password)
    count = await storage_backend.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts"))
    assert count == 0


@async_test
async def test_duplicate_email_is_refused_whatever_its_case(accounts: Accounts) -> None:
    """A second sign-up with the same email, in any letter case, is refused."""
    await accounts.sign_up("ann@example.org", PASSWORD)
    with pytest.raises(AccountError, match="already exists"):
        await accounts.sign_up("ANN@Example.org", PASSWORD + "2")


# Sign-in.


@async_test
async def test_sign_in_with_the_right_password(accounts: Accounts) -> None:
    """The right password (email in any case) signs in and returns the account."""
    created = await accounts.sign_up("ann@example.org", PASSWORD)
    account = await accounts.authenticate("Ann@Example.org", PASSWORD, "192.0.2.1")
    assert account == created


@async_test
async def test_wrong_password_unknown_email_and_disabled_account_get_one_message(
    accounts: Accounts,
) -> None:
    """
    Wrong password, unknown email and disabled account are refused alike, so
    nobody can tell which accounts exist.
    """
    await accounts.sign_up("ann@example.org", PASSWORD)
    await accounts.sign_up("bob@example.org", PASSWORD)
    assert await accounts.disable("bob@example.org")
    messages: set[str] = set()
    for email, password in (
        ("ann@example.org", "wrong password!"),
        ("nobody@example.org", PASSWORD),
        ("bob@example.org", PASSWORD),
    ):
        with pytest.raises(SignInRefused) as caught:
            await accounts.authenticate(email, password, f"198.51.100.{len(email)}")
        messages.add(str(caught.value))
    assert messages == {"That email and password do not match an account."}


# Throttling.


async def _fail(accounts: Accounts, email: str, address: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(SignInRefused):
            await accounts.authenticate(email, "wrong password!", address)


@async_test
async def test_account_throttle_holds_across_two_processes(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    Failures counted by one worker (its own Accounts and connection pool)
    throttle the same account in another, even with the right password and
    from another address.
    """
    first = make_accounts(database_target, storage_backend, clock)
    second = make_accounts(database_target, database_target.open(), clock)
    await first.sign_up("ann@example.org", PASSWORD)
    await _fail(first, "ann@example.org", "192.0.2.1", SETTINGS.throttle_per_account)
    with pytest.raises(Throttled) as caught:
        await second.authenticate("ann@example.org", PASSWORD, "192.0.2.99")
    assert caught.value.retry_after == SETTINGS.throttle_window
    assert "Try again in 15 minutes" in str(caught.value)


@async_test
async def test_address_throttle_holds_across_two_processes(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    Failures from one client address against many accounts, split between
    two workers, throttle that address everywhere; another address is not
    affected.
    """
    first = make_accounts(database_target, storage_backend, clock)
    second = make_accounts(database_target, database_target.open(), clock)
    await first.sign_up("ann@example.org", PASSWORD)
    for i in range(SETTINGS.throttle_per_address):
        worker = first if i % 2 else second
        await _fail(worker, f"user{i}@example.org", "203.0.113.7", 1)
    with pytest.raises(Throttled):
        await first.authenticate("ann@example.org", PASSWORD, "203.0.113.7")
    with pytest.raises(Throttled):
        await second.authenticate("ann@example.org", PASSWORD, "203.0.113.7")
    assert (await second.authenticate("ann@example.org", PASSWORD, "203.0.113.8")).email == (
        "ann@example.org"
    )


@async_test
async def test_throttle_lifts_when_the_window_has_passed(accounts: Accounts, clock: Clock) -> None:
    """A throttled account may sign in again once the window has passed, not a second before."""
    await accounts.sign_up("ann@example.org", PASSWORD)
    await _fail(accounts, "ann@example.org", "192.0.2.1", SETTINGS.throttle_per_account)
    clock.advance(SETTINGS.throttle_window - 1)
    with pytest.raises(Throttled) as caught:
        await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.1")
    assert caught.value.retry_after == 1
    clock.advance(1)
    account = await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.1")
    assert account.email == "ann@example.org"


@async_test
async def test_failures_below_the_limit_do_not_throttle_and_success_resets_them(
    accounts: Accounts,
) -> None:
    """
    Fewer failures than the limit leave sign-in open; a successful sign-in
    clears the account's count, so the limit starts afresh.
    """
    await accounts.sign_up("ann@example.org", PASSWORD)
    limit = SETTINGS.throttle_per_account
    await _fail(accounts, "ann@example.org", "192.0.2.1", limit - 1)
    await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.1")
    await _fail(accounts, "ann@example.org", "192.0.2.2", limit - 1)
    await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.2")


@async_test
async def test_failures_in_an_old_window_start_a_new_count(
    accounts: Accounts, clock: Clock
) -> None:
    """Failures spread over more than one window never add up to a throttle."""
    await accounts.sign_up("ann@example.org", PASSWORD)
    limit = SETTINGS.throttle_per_account
    await _fail(accounts, "ann@example.org", "192.0.2.1", limit - 1)
    clock.advance(SETTINGS.throttle_window)
    await _fail(accounts, "ann@example.org", "192.0.2.1", limit - 1)
    await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.1")


# Sessions.


@async_test
async def test_session_lookup_and_expiry(accounts: Accounts, clock: Clock) -> None:
    """
    A session token finds its account until its lifetime ends; then it finds
    nothing, and expire_sessions deletes it.
    """
    account = await accounts.sign_up("ann@example.org", PASSWORD)
    token = await accounts.start_session(account, "192.0.2.1")
    assert await accounts.session_account(token) == account
    assert await accounts.session_account("not-a-token") is None
    assert await accounts.session_account("") is None
    assert await accounts.session_account("x" * 129) is None
    clock.advance(SETTINGS.session_lifetime - 1)
    assert await accounts.session_account(token) == account
    assert await accounts.expire_sessions() == 0
    clock.advance(1)
    assert await accounts.session_account(token) is None
    assert await accounts.expire_sessions() == 1


@async_test
async def test_session_account_with_reads_more_in_the_same_transaction(
    accounts: Accounts, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    session_account_with gives the account and what the function read for it;
    without a session it gives nothing and does not call the function.
    """
    account = await accounts.sign_up("ann@example.org", PASSWORD)
    token = await accounts.start_session(account, "192.0.2.1")
    calls: list[int] = []

    def sessions_of(tx: Any, found: Account, suffix: str) -> str:
        calls.append(found.id)
        count = tx.scalar("SELECT COUNT(*) FROM sessions WHERE account_id = ?", found.id)
        return f"{count}{suffix}"

    assert await accounts.session_account_with(token, sessions_of, "!") == (account, "1!")
    assert await accounts.session_account_with("not-a-token", sessions_of, "!") == (None, None)
    assert await accounts.session_account_with("", sessions_of, "!") == (None, None)
    clock.advance(SETTINGS.session_lifetime)
    assert await accounts.session_account_with(token, sessions_of, "!") == (None, None)
    assert calls == [account.id]


@async_test
async def test_only_the_token_hash_is_stored(
    accounts: Accounts, storage_backend: AdbapiStorage
) -> None:
    """The database holds the SHA-256 of a session token, not the token."""
    account = await accounts.sign_up("ann@example.org", PASSWORD)
    token = await accounts.start_session(account, "192.0.2.1")
    stored = await storage_backend.run(lambda tx: tx.fetchall("SELECT token_hash FROM sessions"))
    assert stored == [(session_hash(token),)]


@async_test
async def test_sign_in_rotates_the_session(accounts: Accounts) -> None:
    """
    A session started at sign-in ends the token the browser had before, so
    a token planted before sign-in is worthless afterwards.
    """
    account = await accounts.sign_up("ann@example.org", PASSWORD)
    before = await accounts.start_session(account, "192.0.2.1")
    after = await accounts.start_session(account, "192.0.2.1", previous_token=before)
    assert after != before
    assert await accounts.session_account(before) is None
    assert await accounts.session_account(after) == account


@async_test
async def test_end_session(accounts: Accounts) -> None:
    """Sign-out ends that session only."""
    account = await accounts.sign_up("ann@example.org", PASSWORD)
    phone = await accounts.start_session(account, "192.0.2.1")
    laptop = await accounts.start_session(account, "192.0.2.2")
    await accounts.end_session(phone)
    assert await accounts.session_account(phone) is None
    assert await accounts.session_account(laptop) == account


@async_test
async def test_disable_ends_every_session(
    accounts: Accounts, database_target: DatabaseTarget, clock: Clock
) -> None:
    """
    Disabling an account ends all its sessions, as seen from any worker;
    other accounts keep theirs; an unknown email is reported as such.
    """
    ann = await accounts.sign_up("ann@example.org", PASSWORD)
    bob = await accounts.sign_up("bob@example.org", PASSWORD)
    ann_tokens = [await accounts.start_session(ann, "192.0.2.1") for _ in range(2)]
    bob_token = await accounts.start_session(bob, "192.0.2.2")
    other_worker = make_accounts(database_target, database_target.open(), clock)
    assert await other_worker.disable("ANN@example.org")
    for token in ann_tokens:
        assert await accounts.session_account(token) is None
    assert await accounts.session_account(bob_token) == bob
    disabled = await accounts.get(ann.id)
    assert isinstance(disabled, Account) and disabled.disabled
    assert not await accounts.disable("nobody@example.org")


@async_test
async def test_concurrent_reservations_are_all_counted_up_to_the_limit(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage
) -> None:
    """
    Attempts reserved at the same moment by several workers for a subject
    never seen before are all counted, none lost to the race between
    starting the count and adding to it, and none past the limit: those
    over it are refused and leave the count as it was.
    """
    from twisted.internet.defer import DeferredList

    from clickpass.accounts.service import _reserve_attempt

    pools = [storage_backend] + [database_target.open() for _ in range(3)]
    subjects = [("address", "203.0.113.50", 8)]
    attempts = 12
    results = await DeferredList(
        [pools[i % len(pools)].run(_reserve_attempt, subjects, NOW, 900) for i in range(attempts)],
        consumeErrors=True,
    )
    assert [r for ok, r in results if not ok] == []
    waits = sorted(r for _ok, r in results)
    assert waits == [0] * 8 + [900] * 4
    failures = await storage_backend.run(
        lambda tx: tx.scalar(
            "SELECT failures FROM signin_failures WHERE subject = ?", "203.0.113.50"
        )
    )
    assert failures == 8


class _CommitOutcomeLostOnce:
    """
    A storage whose first transaction commits and then reports the outcome
    as unknown, as when the connection drops during COMMIT in a failover.
    """

    def __init__(self, storage: AdbapiStorage) -> None:
        self._storage = storage
        self.dialect = storage.dialect
        self.runs = 0

    def run(self, fn: Any, *args: object) -> Deferred[Any]:
        self.runs += 1
        d = self._storage.run(fn, *args)
        if self.runs == 1:

            def lost(_: object) -> object:
                raise OutcomeUnknown("connection lost during COMMIT")

            d.addCallback(lost)
        return d

    def run_blocking(self, fn: Any, *args: object) -> Any:
        return self._storage.run_blocking(fn, *args)

    def describe(self) -> str:
        return self._storage.describe()

    def close(self) -> None:
        self._storage.close()


@async_test
async def test_sign_up_is_idempotent_through_an_unknown_commit_outcome(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    A sign-up whose commit succeeded but whose answer was lost runs again
    and finds its own row: one account, and the person is told it worked.
    Another sign-up for the same email is still refused.
    """
    flaky = _CommitOutcomeLostOnce(storage_backend)
    accounts = Accounts(
        database_target.reactor, flaky, SETTINGS, clock=clock.seconds, hasher=FAST_HASHER
    )
    account = await accounts.sign_up("ann@example.org", PASSWORD)
    assert flaky.runs == 2
    count = await storage_backend.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts"))
    assert count == 1
    assert account.email == "ann@example.org"
    with pytest.raises(AccountError, match="already exists"):
        await accounts.sign_up("ann@example.org", PASSWORD)


class _SwitchingOver:
    """
    A storage in a database switchover, for the transactions whose function is
    named in C{cut}: each one's first run is refused before it reaches the
    server (the database VIP is moving: a connection that cannot be made), or,
    for those in C{commit_lost}, commits and then loses its answer.
    """

    def __init__(
        self, storage: AdbapiStorage, cut: set[str], commit_lost: Collection[str] = ()
    ) -> None:
        self._storage = storage
        self.dialect = storage.dialect
        self._cut = set(cut)
        self._commit_lost = set(commit_lost)
        self.hit: list[str] = []

    def run(self, fn: Any, *args: object) -> Deferred[Any]:
        name = getattr(fn, "__name__", "")
        if name in self._commit_lost:
            self._commit_lost.discard(name)
            self.hit.append(name)

            def lost(_: object) -> object:
                raise OutcomeUnknown("connection lost during COMMIT")

            return self._storage.run(fn, *args).addCallback(lost)
        if name in self._cut:
            self._cut.discard(name)
            self.hit.append(name)
            refused = pymysql.err.OperationalError(
                2003, "Can't connect to MySQL server on '10.0.0.200' (timed out)"
            )
            return fail(refused)
        return self._storage.run(fn, *args)

    def run_blocking(self, fn: Any, *args: object) -> Any:
        return self._storage.run_blocking(fn, *args)

    def describe(self) -> str:
        return self._storage.describe()

    def close(self) -> None:
        self._storage.close()


@async_test
async def test_sign_in_rides_a_database_switchover(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    Each transaction of a sign-in refused once before it reached the server
    (the database VIP moving) runs again, and the session whose commit's
    answer was lost is found by its token, not made twice: the person is
    signed in with one session, one sign-in event, the failure count reset.
    """
    plain = Accounts(
        database_target.reactor, storage_backend, SETTINGS, clock=clock.seconds, hasher=FAST_HASHER
    )
    account = await plain.sign_up("ann@example.org", PASSWORD)
    steps = {"_reserve_attempt", "_account_and_hash", "_signed_in"}
    switching = _SwitchingOver(storage_backend, cut=steps, commit_lost={"_start_session"})
    accounts = Accounts(
        database_target.reactor, switching, SETTINGS, clock=clock.seconds, hasher=FAST_HASHER
    )
    signed_in = await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.1")
    token = await accounts.start_session(signed_in, "192.0.2.1")
    assert sorted(switching.hit) == sorted([*steps, "_start_session"])
    assert await plain.session_account(token) == account
    counts = await storage_backend.run(
        lambda tx: (
            tx.scalar("SELECT COUNT(*) FROM sessions WHERE account_id = ?", account.id),
            tx.scalar(
                "SELECT COUNT(*) FROM security_events WHERE account_id = ? AND kind = 'signin'",
                account.id,
            ),
            tx.scalar("SELECT MAX(failures) FROM signin_failures"),
        )
    )
    assert counts == (1, 1, 0)


class _CountingHasher(PasswordHasher):
    """The fast argon2id hasher, counting the passwords it was asked to check."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(str(password))
        return super().verify(hash, password)


async def _parallel_sign_ins(
    database_target: DatabaseTarget,
    storage_backend: AdbapiStorage,
    clock: Clock,
    attempts: list[tuple[str, str, str]],
) -> tuple[_CountingHasher, list[object]]:
    # Four workers (each its own Accounts, hasher and pool), all started
    # before any answer: what parallel requests through the front do.
    from twisted.internet.defer import DeferredList

    hasher = _CountingHasher()
    pools = [storage_backend] + [database_target.open() for _ in range(3)]
    # Room for every attempt in the hashing queues: only the throttle decides.
    settings = dataclasses.replace(SETTINGS, hash_threads=4, hash_queue=len(attempts))
    workers = [
        Accounts(database_target.reactor, pool, settings, clock=clock.seconds, hasher=hasher)
        for pool in pools
    ]
    await workers[0].sign_up("ann@example.org", PASSWORD)
    hasher.verified.clear()
    results = await DeferredList(
        [
            Deferred.fromCoroutine(workers[i % len(workers)].authenticate(*attempt))
            for i, attempt in enumerate(attempts)
        ],
        consumeErrors=True,
    )
    return hasher, [r if ok else cast(Failure, r).value for ok, r in results]


@async_test
async def test_parallel_guesses_for_one_account_are_held_to_its_limit(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    Thirty sign-ins for one account, from thirty addresses, sent together
    to four workers: only as many passwords as the account's limit are
    checked (each attempt is counted before its password is), the rest are
    throttled without a check, and the right password among the last is
    refused like the rest.
    """
    limit = SETTINGS.throttle_per_account
    attempts = [("ann@example.org", f"wrong guess {i:02d}", f"192.0.2.{i}") for i in range(29)]
    attempts.append(("ann@example.org", PASSWORD, "192.0.2.200"))
    hasher, outcomes = await _parallel_sign_ins(database_target, storage_backend, clock, attempts)
    assert len(hasher.verified) <= limit, hasher.verified
    checked = [o for o in outcomes if not isinstance(o, Throttled)]
    assert len(checked) <= limit
    assert all(isinstance(o, SignInRefused | Throttled | Account) for o in outcomes), outcomes
    failures = await storage_backend.run(
        lambda tx: tx.scalar(
            "SELECT failures FROM signin_failures WHERE scope = 'account' AND subject = ?",
            "ann@example.org",
        )
    )
    assert failures <= limit


@async_test
async def test_parallel_guesses_from_one_address_are_held_to_its_limit(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    Thirty sign-ins from one address, each for another email, sent
    together to four workers: no more than the address's limit are checked,
    and its failure count never passes the limit.
    """
    limit = SETTINGS.throttle_per_address
    attempts = [(f"user{i}@example.org", "wrong guess!", "203.0.113.9") for i in range(30)]
    hasher, outcomes = await _parallel_sign_ins(database_target, storage_backend, clock, attempts)
    assert len(hasher.verified) <= limit
    assert len([o for o in outcomes if isinstance(o, SignInRefused)]) <= limit
    assert all(isinstance(o, SignInRefused | Throttled) for o in outcomes), outcomes
    failures = await storage_backend.run(
        lambda tx: tx.scalar(
            "SELECT failures FROM signin_failures WHERE scope = 'address' AND subject = ?",
            "203.0.113.9",
        )
    )
    assert failures <= limit


class _GatedHasher(PasswordHasher):
    """The fast hasher, whose checks wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.gate = threading.Event()
        self.running = 0
        self.most_running = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            self.gate.wait(30)
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


@async_test
async def test_a_worker_admits_only_so_many_password_checks(
    storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    With one hashing thread and a queue of two, a worker checks one password
    at a time (on its own hashing thread, not the reactor's pool) and holds
    two more; the next sign-in is answered HashingBusy at once, with a
    Retry-After and nothing counted against the account or the address.
    Once the checks finish, sign-ins are admitted again.
    """
    from twisted.internet.defer import DeferredList

    settings = dataclasses.replace(
        SETTINGS, throttle_per_account=100, throttle_per_address=100, hash_threads=1, hash_queue=2
    )
    hasher = _GatedHasher()
    hasher.gate.set()
    accounts = Accounts(
        global_reactor(), storage_backend, settings, clock=clock.seconds, hasher=hasher
    )
    await accounts.sign_up("ann@example.org", PASSWORD)
    hasher.gate.clear()
    admitted = [
        Deferred.fromCoroutine(
            accounts.authenticate("ann@example.org", "wrong guess!", "192.0.2.1")
        )
        for _ in range(3)
    ]
    with pytest.raises(HashingBusy) as caught:
        await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.2")
    assert caught.value.retry_after > 0
    assert "Try again in" in str(caught.value)
    counted = await storage_backend.run(
        lambda tx: tx.fetchall("SELECT subject FROM signin_failures WHERE failures > 0")
    )
    assert ("192.0.2.2",) not in counted
    hasher.gate.set()
    results = await DeferredList(admitted, consumeErrors=True)
    assert [cast(Failure, r).type for _ok, r in results] == [SignInRefused] * 3
    assert hasher.most_running == 1
    assert all(name.startswith("PoolThread-clickpass-password-hashing") for name in hasher.threads)
    assert (await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.2")).email == (
        "ann@example.org"
    )


@async_test
async def test_sign_up_waits_its_turn_too(storage_backend: AdbapiStorage, clock: Clock) -> None:
    """A sign-up past a full hashing queue is refused at once with HashingBusy; nothing is made."""
    settings = dataclasses.replace(SETTINGS, hash_threads=1, hash_queue=0)
    hasher = _GatedHasher()
    accounts = Accounts(
        global_reactor(), storage_backend, settings, clock=clock.seconds, hasher=hasher
    )
    hasher.gate.set()
    first = await accounts.sign_up("ann@example.org", PASSWORD)
    hasher.gate.clear()
    pending = Deferred.fromCoroutine(accounts.authenticate("ann@example.org", "wrong!!!!!!", "x"))
    with pytest.raises(HashingBusy):
        await accounts.sign_up("bob@example.org", PASSWORD)
    hasher.gate.set()
    with pytest.raises(SignInRefused):
        await pending
    assert first.email == "ann@example.org"
    emails = await storage_backend.run(lambda tx: tx.fetchall("SELECT email FROM accounts"))
    assert emails == [("ann@example.org",)]


class _PriorityHasher(PasswordHasher):
    """The fast hasher, noting the niceness of the thread each hash is made on."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.nice: list[int] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return super().hash(password, salt=salt)


@pytest.mark.parametrize("nice", [0, 10, 19])
@async_test
async def test_passwords_are_hashed_at_the_configured_niceness(
    storage_backend: AdbapiStorage, clock: Clock, nice: int
) -> None:
    """
    The hashing threads run at [accounts] hash_nice (or the worker's own
    niceness, if that is higher), every hash of them, so a storm of
    sign-ins takes only the CPU serving pages leaves; the reactor's thread
    keeps the worker's niceness.
    """
    base = os.getpriority(os.PRIO_PROCESS, 0)
    settings = dataclasses.replace(SETTINGS, hash_threads=2, hash_queue=4, hash_nice=nice)
    hasher = _PriorityHasher()
    accounts = Accounts(
        global_reactor(), storage_backend, settings, clock=clock.seconds, hasher=hasher
    )
    await accounts.sign_up("ann@example.org", PASSWORD)
    for _ in range(3):
        await accounts.hash_password(PASSWORD)
    assert hasher.nice == [max(base, nice)] * 4
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


@pytest.mark.parametrize("nice", [-1, 20])
def test_a_niceness_out_of_range_is_refused(nice: int) -> None:
    """hash_nice outside 0-19 is a configuration error naming the key."""
    with pytest.raises(ConfigError, match=r"\[accounts\] hash_nice: must be from 0 to 19"):
        dataclasses.replace(SETTINGS, hash_nice=nice).check()

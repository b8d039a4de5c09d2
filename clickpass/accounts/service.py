"""
Accounts: people, their passwords, browser sessions and sign-in throttling.

Passwords are hashed with argon2id on a few threads of the worker's own,
never on the reactor, and a worker admits only so many sign-ins and
sign-ups at once (L{PasswordWork}): a storm of them is answered "busy"
at once instead of queueing hashes that would starve everything else,
and the hashing threads run at a lower scheduling priority, so the hashes
that are made take only the CPU that serving pages leaves.
Session tokens are random; only their SHA-256 is stored, so a copy of the
database does not let anyone sign in. Failed sign-ins are counted in the
database per account and per client address, so the limit holds across
worker processes and nodes; each attempt is counted before its password is
checked (and given back when it succeeds), so parallel attempts cannot get
more checks than the limit.

Nothing here renders pages or reads requests: the web layer does that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from clickpass.accounts import events, tokens
from clickpass.accounts.settings import HASH_LANES, AccountsSettings
from clickpass.i18n import N_, Text, n_text
from clickpass.storage.sql import (
    IntegrityError,
    Storage,
    Transaction,
    run_through_failover,
)

MAX_PASSWORD_LENGTH = 1024
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}$")

T = TypeVar("T")


class AccountError(Exception):
    """
    A request about an account cannot be met; the message is for the
    person: marked for translation (L{N_}, or a L{Text} with its
    parameters, which C{str()} of the error keeps, so that the page
    showing it translates it).
    """

    def __str__(self) -> str:
        message = self.args[0] if self.args else ""
        return message if isinstance(message, str) else super().__str__()


class SignInRefused(AccountError):
    """Bad credentials. One message whatever was wrong, so nothing leaks."""

    def __init__(self) -> None:
        super().__init__(N_("That email and password do not match an account."))


class Throttled(AccountError):
    """Too many failed sign-ins recently, for this account or this address."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, (retry_after + 59) // 60)
        super().__init__(
            n_text(
                "Too many failed sign-in attempts. Try again in %(count)d minute.",
                "Too many failed sign-in attempts. Try again in %(count)d minutes.",
                minutes,
            )
        )
        self.retry_after = retry_after


class SignUpThrottled(AccountError):
    """Too many sign-ups lately, from this client address or from everywhere."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, (retry_after + 59) // 60)
        super().__init__(
            n_text(
                "Too many accounts were created from here recently. Try again in %(count)d minute.",
                "Too many accounts were created from here recently. Try again in %(count)d "
                "minutes.",
                minutes,
            )
        )
        self.retry_after = retry_after


class HashingBusy(AccountError):
    """
    This worker already has as many passwords to check as it lets wait:
    the person is asked to try again shortly, and nothing was counted.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            n_text(
                "Clickpass is very busy checking passwords right now. "
                "Try again in %(count)d second.",
                "Clickpass is very busy checking passwords right now. "
                "Try again in %(count)d seconds.",
                retry_after,
            )
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class Account:
    id: int
    uid: str
    email: str
    display_name: str
    created: int
    disabled: bool
    # Whether the account's owner proved the address (a link mailed to it,
    # an upstream provider's verified claim, an operator). Until then the
    # address is never released to a partner.
    email_verified: bool = False


_ACCOUNT_COLUMNS = "id, uid, email, display_name, created, disabled, email_verified"
_ACCOUNT_WIDTH = 7


def _account(row: tuple[Any, ...] | None) -> Account | None:
    if row is None:
        return None
    return Account(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        int(row[4]),
        bool(row[5]),
        bool(row[6]),
    )


def account_by_email(tx: Transaction, email: str) -> Account | None:
    """The account holding C{email} (normalised), or L{None}."""
    return _account(tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE email = ?", email))


def account_by_id(tx: Transaction, account_id: int) -> Account | None:
    """The account with id C{account_id}, or L{None}."""
    return _account(
        tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", account_id)
    )


def normalise_email(email: str) -> str:
    """The form in which an email is stored and compared."""
    return email.strip().lower()


def check_email(email: str) -> str:
    """Return the normalised email, or raise L{AccountError} saying what is wrong."""
    value = normalise_email(email)
    if not value:
        raise AccountError(N_("Enter your email address."))
    if len(value) > 254 or not EMAIL_PATTERN.match(value) or "." not in value.split("@")[1]:
        raise AccountError(N_("That does not look like an email address."))
    return value


def session_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def session_handle(token_hash: str) -> str:
    """
    The name by which the account page refers to a session: derived from
    its stored hash, so a page never shows the hash itself, and knowing the
    name opens nothing.
    """
    return hashlib.sha256(b"clickpass session handle:" + token_hash.encode("ascii")).hexdigest()[
        :24
    ]


# How stale a session's "last seen" may get before a request updates it:
# a write per request would cost every page a trip to the primary.
LAST_SEEN_GRANULARITY = 300


@dataclass(frozen=True)
class SessionInfo:
    """One of a person's browser sessions, as the account page lists it."""

    handle: str
    browser: str
    client_address: str
    created: int
    last_seen: int
    expires: int
    current: bool = False


# Transactions (run on the storage's pool).


def _insert_account(
    tx: Transaction, uid: str, email: str, pw_hash: str, now: int, verified: bool = False
) -> Account:
    # Idempotent by key, so a sign-up whose commit outcome was lost in a
    # database failover can run again: finding the row this very call
    # created (same uid) is success; the email taken by anyone else is not.
    existing = _account(
        tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE email = ?", email)
    )
    if existing is not None:
        if existing.uid == uid:
            return existing
        raise IntegrityError(f"an account with email {email} exists")
    tx.execute(
        "INSERT INTO accounts (uid, email, password_hash, created, email_verified) "
        "VALUES (?, ?, ?, ?, ?)",
        uid,
        email,
        pw_hash,
        now,
        1 if verified else 0,
    )
    account = _account(tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE uid = ?", uid))
    assert account is not None
    events.record(tx, account.id, "signup", now)
    return account


def _account_and_hash(tx: Transaction, email: str) -> tuple[Account, str | None] | None:
    row = tx.fetchone(
        f"SELECT {_ACCOUNT_COLUMNS}, password_hash FROM accounts WHERE email = ?", email
    )
    if row is None:
        return None
    account = _account(row[:_ACCOUNT_WIDTH])
    assert account is not None
    return account, row[_ACCOUNT_WIDTH]


def _reserve_attempt(
    tx: Transaction, subjects: list[tuple[str, str, int]], now: int, window: int
) -> int:
    """
    Count one sign-in attempt against every subject, before its password is
    checked, and return 0; or, when a subject has reached its limit, count
    nothing and return the seconds until it may try again.

    The attempt counts as a failure until it is known to have succeeded
    (L{_signed_in} gives it back), so attempts still in flight count: a
    burst of parallel guesses gets no more password checks than the limit.
    Each subject's row is locked by its first statement (a no-op upsert,
    never a locking read of a row that may not exist, which would take gap
    locks on MariaDB), always in the same order, so concurrent reservations
    queue on the row rather than deadlock; the rows are read only once all
    of them are held.
    """
    if tx.dialect.name == "sqlite":
        # The first write takes SQLite's one write lock for the transaction.
        touch = "ON CONFLICT (scope, subject) DO NOTHING"
        read = "SELECT window_start, failures FROM signin_failures WHERE scope = ? AND subject = ?"
    else:
        # An upsert that finds the row locks it exclusively, even when the
        # update changes nothing; FOR UPDATE reads the latest committed
        # values, not the transaction's snapshot.
        touch = "ON DUPLICATE KEY UPDATE failures = failures"
        read = (
            "SELECT window_start, failures FROM signin_failures "
            "WHERE scope = ? AND subject = ? FOR UPDATE"
        )
    for scope, subject, _limit in subjects:
        tx.execute(
            "INSERT INTO signin_failures (scope, subject, window_start, failures) "
            "VALUES (?, ?, ?, 0) " + touch,
            scope,
            subject,
            now,
        )
    counts: list[tuple[str, str, int, int]] = []
    wait = 0
    for scope, subject, limit in subjects:
        row = tx.fetchone(read, scope, subject)
        assert row is not None  # the upsert above made or found it, and holds it
        start, failures = int(row[0]), int(row[1])
        if start + window <= now:
            start, failures = now, 0
        elif failures >= limit:
            wait = max(wait, start + window - now)
        counts.append((scope, subject, start, failures + 1))
    if wait:
        return wait
    for scope, subject, start, failures in counts:
        tx.execute(
            "UPDATE signin_failures SET window_start = ?, failures = ? "
            "WHERE scope = ? AND subject = ?",
            start,
            failures,
            scope,
            subject,
        )
    return 0


def count_attempt(
    tx: Transaction, subjects: list[tuple[str, str, int]], now: int, window: int
) -> int:
    """
    Count one attempt of something limited (C{(scope, subject, limit)} per
    subject, counted over C{window} seconds) and return 0; or count nothing
    and return the seconds until it may be tried again.
    """
    return _reserve_attempt(tx, subjects, now, window)


def _signed_in(tx: Transaction, subjects: list[tuple[str, str, int]]) -> None:
    """
    A reserved attempt succeeded: the account's count starts afresh, and
    the address gets back the attempt it was charged. Rows are updated in
    place, in the order L{_reserve_attempt} locks them.
    """
    for scope, subject, _limit in subjects:
        if scope == "account":
            tx.execute(
                "UPDATE signin_failures SET failures = 0 WHERE scope = ? AND subject = ?",
                scope,
                subject,
            )
        else:
            tx.execute(
                "UPDATE signin_failures SET failures = failures - 1 "
                "WHERE scope = ? AND subject = ? AND failures > 0",
                scope,
                subject,
            )


def _create_session(
    tx: Transaction,
    token_hash: str,
    account_id: int,
    now: int,
    expires: int,
    address: str,
    browser: str = "",
) -> None:
    tx.execute(
        "INSERT INTO sessions (token_hash, account_id, created, expires, client_address) "
        "VALUES (?, ?, ?, ?, ?)",
        token_hash,
        account_id,
        now,
        expires,
        address[:64],
    )
    tx.execute(
        "INSERT INTO session_details (token_hash, account_id, browser, last_seen) "
        "VALUES (?, ?, ?, ?)",
        token_hash,
        account_id,
        browser[: events.BROWSER_LENGTH],
        now,
    )


@dataclass(frozen=True)
class SignIn:
    """How a session begins, for the security log."""

    client_address: str
    browser: str = ""
    browser_hash: str = ""
    method: str = "password"


def _start_session(
    tx: Transaction,
    token_hash: str,
    previous_hash: str | None,
    account_id: int,
    now: int,
    expires: int,
    how: SignIn,
) -> None:
    if tx.scalar("SELECT 1 FROM sessions WHERE token_hash = ?", token_hash) is not None:
        # This very session (its token is new and random): an earlier run
        # committed and its answer was lost. Everything below was done then.
        return
    # Sign-in rotates the token: the browser's previous session ends.
    if previous_hash:
        _delete_sessions(tx, "token_hash = ?", previous_hash)
    _create_session(tx, token_hash, account_id, now, expires, how.client_address, how.browser)
    where = {"client_address": how.client_address, "browser": how.browser}
    events.record(tx, account_id, "signin", now, detail=how.method, **where)
    if how.browser_hash and events.note_browser(tx, account_id, how.browser_hash, now):
        events.record(tx, account_id, "new_browser", now, **where)


def _delete_sessions(tx: Transaction, where: str, *args: object) -> int:
    """Delete the sessions C{where} selects, with their details; return how many."""
    tx.execute(
        f"DELETE FROM session_details WHERE token_hash IN (SELECT token_hash FROM sessions "
        f"WHERE {where})",
        *args,
    )
    return tx.execute(f"DELETE FROM sessions WHERE {where}", *args)


def _session_account(tx: Transaction, token_hash: str, now: int) -> Account | None:
    cols = ", ".join(f"a.{c.strip()}" for c in _ACCOUNT_COLUMNS.split(","))
    row = tx.fetchone(
        f"SELECT {cols}, d.last_seen FROM sessions s JOIN accounts a ON a.id = s.account_id "
        "LEFT JOIN session_details d ON d.token_hash = s.token_hash "
        "WHERE s.token_hash = ? AND s.expires > ? AND a.disabled = 0",
        token_hash,
        now,
    )
    if row is None:
        return None
    last_seen = row[_ACCOUNT_WIDTH]
    if last_seen is not None and int(last_seen) + LAST_SEEN_GRANULARITY <= now:
        tx.execute("UPDATE session_details SET last_seen = ? WHERE token_hash = ?", now, token_hash)
    return _account(row[:_ACCOUNT_WIDTH])


def _sessions_of(tx: Transaction, account_id: int, now: int) -> list[tuple[str, SessionInfo]]:
    rows = tx.fetchall(
        "SELECT s.token_hash, d.browser, s.client_address, s.created, d.last_seen, s.expires "
        "FROM sessions s LEFT JOIN session_details d ON d.token_hash = s.token_hash "
        "WHERE s.account_id = ? AND s.expires > ? ORDER BY s.created DESC",
        account_id,
        now,
    )
    return [
        (
            str(r[0]),
            SessionInfo(
                session_handle(str(r[0])),
                str(r[1] or "") or "unknown browser",
                str(r[2]),
                int(r[3]),
                int(r[4] if r[4] is not None else r[3]),
                int(r[5]),
            ),
        )
        for r in rows
    ]


def _end_session_by_handle(
    tx: Transaction, account_id: int, handle: str, now: int, how: SignIn
) -> bool:
    for token_hash, info in _sessions_of(tx, account_id, 0):
        if info.handle == handle:
            _delete_sessions(tx, "token_hash = ?", token_hash)
            events.record(
                tx,
                account_id,
                "session_ended",
                now,
                client_address=how.client_address,
                browser=how.browser,
                detail=f"{info.browser}, {info.client_address}",
            )
            return True
    return False


def _end_other_sessions(
    tx: Transaction, account_id: int, keep_hash: str, now: int, how: SignIn
) -> int:
    ended = _delete_sessions(tx, "account_id = ? AND token_hash <> ?", account_id, keep_hash)
    if ended:
        events.record(
            tx,
            account_id,
            "other_sessions_ended",
            now,
            client_address=how.client_address,
            browser=how.browser,
            detail=f"{ended} session{'' if ended == 1 else 's'}",
        )
    return ended


def _session_account_with(
    tx: Transaction, token_hash: str, now: int, fn: Callable[..., T], *args: object
) -> tuple[Account | None, T | None]:
    account = _session_account(tx, token_hash, now)
    return account, (fn(tx, account, *args) if account is not None else None)


# What a person refused for a full hashing queue is told to wait: a few
# hashes' time, long enough for a burst to drain.
HASHING_RETRY_AFTER = 5


class PasswordWork:
    """
    The password hashing of one process (one worker), bounded: it runs on a
    few threads of its own, so a storm of sign-ins never fills the reactor's
    thread pool (which the OpenID provider and name lookups need), and it
    admits at most C{threads + queue} sign-ins or sign-ups at once; the
    next is refused at once with L{HashingBusy} rather than waiting behind
    all the others. Its threads run at niceness C{nice}, so that the hashes
    they make take only the CPU the rest of the node leaves. The pool is
    started at first use and stopped with the reactor.
    """

    def __init__(
        self,
        reactor: Any,
        threads: int,
        queue: int,
        pool: ThreadPool | None = None,
        nice: int = 0,
    ) -> None:
        self._reactor = reactor
        self._nice = nice
        self._capacity = threads + queue
        self._threads = threads
        self._pool = pool
        self._started = pool is not None
        self.admitted = 0

    def admit(self) -> None:
        """Take a place for one sign-in or sign-up, or raise L{HashingBusy}."""
        if self.admitted >= self._capacity:
            raise HashingBusy(HASHING_RETRY_AFTER)
        self.admitted += 1

    def release(self) -> None:
        """Give back the place L{admit} took."""
        self.admitted -= 1

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run C{fn(*args)} on a hashing thread."""
        if not self._started:
            self._started = True
            self._pool = ThreadPool(0, self._threads, name="clickpass-password-hashing")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        assert self._pool is not None
        result: Deferred[T] = deferToThreadPool(
            self._reactor, self._pool, _at_nice, self._nice, fn, *args
        )
        return result


_niced = threading.local()


def _at_nice(nice: int, fn: Callable[..., T], *args: Any) -> T:
    """
    Run C{fn(*args)} on this thread once it is at niceness C{nice} or
    more. At nice 10 the kernel gives a thread about a tenth of a contended
    core against one at 0 (Linux nice is per thread), so a storm of hashes
    takes the CPU that nothing else wants and the reactor keeps the rest.
    """
    if getattr(_niced, "nice", 0) < nice:
        _niced.nice = nice
        try:
            tid = threading.get_native_id()
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, max(current, nice))
        except OSError:
            pass  # not allowed here: hash at the worker's own priority
    return fn(*args)


class Accounts:
    """The operations on accounts and sessions that the web and control port use."""

    def __init__(
        self,
        reactor: Any,
        storage: Storage,
        settings: AccountsSettings,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
        threadpool: ThreadPool | None = None,
    ) -> None:
        self._reactor = reactor
        self._storage = storage
        self._settings = settings
        self._clock = clock
        self._hasher = hasher or PasswordHasher(
            time_cost=settings.hash_passes,
            memory_cost=settings.hash_memory,
            parallelism=HASH_LANES,
        )
        self._work = PasswordWork(
            reactor,
            settings.hash_threads,
            settings.hash_queue,
            pool=threadpool,
            nice=settings.hash_nice,
        )
        # Verified against when the email is unknown, so a wrong email costs
        # as long as a wrong password and timing reveals nothing.
        self._dummy_hash: str | None = None

    def _now(self) -> int:
        return int(self._clock())

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._work.run(fn, *args)

    async def hash_password(self, password: str) -> str:
        """
        The argon2id hash of C{password}, made on a hashing thread; raise
        L{HashingBusy} when this worker has too many to make already.
        """
        self._work.admit()
        try:
            result: str = await self._in_thread(self._hasher.hash, password)
        finally:
            self._work.release()
        return result

    def check_password_rules(self, password: str) -> None:
        minimum = self._settings.min_password_length
        if len(password) < minimum:
            raise AccountError(
                Text(N_("Choose a password of at least %(minimum)d characters."), minimum=minimum)
            )
        if len(password) > MAX_PASSWORD_LENGTH:
            raise AccountError(
                Text(
                    N_("Choose a password of at most %(maximum)d characters."),
                    maximum=MAX_PASSWORD_LENGTH,
                )
            )

    async def sign_up(
        self,
        email: str,
        password: str,
        client_address: str | None = None,
        verified: bool = False,
    ) -> Account:
        """
        Create an account, its address unverified unless C{verified} (an
        operator vouches for it); L{AccountError} says why not, including
        that the address is taken: for operators and tests. People sign up
        through L{clickpass.accounts.flows.AccountFlows.sign_up}, which
        answers the same either way. A sign-up from the web gives its
        C{client_address}: it is counted against the limits per address and
        overall (L{SignUpThrottled} once they are spent), before any
        password is hashed. An operator's (no address) is not.
        """
        address = check_email(email)
        self.check_password_rules(password)
        if client_address is not None:
            await self.count_signup(client_address)
        self._work.admit()
        try:
            pw_hash = await self._in_thread(self._hasher.hash, password)
        finally:
            self._work.release()
        uid = secrets.token_hex(16)
        try:
            account: Account = await run_through_failover(
                self._reactor,
                self._storage,
                _insert_account,
                uid,
                address,
                pw_hash,
                self._now(),
                verified,
                idempotent=True,
            )
        except IntegrityError:
            raise AccountError(
                N_("An account with that email already exists. Sign in instead.")
            ) from None
        return account

    async def count_signup(self, client_address: str) -> None:
        """
        Count one sign-up from C{client_address} against the limits per
        address and overall; L{SignUpThrottled} once they are spent. Every
        web sign-up calls this before any password is hashed.
        """
        settings = self._settings
        subjects = [
            ("signup-address", client_address[:255], settings.signup_per_address),
            ("signup", "all", settings.signup_overall),
        ]
        wait = await self._storage.run(
            _reserve_attempt, subjects, self._now(), settings.signup_window
        )
        if wait:
            raise SignUpThrottled(wait)

    async def authenticate(
        self, email: str, password: str, client_address: str, browser: str = ""
    ) -> Account:
        """
        Check an email and password. Raise L{HashingBusy} when this worker
        has too many passwords to check already (nothing is counted then),
        L{Throttled} when this account or this address has failed too often
        lately, L{SignInRefused} for any mismatch (unknown email, wrong
        password, disabled account).
        """
        self._work.admit()
        try:
            return await self._authenticate(email, password, client_address, browser)
        finally:
            self._work.release()

    async def _authenticate(
        self, email: str, password: str, client_address: str, browser: str
    ) -> Account:
        address = normalise_email(email)[:254]
        now = self._now()
        window = self._settings.throttle_window
        subjects = [
            ("account", address, self._settings.throttle_per_account),
            ("address", client_address[:255], self._settings.throttle_per_address),
        ]
        # The sign-in rides a database switchover or failover: a transaction
        # refused before it committed runs again (run_through_failover).
        wait = await run_through_failover(
            self._reactor, self._storage, _reserve_attempt, subjects, now, window
        )
        if wait:
            raise Throttled(wait)
        # From here the attempt counts as a failure (so parallel attempts
        # in flight count against the limit) until it proves to be right.
        found = await run_through_failover(
            self._reactor, self._storage, _account_and_hash, address, idempotent=True
        )
        if found is None or found[1] is None:
            await self._in_thread(self._verify_dummy, password)
            ok = False
        else:
            ok = await self._in_thread(self._verify, found[1], password)
        if not ok and found is not None and not found[0].disabled:
            # The owner should know someone tried their password.
            account_id = found[0].id
            await self._storage.run(
                lambda tx: events.record(
                    tx,
                    account_id,
                    "signin_failed",
                    now,
                    client_address=client_address,
                    browser=browser,
                )
            )
        if not ok or found is None or found[0].disabled:
            raise SignInRefused()
        account, pw_hash = found
        await run_through_failover(self._reactor, self._storage, _signed_in, subjects)
        if pw_hash is not None and self._hasher.check_needs_rehash(pw_hash):
            new_hash = await self._in_thread(self._hasher.hash, password)
            await self._storage.run(
                lambda tx: tx.execute(
                    "UPDATE accounts SET password_hash = ? WHERE id = ?", new_hash, account.id
                )
            )
        return account

    def _verify_dummy(self, password: str) -> bool:
        # In a hashing thread, as the hash is made the first time: never on
        # the reactor. Two threads making it at once is harmless.
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_hex(16))
        return self._verify(self._dummy_hash, password)

    def _verify(self, pw_hash: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(pw_hash, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def disable(self, email: str) -> bool:
        """Disable an account and end its sessions; false when there is none."""
        return await self._set_disabled(email, True)

    async def enable(self, email: str) -> bool:
        """Enable a disabled account again; false when there is none."""
        return await self._set_disabled(email, False)

    async def _set_disabled(self, email: str, disabled: bool) -> bool:
        now = self._now()

        def change(tx: Transaction) -> bool:
            row = tx.fetchone("SELECT id FROM accounts WHERE email = ?", normalise_email(email))
            if row is None:
                return False
            account_id = int(row[0])
            tx.execute(
                "UPDATE accounts SET disabled = ? WHERE id = ?", 1 if disabled else 0, account_id
            )
            if disabled:
                _delete_sessions(tx, "account_id = ?", account_id)
            kind = "account_disabled" if disabled else "account_enabled"
            events.record(tx, account_id, kind, now)
            return True

        result: bool = await self._storage.run(change)
        return result

    async def by_email(self, email: str) -> Account | None:
        """The account with C{email} (disabled or not), or L{None}."""
        result: Account | None = await self._storage.run(
            lambda tx: _account(
                tx.fetchone(
                    f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE email = ?",
                    normalise_email(email),
                )
            )
        )
        return result

    async def get(self, account_id: int) -> Account | None:
        result: Account | None = await self._storage.run(
            lambda tx: _account(
                tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", account_id)
            )
        )
        return result

    async def start_session(
        self,
        account: Account,
        client_address: str,
        previous_token: str | None = None,
        how: SignIn | None = None,
    ) -> str:
        """
        Open a session for C{account} and return its new token. The token
        the browser had before (if any) is ended: sign-in rotates it. The
        sign-in is logged (L{clickpass.accounts.events}), with C{how} it
        happened, and a browser the account never used before is noted.
        """
        token = secrets.token_urlsafe(32)
        now = self._now()
        # Idempotent by its token (L{_start_session}): a commit whose answer
        # was lost in a database switchover runs again and finds its session.
        await run_through_failover(
            self._reactor,
            self._storage,
            _start_session,
            session_hash(token),
            session_hash(previous_token) if previous_token else None,
            account.id,
            now,
            now + self._settings.session_lifetime,
            how or SignIn(client_address),
            idempotent=True,
        )
        return token

    async def sessions(self, account_id: int, current_token: str = "") -> list[SessionInfo]:
        """C{account_id}'s unexpired sessions, newest first (without their tokens)."""
        current = session_hash(current_token) if current_token else ""
        found = await self._storage.run(_sessions_of, account_id, self._now())
        return [replace_current(info, token_hash == current) for token_hash, info in found]

    async def end_session_by_handle(self, account_id: int, handle: str, how: SignIn) -> bool:
        """End C{account_id}'s session named C{handle}; false when it has none such."""
        result: bool = await self._storage.run(
            _end_session_by_handle, account_id, handle, self._now(), how
        )
        return result

    async def end_other_sessions(self, account_id: int, current_token: str, how: SignIn) -> int:
        """End every session of C{account_id} but the current one; return how many."""
        result: int = await self._storage.run(
            _end_other_sessions, account_id, session_hash(current_token), self._now(), how
        )
        return result

    async def session_account(self, token: str) -> Account | None:
        """The signed-in account for a session token, or L{None}."""
        if not token or len(token) > 128:
            return None
        result: Account | None = await self._storage.run(
            _session_account, session_hash(token), self._now()
        )
        return result

    async def session_account_with(
        self, token: str, fn: Callable[..., T], *args: object
    ) -> tuple[Account | None, T | None]:
        """
        The signed-in account for a session token and, when there is one,
        C{fn(tx, account, *args)} read in the same transaction (one trip to
        the database for what a request needs first).
        """
        if not token or len(token) > 128:
            return None, None
        result: tuple[Account | None, T | None] = await self._storage.run(
            _session_account_with, session_hash(token), self._now(), fn, *args
        )
        return result

    async def end_session(self, token: str) -> None:
        await self._storage.run(_delete_sessions, "token_hash = ?", session_hash(token))

    async def expire_sessions(self, now: int | None = None) -> int:
        """Delete expired sessions (and their details); return how many."""
        when = self._now() if now is None else now

        def expire(tx: Transaction) -> int:
            count = _delete_sessions(tx, "expires <= ?", when)
            # Details whose session an older node ended without them.
            tx.execute(
                "DELETE FROM session_details WHERE last_seen <= ? AND token_hash NOT IN "
                "(SELECT token_hash FROM sessions)",
                when - self._settings.session_lifetime,
            )
            return count

        count: int = await self._storage.run(expire)
        return count

    async def expire_events(self, now: int | None = None) -> int:
        """Delete security events older than they are kept; return how many."""
        when = self._now() if now is None else now
        oldest = when - self._settings.security_events_days * 86400
        count: int = await self._storage.run(events.expire, oldest)
        return count

    async def prune_failures(self, now: int | None = None) -> int:
        """Forget failed sign-in counts whose window has passed; return how many."""
        when = self._now() if now is None else now
        # The longest window any count is kept for (sign-ins, sign-ups,
        # mailed links).
        oldest = when - max(
            self._settings.throttle_window,
            self._settings.signup_window,
            self._settings.link_mail_window,
        )
        count: int = await self._storage.run(
            lambda tx: tx.execute("DELETE FROM signin_failures WHERE window_start <= ?", oldest)
        )
        return count

    async def expire_tokens(self, now: int | None = None) -> int:
        """Forget mailed-link tokens long expired (L{tokens.cleanup}); return how many."""
        when = self._now() if now is None else now
        count: int = await self._storage.run(tokens.cleanup, when)
        return count


def replace_current(info: SessionInfo, current: bool) -> SessionInfo:
    """C{info}, marked as the session of the browser asking (or not)."""
    return dataclasses.replace(info, current=current)

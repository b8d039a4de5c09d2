"""
Accounts: people, their passwords, browser sessions and sign-in throttling.

Passwords are hashed with argon2id on a few threads of the worker's own,
never on the reactor, and a worker admits only so many sign-ins and
sign-ups at once (L{PasswordWork}): a storm of them is answered "busy"
at once instead of queueing hashes that would starve everything else.
Session tokens are random; only their SHA-256 is stored, so a copy of the
database does not let anyone sign in. Failed sign-ins are counted in the
database per account and per client address, so the limit holds across
worker processes and nodes; each attempt is counted before its password is
checked (and given back when it succeeds), so parallel attempts cannot get
more checks than the limit.

Nothing here renders pages or reads requests: the web layer does that.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from clickpass.accounts.settings import AccountsSettings
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
    """A request about an account cannot be met; the message is for the person."""


class SignInRefused(AccountError):
    """Bad credentials. One message whatever was wrong, so nothing leaks."""

    def __init__(self) -> None:
        super().__init__("That email and password do not match an account.")


class Throttled(AccountError):
    """Too many failed sign-ins recently, for this account or this address."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, (retry_after + 59) // 60)
        super().__init__(
            f"Too many failed sign-in attempts. Try again in {minutes} minute"
            f"{'' if minutes == 1 else 's'}."
        )
        self.retry_after = retry_after


class HashingBusy(AccountError):
    """
    This worker already has as many passwords to check as it lets wait:
    the person is asked to try again shortly, and nothing was counted.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "Clickpass is very busy checking passwords right now. "
            f"Try again in {retry_after} seconds."
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


_ACCOUNT_COLUMNS = "id, uid, email, display_name, created, disabled"


def _account(row: tuple[Any, ...] | None) -> Account | None:
    if row is None:
        return None
    return Account(int(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4]), bool(row[5]))


def normalise_email(email: str) -> str:
    """The form in which an email is stored and compared."""
    return email.strip().lower()


def check_email(email: str) -> str:
    """Return the normalised email, or raise L{AccountError} saying what is wrong."""
    value = normalise_email(email)
    if not value:
        raise AccountError("Enter your email address.")
    if len(value) > 254 or not EMAIL_PATTERN.match(value) or "." not in value.split("@")[1]:
        raise AccountError("That does not look like an email address.")
    return value


def session_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# Transactions (run on the storage's pool).


def _insert_account(tx: Transaction, uid: str, email: str, pw_hash: str, now: int) -> Account:
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
        "INSERT INTO accounts (uid, email, password_hash, created) VALUES (?, ?, ?, ?)",
        uid,
        email,
        pw_hash,
        now,
    )
    account = _account(tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE uid = ?", uid))
    assert account is not None
    return account


def _account_and_hash(tx: Transaction, email: str) -> tuple[Account, str | None] | None:
    row = tx.fetchone(
        f"SELECT {_ACCOUNT_COLUMNS}, password_hash FROM accounts WHERE email = ?", email
    )
    if row is None:
        return None
    account = _account(row[:6])
    assert account is not None
    return account, row[6]


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
    tx: Transaction, token_hash: str, account_id: int, now: int, expires: int, address: str
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


def _session_account(tx: Transaction, token_hash: str, now: int) -> Account | None:
    cols = ", ".join(f"a.{c.strip()}" for c in _ACCOUNT_COLUMNS.split(","))
    return _account(
        tx.fetchone(
            f"SELECT {cols} FROM sessions s JOIN accounts a ON a.id = s.account_id "
            "WHERE s.token_hash = ? AND s.expires > ? AND a.disabled = 0",
            token_hash,
            now,
        )
    )


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
    all the others. The pool is started at first use and stopped with the
    reactor.
    """

    def __init__(
        self, reactor: Any, threads: int, queue: int, pool: ThreadPool | None = None
    ) -> None:
        self._reactor = reactor
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
        result: Deferred[T] = deferToThreadPool(self._reactor, self._pool, fn, *args)
        return result


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
        self._hasher = hasher or PasswordHasher()
        self._work = PasswordWork(
            reactor, settings.hash_threads, settings.hash_queue, pool=threadpool
        )
        # Verified against when the email is unknown, so a wrong email costs
        # as long as a wrong password and timing reveals nothing.
        self._dummy_hash: str | None = None

    def _now(self) -> int:
        return int(self._clock())

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._work.run(fn, *args)

    def check_password_rules(self, password: str) -> None:
        minimum = self._settings.min_password_length
        if len(password) < minimum:
            raise AccountError(f"Choose a password of at least {minimum} characters.")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise AccountError(f"Choose a password of at most {MAX_PASSWORD_LENGTH} characters.")

    async def sign_up(self, email: str, password: str) -> Account:
        """Create an account; L{AccountError} says why not."""
        address = check_email(email)
        self.check_password_rules(password)
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
                idempotent=True,
            )
        except IntegrityError:
            raise AccountError(
                "An account with that email already exists. Sign in instead."
            ) from None
        return account

    async def authenticate(self, email: str, password: str, client_address: str) -> Account:
        """
        Check an email and password. Raise L{HashingBusy} when this worker
        has too many passwords to check already (nothing is counted then),
        L{Throttled} when this account or this address has failed too often
        lately, L{SignInRefused} for any mismatch (unknown email, wrong
        password, disabled account).
        """
        self._work.admit()
        try:
            return await self._authenticate(email, password, client_address)
        finally:
            self._work.release()

    async def _authenticate(self, email: str, password: str, client_address: str) -> Account:
        address = normalise_email(email)[:254]
        now = self._now()
        window = self._settings.throttle_window
        subjects = [
            ("account", address, self._settings.throttle_per_account),
            ("address", client_address[:255], self._settings.throttle_per_address),
        ]
        wait = await self._storage.run(_reserve_attempt, subjects, now, window)
        if wait:
            raise Throttled(wait)
        # From here the attempt counts as a failure (so parallel attempts
        # in flight count against the limit) until it proves to be right.
        found = await self._storage.run(_account_and_hash, address)
        if found is None or found[1] is None:
            await self._in_thread(self._verify_dummy, password)
            ok = False
        else:
            ok = await self._in_thread(self._verify, found[1], password)
        if not ok or found is None or found[0].disabled:
            raise SignInRefused()
        account, pw_hash = found
        await self._storage.run(_signed_in, subjects)
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

        def disable(tx: Transaction) -> bool:
            row = tx.fetchone("SELECT id FROM accounts WHERE email = ?", normalise_email(email))
            if row is None:
                return False
            tx.execute("UPDATE accounts SET disabled = 1 WHERE id = ?", row[0])
            tx.execute("DELETE FROM sessions WHERE account_id = ?", row[0])
            return True

        result: bool = await self._storage.run(disable)
        return result

    async def get(self, account_id: int) -> Account | None:
        result: Account | None = await self._storage.run(
            lambda tx: _account(
                tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", account_id)
            )
        )
        return result

    async def start_session(
        self, account: Account, client_address: str, previous_token: str | None = None
    ) -> str:
        """
        Open a session for C{account} and return its new token. The token
        the browser had before (if any) is ended: sign-in rotates it.
        """
        token = secrets.token_urlsafe(32)
        now = self._now()

        def start(tx: Transaction) -> None:
            if previous_token:
                tx.execute(
                    "DELETE FROM sessions WHERE token_hash = ?", session_hash(previous_token)
                )
            _create_session(
                tx,
                session_hash(token),
                account.id,
                now,
                now + self._settings.session_lifetime,
                client_address,
            )

        await self._storage.run(start)
        return token

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
        await self._storage.run(
            lambda tx: tx.execute("DELETE FROM sessions WHERE token_hash = ?", session_hash(token))
        )

    async def expire_sessions(self, now: int | None = None) -> int:
        """Delete expired sessions; return how many."""
        when = self._now() if now is None else now
        count: int = await self._storage.run(
            lambda tx: tx.execute("DELETE FROM sessions WHERE expires <= ?", when)
        )
        return count

    async def prune_failures(self, now: int | None = None) -> int:
        """Forget failed sign-in counts whose window has passed; return how many."""
        when = self._now() if now is None else now
        oldest = when - self._settings.throttle_window
        count: int = await self._storage.run(
            lambda tx: tx.execute("DELETE FROM signin_failures WHERE window_start <= ?", oldest)
        )
        return count

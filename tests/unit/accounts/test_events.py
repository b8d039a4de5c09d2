"""
The security log, the session list and the sign-up limits, on both storage
backends: what each flow records, new browsers, sessions ended one by one
or all but this one, "last seen" kept without a write per request, expiry
after the retention, and sign-ups counted per address and overall before
any password is hashed.

Time comes from a task.Clock; nothing here sleeps.
"""

from __future__ import annotations

import dataclasses

import pytest

from twisted.internet.task import Clock

from clickpass.accounts import events
from clickpass.accounts.service import (
    LAST_SEEN_GRANULARITY,
    Account,
    Accounts,
    SignIn,
    SignInRefused,
    SignUpThrottled,
    session_hash,
)
from clickpass.storage.sql import AdbapiStorage, Storage
from tests.support.deferreds import async_test
from tests.support.storage import DatabaseTarget
from tests.unit.accounts.test_accounts import NOW, PASSWORD, SETTINGS, make_accounts

HERE = SignIn("192.0.2.1", "Firefox on Linux", "a" * 64)
THERE = SignIn("198.51.100.7", "Safari on iOS", "b" * 64)


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


async def _kinds(storage: Storage, account: Account) -> list[str]:
    found = await storage.run(events.recent, account.id, 100)
    return [e.kind for e in reversed(found)]


# Pure parts.


@pytest.mark.parametrize(
    ("agent", "name"),
    [
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox on Linux",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
            "Edge on Windows",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Mobile Safari/537.36",
            "Chrome on Android",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
            "Safari on iOS",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/18.1 Safari/605.1.15",
            "Safari on macOS",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/131.0.0.0 Safari/537.36",
            "Chrome on Linux",
        ),
        ("curl/8.5.0", "curl/8.5.0"),
        ("python-requests/2.32.3", "python-requests/2.32.3"),
        ("", "unknown browser"),
        ("\x00\x01", "unknown browser"),
        ("x" * 500, "x" * 60),
    ],
)
def test_browsers_are_named_as_people_know_them(agent: str, name: str) -> None:
    """A User-Agent becomes "Browser on System"; anything else is shown cut short."""
    assert events.describe_browser(agent) == name


def test_every_kind_has_a_label() -> None:
    """Each kind reads as a sentence on the account page, and kinds fit their column."""
    for kind, label in events.KINDS.items():
        assert len(kind) <= 32 and label and label[0].isupper()


@async_test
async def test_an_unknown_kind_is_refused_and_nothing_is_written(
    accounts: Accounts, storage_backend: AdbapiStorage
) -> None:
    """A misspelt kind raises at once (a bug in the caller), and nothing is recorded."""
    account = await accounts.sign_up("a@example.com", PASSWORD)
    with pytest.raises(ValueError, match="unknown security event kind 'sign_in'"):
        await storage_backend.run(events.record, account.id, "sign_in", NOW)
    assert await _kinds(storage_backend, account) == ["signup"]


# What is recorded.


@async_test
async def test_sign_up_sign_in_and_failed_sign_in_are_recorded(
    accounts: Accounts, storage_backend: AdbapiStorage
) -> None:
    """
    The account's log holds its creation, each sign-in (with address,
    browser and how), and each wrong password; a wrong password for an
    unknown address is nobody's event.
    """
    account = await accounts.sign_up("a@example.com", PASSWORD)
    await accounts.start_session(account, HERE.client_address, how=HERE)
    with pytest.raises(SignInRefused):
        await accounts.authenticate("a@example.com", "wrong password!", "203.0.113.9", "curl/8")
    with pytest.raises(SignInRefused):
        await accounts.authenticate("nobody@example.com", "wrong password!", "203.0.113.9")
    assert await _kinds(storage_backend, account) == ["signup", "signin", "signin_failed"]
    found = await storage_backend.run(events.recent, account.id, 10)
    failed, signin = found[0], found[1]
    assert (failed.client_address, failed.browser) == ("203.0.113.9", "curl/8")
    assert (signin.client_address, signin.browser, signin.detail) == (
        "192.0.2.1",
        "Firefox on Linux",
        "password",
    )
    count = await storage_backend.run(lambda tx: tx.scalar("SELECT COUNT(*) FROM security_events"))
    assert count == 3


@async_test
async def test_a_new_browser_is_noticed_but_not_the_first_or_a_known_one(
    accounts: Accounts, storage_backend: AdbapiStorage
) -> None:
    """
    The first browser an account signs in from is not news; the same one
    again is not either; another one is, once.
    """
    account = await accounts.sign_up("a@example.com", PASSWORD)
    await accounts.start_session(account, "", how=HERE)
    await accounts.start_session(account, "", how=HERE)
    assert await _kinds(storage_backend, account) == ["signup", "signin", "signin"]
    await accounts.start_session(account, "", how=THERE)
    await accounts.start_session(account, "", how=THERE)
    assert await _kinds(storage_backend, account) == [
        "signup",
        "signin",
        "signin",
        "signin",
        "new_browser",
        "signin",
    ]


@async_test
async def test_operators_disable_and_enable_are_recorded(
    accounts: Accounts, storage_backend: AdbapiStorage
) -> None:
    """Disabling ends the sessions; enabling lets the person sign in again; both are logged."""
    account = await accounts.sign_up("a@example.com", PASSWORD)
    token = await accounts.start_session(account, "", how=HERE)
    assert await accounts.disable("A@example.com")
    assert await accounts.session_account(token) is None
    with pytest.raises(SignInRefused):
        await accounts.authenticate("a@example.com", PASSWORD, "192.0.2.1")
    assert await accounts.enable("a@example.com")
    assert (await accounts.authenticate("a@example.com", PASSWORD, "192.0.2.1")).id == account.id
    assert not await accounts.enable("nobody@example.com")
    kinds = await _kinds(storage_backend, account)
    assert kinds[-2:] == ["account_disabled", "account_enabled"]


@async_test
async def test_events_are_kept_for_the_retention_and_then_expired(
    accounts: Accounts, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """Housekeeping removes events older than security_events_days, and only those."""
    account = await accounts.sign_up("a@example.com", PASSWORD)
    days = SETTINGS.security_events_days
    clock.advance(days * 86400 - 10)
    await accounts.start_session(account, "", how=HERE)
    assert await accounts.expire_events() == 0
    clock.advance(11)
    assert await accounts.expire_events() == 1
    assert await _kinds(storage_backend, account) == ["signin"]


# Sessions.


@async_test
async def test_sessions_are_listed_and_ended_one_by_one(
    accounts: Accounts, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    The list shows each session's browser, address, start and last use,
    marks the asking one, never shows a token or its hash; ending one by its
    handle ends only that one, and only for its own account.
    """
    account = await accounts.sign_up("a@example.com", PASSWORD)
    other = await accounts.sign_up("b@example.com", PASSWORD)
    mine = await accounts.start_session(account, HERE.client_address, how=HERE)
    clock.advance(60)
    theirs = await accounts.start_session(account, THERE.client_address, how=THERE)
    listed = await accounts.sessions(account.id, mine)
    assert [(s.browser, s.client_address, s.created, s.current) for s in listed] == [
        ("Safari on iOS", "198.51.100.7", NOW + 60, False),
        ("Firefox on Linux", "192.0.2.1", NOW, True),
    ]
    for s in listed:
        assert s.handle not in (session_hash(mine), session_hash(theirs))
    assert not await accounts.end_session_by_handle(other.id, listed[0].handle, HERE)
    assert not await accounts.end_session_by_handle(account.id, "nonsense", HERE)
    assert await accounts.end_session_by_handle(account.id, listed[0].handle, HERE)
    assert await accounts.session_account(theirs) is None
    assert await accounts.session_account(mine) is not None
    assert (await _kinds(storage_backend, account))[-1] == "session_ended"


@async_test
async def test_sign_out_everywhere_else_keeps_this_session(
    accounts: Accounts, storage_backend: AdbapiStorage
) -> None:
    """Every other session of the account ends; this one and other accounts' stay."""
    account = await accounts.sign_up("a@example.com", PASSWORD)
    other = await accounts.sign_up("b@example.com", PASSWORD)
    mine = await accounts.start_session(account, "", how=HERE)
    gone = [await accounts.start_session(account, "", how=THERE) for _ in range(3)]
    kept = await accounts.start_session(other, "", how=THERE)
    assert await accounts.end_other_sessions(account.id, mine, HERE) == 3
    for token in gone:
        assert await accounts.session_account(token) is None
    assert await accounts.session_account(mine) is not None
    assert await accounts.session_account(kept) is not None
    assert [s.current for s in await accounts.sessions(account.id, mine)] == [True]
    assert await accounts.end_other_sessions(account.id, mine, HERE) == 0
    found = await storage_backend.run(events.recent, account.id, 1)
    assert (found[0].kind, found[0].detail) == ("other_sessions_ended", "3 sessions")
    details = await storage_backend.run(
        lambda tx: tx.scalar(
            "SELECT COUNT(*) FROM session_details WHERE account_id = ?", account.id
        )
    )
    assert details == 1


@async_test
async def test_last_seen_is_written_at_most_once_per_granularity(
    accounts: Accounts, clock: Clock
) -> None:
    """A request updates "last seen" only when it is older than the granularity."""
    account = await accounts.sign_up("a@example.com", PASSWORD)
    token = await accounts.start_session(account, "", how=HERE)
    clock.advance(LAST_SEEN_GRANULARITY - 1)
    await accounts.session_account(token)
    assert (await accounts.sessions(account.id))[0].last_seen == NOW
    clock.advance(1)
    await accounts.session_account(token)
    assert (await accounts.sessions(account.id))[0].last_seen == NOW + LAST_SEEN_GRANULARITY


@async_test
async def test_a_session_without_details_is_listed_as_unknown(
    accounts: Accounts, storage_backend: AdbapiStorage
) -> None:
    """A session an older node started (no details row) still lists, and still works."""
    account = await accounts.sign_up("a@example.com", PASSWORD)
    token = await accounts.start_session(account, "192.0.2.1", how=HERE)
    await storage_backend.run(lambda tx: tx.execute("DELETE FROM session_details"))
    assert await accounts.session_account(token) is not None
    [found] = await accounts.sessions(account.id, token)
    assert (found.browser, found.last_seen, found.current) == ("unknown browser", NOW, True)


# Sign-up limits.


@async_test
async def test_sign_ups_are_limited_per_address_and_overall(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    Each address gets its number of sign-ups per window, then a refusal
    saying when to come back; all addresses together get the overall
    number; an operator's sign-up is not counted; the window passing lifts
    both.
    """
    settings = dataclasses.replace(
        SETTINGS, signup_per_address=2, signup_overall=3, signup_window=600
    )
    accounts = make_accounts(database_target, storage_backend, clock, settings)
    await accounts.sign_up("a1@example.com", PASSWORD, "192.0.2.1")
    await accounts.sign_up("a2@example.com", PASSWORD, "192.0.2.1")
    with pytest.raises(SignUpThrottled) as refused:
        await accounts.sign_up("a3@example.com", PASSWORD, "192.0.2.1")
    assert refused.value.retry_after == 600
    assert "Try again in 10 minutes" in str(refused.value)
    await accounts.sign_up("b1@example.com", PASSWORD, "192.0.2.2")
    clock.advance(100)
    with pytest.raises(SignUpThrottled) as refused:
        await accounts.sign_up("c1@example.com", PASSWORD, "192.0.2.3")
    assert refused.value.retry_after == 500
    await accounts.sign_up("op@example.com", PASSWORD)  # an operator's
    clock.advance(500)
    await accounts.sign_up("c1@example.com", PASSWORD, "192.0.2.3")
    emails = await storage_backend.run(
        lambda tx: sorted(r[0] for r in tx.fetchall("SELECT email FROM accounts"))
    )
    assert emails == [
        "a1@example.com",
        "a2@example.com",
        "b1@example.com",
        "c1@example.com",
        "op@example.com",
    ]

"""
The mailed-link account flows on both storage backends, with the real mail
outbox (messages read back from its table): single-use tokens and each
way they are refused, sign-up that tells nobody whether an address is
taken, verification by the signed-in owner, password reset, password and
address changes with their undo, the operators' verify and reset link.

Time comes from a task.Clock; nothing here sleeps.
"""

from __future__ import annotations

import dataclasses
import email
import re
from email.message import Message

import pytest
from argon2 import PasswordHasher

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from clickpass.accounts import events, tokens
from clickpass.accounts.flows import (
    AccountFlows,
    AddressTaken,
    TooManyRequests,
    releasable_email,
)
from clickpass.accounts.service import (
    Account,
    AccountError,
    Accounts,
    SignIn,
    SignInRefused,
    SignUpThrottled,
    Throttled,
    account_by_email,
)
from clickpass.accounts.settings import AccountsSettings
from clickpass.mail.outbox import Outbox
from clickpass.mail.settings import MailSettings
from clickpass.storage.sql import AdbapiStorage
from tests.support.deferreds import async_test
from tests.support.storage import DatabaseTarget
from tests.unit.accounts.test_accounts import FAST_HASHER, NOW, PASSWORD

SETTINGS = AccountsSettings(
    throttle_per_account=3,
    link_mails_per_address=3,
    link_mails_per_client=5,
)
BASE = "https://cp.example.test/"
LINK = re.compile(r"(https://cp\.example\.test/[^\s]+)")
NEW_PASSWORD = "another long passphrase"


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


@pytest.fixture
def accounts(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> Accounts:
    return Accounts(
        database_target.reactor, storage_backend, SETTINGS, clock=clock.seconds, hasher=FAST_HASHER
    )


@pytest.fixture
def flows(
    database_target: DatabaseTarget,
    storage_backend: AdbapiStorage,
    accounts: Accounts,
    clock: Clock,
) -> AccountFlows:
    outbox = Outbox(MailSettings(), BASE)
    return AccountFlows(
        database_target.reactor, storage_backend, accounts, SETTINGS, outbox, clock=clock.seconds
    )


async def mails(storage: AdbapiStorage, to: str) -> list[Message]:
    """Every message queued to C{to}, oldest first."""
    rows = await storage.run(
        lambda tx: tx.fetchall(
            "SELECT message FROM mail_outbox WHERE recipient = ? ORDER BY id", to
        )
    )
    return [email.message_from_string(str(r[0])) for r in rows]


def text_of(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode("utf-8")
    raise AssertionError("no text part")


def token_in(message: Message, path: str) -> str:
    """The token of the link to C{path} in C{message}."""
    for link in LINK.findall(text_of(message)):
        if link.startswith(BASE + path + "?t="):
            return str(link.split("?t=", 1)[1])
    raise AssertionError(f"no {path} link in:\n{text_of(message)}")


async def account(storage: AdbapiStorage, address: str) -> Account:
    found = await storage.run(account_by_email, address)
    assert found is not None
    return found


# Tokens.


@async_test
async def test_a_token_is_stored_only_as_its_hash_and_used_once(
    storage_backend: AdbapiStorage, accounts: Accounts
) -> None:
    """The token itself is nowhere in the database; a second use is refused as used."""
    ann = await accounts.sign_up("ann@example.org", PASSWORD)
    token = await storage_backend.run(tokens.issue, ann.id, tokens.RESET, 3600, NOW)
    stored = await storage_backend.run(
        lambda tx: tx.fetchall("SELECT token_hash FROM account_tokens")
    )
    assert stored == [(tokens.token_hash(token),)]
    found = await storage_backend.run(tokens.consume, token, tokens.RESET, NOW + 10)
    assert found.account_id == ann.id
    with pytest.raises(tokens.TokenRefused) as refused:
        await storage_backend.run(tokens.consume, token, tokens.RESET, NOW + 11)
    assert refused.value.reason == "used"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("expired", "expired"),
        ("tampered", "invalid"),
        ("truncated", "invalid"),
        ("other purpose", "invalid"),
        ("other account", "other_account"),
    ],
)
@async_test
async def test_a_token_is_refused_saying_why(
    storage_backend: AdbapiStorage, accounts: Accounts, change: str, reason: str
) -> None:
    """Expired, changed, cut short, for another purpose or another account: each says which."""
    ann = await accounts.sign_up("ann@example.org", PASSWORD)
    bob = await accounts.sign_up("bob@example.org", PASSWORD)
    token = await storage_backend.run(tokens.issue, ann.id, tokens.VERIFY, 3600, NOW)
    now, purpose, who = NOW + 1, tokens.VERIFY, ann.id
    if change == "expired":
        now = NOW + 3600
    elif change == "tampered":
        token = token[:-1] + ("A" if token[-1] != "A" else "B")
    elif change == "truncated":
        token = token[:20]
    elif change == "other purpose":
        purpose = tokens.RESET
    else:
        who = bob.id
    with pytest.raises(tokens.TokenRefused) as refused:
        await storage_backend.run(tokens.consume, token, purpose, now, who)
    assert refused.value.reason == reason
    assert refused.value.next_step and refused.value.next_url.startswith("/")


# Sign-up and verification.


@async_test
async def test_sign_up_answers_the_same_and_warns_the_holder_of_a_taken_address(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """
    A new address gets an unverified account and a verification link; a
    taken one gets no account and no link, but its holder is told.
    """
    first = await flows.sign_up("Ann@Example.org", PASSWORD, "192.0.2.1", "/openid?x=1")
    second = await flows.sign_up("ann@example.org", "a different password", "192.0.2.2")
    assert first == second == "ann@example.org"
    ann = await account(storage_backend, "ann@example.org")
    assert not ann.email_verified and releasable_email(ann) == ""
    verify, taken = await mails(storage_backend, "ann@example.org")
    assert "Confirm your email address" in verify["Subject"]
    assert "Someone tried to create" in taken["Subject"]
    assert "/verify?t=" not in text_of(taken)
    # The existing password still works; the second one does not.
    assert (await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.1")).id == ann.id
    with pytest.raises(SignInRefused):
        await accounts.authenticate("ann@example.org", "a different password", "192.0.2.1")


@async_test
async def test_verification_by_the_signed_in_owner_releases_the_address(
    storage_backend: AdbapiStorage, flows: AccountFlows
) -> None:
    """The link verifies the address for its own account only, once, and says where to go next."""
    await flows.sign_up("ann@example.org", PASSWORD, "192.0.2.1", "/openid?x=1")
    await flows.sign_up("bob@example.org", PASSWORD, "192.0.2.1")
    ann = await account(storage_backend, "ann@example.org")
    bob = await account(storage_backend, "bob@example.org")
    (message,) = await mails(storage_backend, "ann@example.org")
    token = token_in(message, "verify")
    with pytest.raises(tokens.TokenRefused) as refused:
        await flows.verify(token, bob)
    assert refused.value.reason == "other_account"
    assert await flows.verify(token, ann) == "/openid?x=1"
    ann = await account(storage_backend, "ann@example.org")
    assert ann.email_verified and releasable_email(ann) == "ann@example.org"
    with pytest.raises(tokens.TokenRefused):
        await flows.verify(token, ann)


@async_test
async def test_verification_links_expire_after_a_day(
    storage_backend: AdbapiStorage, flows: AccountFlows, clock: Clock
) -> None:
    """A verification link opened after 24 hours is refused as expired; a new one works."""
    await flows.sign_up("ann@example.org", PASSWORD, "192.0.2.1")
    ann = await account(storage_backend, "ann@example.org")
    (message,) = await mails(storage_backend, "ann@example.org")
    clock.advance(24 * 3600)
    with pytest.raises(tokens.TokenRefused) as refused:
        await flows.verify(token_in(message, "verify"), ann)
    assert refused.value.reason == "expired"
    assert await flows.resend_verification(ann, "192.0.2.1")
    latest = (await mails(storage_backend, "ann@example.org"))[-1]
    await flows.verify(token_in(latest, "verify"), ann)


@async_test
async def test_link_mails_are_limited_per_address_silently_and_per_client_openly(
    storage_backend: AdbapiStorage, flows: AccountFlows
) -> None:
    """
    Past the per-address limit nothing more is sent, with the same answer;
    past the per-client limit the client is told to wait.
    """
    await flows.sign_up("ann@example.org", PASSWORD, "192.0.2.1")
    ann = await account(storage_backend, "ann@example.org")
    results = [await flows.resend_verification(ann, f"192.0.2.{i}") for i in range(2, 6)]
    assert results == [True, True, False, False]
    assert len(await mails(storage_backend, "ann@example.org")) == 3
    for _ in range(SETTINGS.link_mails_per_client):
        await flows.request_reset("nobody@example.org", "198.51.100.7")
    with pytest.raises(TooManyRequests):
        await flows.request_reset("nobody@example.org", "198.51.100.7")


# Password reset.


@async_test
async def test_reset_answers_the_same_and_mails_only_an_existing_account(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """Asking for a reset of an unknown address sends nothing and raises nothing."""
    await accounts.sign_up("ann@example.org", PASSWORD)
    await flows.request_reset("nobody@example.org", "192.0.2.1")
    await flows.request_reset("ANN@example.org", "192.0.2.1")
    assert await mails(storage_backend, "nobody@example.org") == []
    (message,) = await mails(storage_backend, "ann@example.org")
    assert "Reset your Clickpass password" in message["Subject"]


@async_test
async def test_reset_gets_the_owner_in_even_while_sign_in_is_throttled(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows, clock: Clock
) -> None:
    """
    With the account's sign-ins throttled by someone else's guesses, a
    fresh reset link sets the new password, verifies the address, ends
    every session, tells the owner, and the new password signs in.
    """
    ann = await accounts.sign_up("ann@example.org", PASSWORD)
    session = await accounts.start_session(ann, "192.0.2.1")
    for _ in range(SETTINGS.throttle_per_account):
        with pytest.raises(SignInRefused):
            await accounts.authenticate("ann@example.org", "guess guess guess", "203.0.113.9")
    with pytest.raises(Throttled):
        await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.1")
    await flows.request_reset("ann@example.org", "192.0.2.1")
    (message,) = await mails(storage_backend, "ann@example.org")
    token = token_in(message, "reset")
    clock.advance(600)
    done = await flows.reset(token, NEW_PASSWORD)
    assert done.account.email_verified
    assert await accounts.session_account(session) is None
    assert (await accounts.authenticate("ann@example.org", NEW_PASSWORD, "192.0.2.1")).id == ann.id
    changed = (await mails(storage_backend, "ann@example.org"))[-1]
    assert "password was changed" in changed["Subject"]
    with pytest.raises(tokens.TokenRefused) as refused:
        await flows.reset(token, "yet another passphrase")
    assert refused.value.reason == "used"


@async_test
async def test_reset_links_expire_after_an_hour(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows, clock: Clock
) -> None:
    """A reset link an hour old is refused as expired, and the password is unchanged."""
    await accounts.sign_up("ann@example.org", PASSWORD)
    await flows.request_reset("ann@example.org", "192.0.2.1")
    (message,) = await mails(storage_backend, "ann@example.org")
    clock.advance(3600)
    with pytest.raises(tokens.TokenRefused) as refused:
        await flows.reset(token_in(message, "reset"), NEW_PASSWORD)
    assert refused.value.reason == "expired"
    await accounts.authenticate("ann@example.org", PASSWORD, "192.0.2.1")


# Changes by the owner.


@async_test
async def test_change_password_needs_the_current_one_and_ends_other_sessions(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """A wrong current password changes nothing; a right one keeps only this session."""
    ann = await accounts.sign_up("ann@example.org", PASSWORD, verified=True)
    here = await accounts.start_session(ann, "192.0.2.1")
    there = await accounts.start_session(ann, "192.0.2.2")
    with pytest.raises(AccountError):
        await flows.change_password(ann, "not my password", NEW_PASSWORD, "192.0.2.1", here)
    await flows.change_password(ann, PASSWORD, NEW_PASSWORD, "192.0.2.1", here)
    assert await accounts.session_account(here) is not None
    assert await accounts.session_account(there) is None
    await accounts.authenticate("ann@example.org", NEW_PASSWORD, "192.0.2.1")
    (message,) = await mails(storage_backend, "ann@example.org")
    assert "password was changed" in message["Subject"]


@async_test
async def test_change_email_takes_effect_once_verified_and_can_be_undone(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """
    The new address is the account's only once its link is used; the old
    address gets a link that gives it back and ends every session.
    """
    ann = await accounts.sign_up("ann@example.org", PASSWORD, verified=True)
    session = await accounts.start_session(ann, "192.0.2.1")
    await flows.request_email_change(ann, PASSWORD, "ann@new.example", "192.0.2.1")
    assert (await account(storage_backend, "ann@example.org")).id == ann.id
    (confirm,) = await mails(storage_backend, "ann@new.example")
    assert await flows.confirm_email_change(token_in(confirm, "email/confirm"), ann) == (
        "ann@new.example"
    )
    moved = await account(storage_backend, "ann@new.example")
    assert moved.id == ann.id and moved.email_verified
    (notice,) = await mails(storage_backend, "ann@example.org")
    assert "ann@new.example" in text_of(notice)
    assert await flows.revert_email(token_in(notice, "email/revert")) == "ann@example.org"
    back = await account(storage_backend, "ann@example.org")
    assert back.id == ann.id and back.email_verified
    assert await accounts.session_account(session) is None


@async_test
async def test_an_account_with_no_password_changes_its_address_only_after_step_up(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """
    An account made through an upstream provider has no password: asking
    for a new address is refused (nothing mailed) unless the caller saw a
    fresh sign-in (step-up); then no password is asked for.
    """
    bea = await accounts.sign_up("bea@example.org", PASSWORD, verified=True)
    await storage_backend.run(
        lambda tx: tx.execute("UPDATE accounts SET password_hash = NULL WHERE id = ?", bea.id)
    )
    with pytest.raises(AccountError, match="Confirm it is you first"):
        await flows.request_email_change(bea, "", "bea@new.example", "192.0.2.1")
    assert await mails(storage_backend, "bea@new.example") == []
    await flows.request_email_change(bea, "", "bea@new.example", "192.0.2.1", stepped_up=True)
    (confirm,) = await mails(storage_backend, "bea@new.example")
    assert await flows.confirm_email_change(token_in(confirm, "email/confirm"), bea) == (
        "bea@new.example"
    )


@async_test
async def test_change_email_to_a_taken_address_changes_nothing(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """Moving to another account's address sends no link; that address's holder is told."""
    ann = await accounts.sign_up("ann@example.org", PASSWORD, verified=True)
    await accounts.sign_up("bob@example.org", PASSWORD)
    await flows.request_email_change(ann, PASSWORD, "bob@example.org", "192.0.2.1")
    (message,) = await mails(storage_backend, "bob@example.org")
    assert "/email/confirm" not in text_of(message)
    assert (await account(storage_backend, "ann@example.org")).id == ann.id


@async_test
async def test_an_address_taken_before_the_confirmation_changes_nothing(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """
    The new address is taken by a sign-up between the request and the
    confirmation: confirming says so (AddressTaken, naming the address),
    the account keeps its address, and the link is not used up.
    """
    ann = await accounts.sign_up("ann@example.org", PASSWORD, verified=True)
    await flows.request_email_change(ann, PASSWORD, "new@example.org", "192.0.2.1")
    (confirm,) = await mails(storage_backend, "new@example.org")
    token = token_in(confirm, "email/confirm")
    await accounts.sign_up("new@example.org", PASSWORD)
    assert await flows.address_taken("new@example.org", ann)
    with pytest.raises(AddressTaken) as taken:
        await flows.confirm_email_change(token, ann)
    assert taken.value.address == "new@example.org"
    assert "new@example.org became the address of another" in str(taken.value)
    assert (await account(storage_backend, "ann@example.org")).id == ann.id
    assert (await flows.check_email_change(token, ann)).email == "new@example.org"


@async_test
async def test_two_confirmations_racing_to_one_address_give_one_address_taken(
    storage_backend: AdbapiStorage,
    accounts: Accounts,
    flows: AccountFlows,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Two accounts confirm a move to the same address at once, and the
    check for a holder misses the other's commit (as it does under
    MariaDB's repeatable read when both check before either writes): the
    unique index refuses the second, which is answered AddressTaken, not
    a database error; the first keeps the address. The interleaving cannot
    be forced through the database, so the check is made to miss.
    """
    ann = await accounts.sign_up("ann@example.org", PASSWORD, verified=True)
    bob = await accounts.sign_up("bob@example.org", PASSWORD, verified=True)
    for who in (ann, bob):
        await flows.request_email_change(who, PASSWORD, "both@example.org", "192.0.2.1")
    first, second = await mails(storage_backend, "both@example.org")
    assert await flows.confirm_email_change(token_in(first, "email/confirm"), ann) == (
        "both@example.org"
    )
    from clickpass.accounts import flows as flows_module

    monkeypatch.setattr(flows_module, "account_by_email", lambda tx, address: None)
    with pytest.raises(AddressTaken) as taken:
        await flows.confirm_email_change(token_in(second, "email/confirm"), bob)
    monkeypatch.undo()
    assert taken.value.address == "both@example.org"
    assert (await account(storage_backend, "both@example.org")).id == ann.id
    assert (await account(storage_backend, "bob@example.org")).id == bob.id


@async_test
async def test_an_undo_racing_a_move_to_the_old_address_changes_nothing(
    storage_backend: AdbapiStorage,
    accounts: Accounts,
    flows: AccountFlows,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Ann moves away from her address and Bob moves to it; Ann's undo link
    then finds it held, or (its holder check missing Bob's commit, as under
    repeatable read) is refused by the unique index: either way an
    AccountError that says so, not a database error, and nothing changes.
    """
    ann = await accounts.sign_up("ann@example.org", PASSWORD, verified=True)
    bob = await accounts.sign_up("bob@example.org", PASSWORD, verified=True)
    await flows.request_email_change(ann, PASSWORD, "ann@new.example", "192.0.2.1")
    (confirm,) = await mails(storage_backend, "ann@new.example")
    await flows.confirm_email_change(token_in(confirm, "email/confirm"), ann)
    (notice,) = await mails(storage_backend, "ann@example.org")
    revert = token_in(notice, "email/revert")
    await flows.request_email_change(bob, PASSWORD, "ann@example.org", "192.0.2.1")
    *_, moving = await mails(storage_backend, "ann@example.org")
    await flows.confirm_email_change(token_in(moving, "email/confirm"), bob)
    with pytest.raises(AccountError, match="belongs to another account now"):
        await flows.revert_email(revert)
    from clickpass.accounts import flows as flows_module

    monkeypatch.setattr(flows_module, "account_by_email", lambda tx, address: None)
    with pytest.raises(AccountError, match="belongs to another account now"):
        await flows.revert_email(revert)
    monkeypatch.undo()
    assert (await account(storage_backend, "ann@example.org")).id == bob.id
    assert (await account(storage_backend, "ann@new.example")).id == ann.id


# Operators.


@async_test
async def test_operators_verify_and_make_reset_links(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """user verify marks the address verified; user reset-link makes a link that works."""
    await accounts.sign_up("ann@example.org", PASSWORD)
    assert not await flows.operator_verify("nobody@example.org")
    assert await flows.operator_verify("ann@example.org")
    assert (await account(storage_backend, "ann@example.org")).email_verified
    link = await flows.operator_reset_link("ann@example.org")
    assert link.startswith(BASE + "reset?t=")
    await flows.reset(link.split("?t=", 1)[1], NEW_PASSWORD)
    with pytest.raises(AccountError):
        await flows.operator_reset_link("nobody@example.org")


@async_test
async def test_sign_ups_of_one_address_at_once_make_one_account(
    storage_backend: AdbapiStorage, flows: AccountFlows
) -> None:
    """Parallel sign-ups with one new address: one account, every caller the same answer."""
    addresses = await gatherResults(
        [
            Deferred.fromCoroutine(flows.sign_up("race@example.org", PASSWORD, f"192.0.2.{i}"))
            for i in range(4)
        ]
    )
    assert addresses == ["race@example.org"] * 4
    count = await storage_backend.run(
        lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts WHERE email = 'race@example.org'")
    )
    assert count == 1


@async_test
async def test_sign_up_counts_against_the_sign_up_limits_before_hashing(
    database_target: DatabaseTarget, storage_backend: AdbapiStorage, clock: Clock
) -> None:
    """
    The flow's sign-up spends the limits of L{Accounts.sign_up} (per client
    address, overall) before any password is hashed, taken address or not;
    a new account's log starts with its creation.
    """
    settings = dataclasses.replace(SETTINGS, signup_per_address=2, signup_window=600)
    hashed: list[str] = []

    class CountingHasher(PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            hashed.append(str(password))
            return super().hash(password, salt=salt)

    hasher = CountingHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts = Accounts(
        database_target.reactor, storage_backend, settings, clock=clock.seconds, hasher=hasher
    )
    outbox = Outbox(MailSettings(), BASE)
    flows = AccountFlows(
        database_target.reactor, storage_backend, accounts, settings, outbox, clock=clock.seconds
    )
    await flows.sign_up("ann@example.org", PASSWORD, "192.0.2.1")
    await flows.sign_up("ann@example.org", PASSWORD, "192.0.2.1")
    with pytest.raises(SignUpThrottled) as refused:
        await flows.sign_up("bob@example.org", PASSWORD, "192.0.2.1")
    assert refused.value.retry_after == 600
    assert len(hashed) == 2
    assert await storage_backend.run(account_by_email, "bob@example.org") is None
    await flows.sign_up("bob@example.org", PASSWORD, "192.0.2.2")
    ann = await account(storage_backend, "ann@example.org")
    logged = await storage_backend.run(events.recent, ann.id)
    assert [e.kind for e in logged] == ["signup_attempt_taken", "signup"]


# The security log.


async def logged(storage: AdbapiStorage, account_id: int) -> list[tuple[str, str, str, str]]:
    """C{account_id}'s security log, oldest first: kind, address, browser, detail."""
    found = await storage.run(events.recent, account_id, 100)
    return [(e.kind, e.client_address, e.browser, e.detail) for e in reversed(found)]


@async_test
async def test_every_flow_writes_the_owners_security_log(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows, clock: Clock
) -> None:
    """
    Each change through a mailed link (and each attempt on a taken address,
    each operator's hand) is a line of the owner's log, with where and
    which browser it came from when a person made it.
    """
    web = SignIn("192.0.2.9", "Firefox on Linux")
    await flows.sign_up("ann@example.org", PASSWORD, "192.0.2.1", how=web)
    ann = await account(storage_backend, "ann@example.org")
    await flows.sign_up("ann@example.org", PASSWORD, "192.0.2.2", how=web)
    (verify,) = [m for m in await mails(storage_backend, ann.email) if "Confirm" in m["Subject"]]
    await flows.verify(token_in(verify, "verify"), ann, web)
    await flows.request_reset("ann@example.org", "192.0.2.1", web)
    (reset,) = [m for m in await mails(storage_backend, ann.email) if "Reset" in m["Subject"]]
    await flows.reset(token_in(reset, "reset"), NEW_PASSWORD, web)
    await flows.change_password(ann, NEW_PASSWORD, PASSWORD, "192.0.2.1", "", web)
    await flows.request_email_change(ann, PASSWORD, "ann@new.example", "192.0.2.1", web)
    (confirm,) = await mails(storage_backend, "ann@new.example")
    await flows.confirm_email_change(token_in(confirm, "email/confirm"), ann, web)
    notice = [m for m in await mails(storage_backend, ann.email) if "address" in m["Subject"]][-1]
    await flows.revert_email(token_in(notice, "email/revert"), web)
    await flows.operator_verify("ann@example.org")
    await flows.operator_reset_link("ann@example.org")
    here = ("192.0.2.9", "Firefox on Linux")
    assert await logged(storage_backend, ann.id) == [
        ("signup", *here, ""),
        ("signup_attempt_taken", *here, ""),
        ("email_verified", *here, "ann@example.org"),
        ("password_reset_requested", *here, ""),
        ("password_reset", *here, ""),
        ("password_changed", *here, ""),
        ("email_change_requested", *here, "ann@new.example"),
        ("email_changed", *here, "ann@example.org -> ann@new.example"),
        ("email_change_reverted", *here, "ann@example.org"),
        ("email_verified", "", "", "ann@example.org, by an operator"),
        ("reset_link_by_operator", "", "", ""),
    ]


@async_test
async def test_a_change_that_fails_logs_nothing(
    storage_backend: AdbapiStorage, accounts: Accounts, flows: AccountFlows
) -> None:
    """A refused change (a wrong current password, a used link) leaves the log as it was."""
    ann = await accounts.sign_up("ann@example.org", PASSWORD, verified=True)
    before = await logged(storage_backend, ann.id)
    with pytest.raises(AccountError):
        await flows.change_password(ann, "not my password", NEW_PASSWORD, "192.0.2.1", "")
    await flows.request_reset("ann@example.org", "192.0.2.1")
    (reset,) = await mails(storage_backend, ann.email)
    await flows.reset(token_in(reset, "reset"), NEW_PASSWORD)
    after_reset = await logged(storage_backend, ann.id)
    with pytest.raises(tokens.TokenRefused):
        await flows.reset(token_in(reset, "reset"), PASSWORD)
    assert await logged(storage_backend, ann.id) == after_reset
    kinds = [k for k, *_ in after_reset[len(before) :]]
    assert kinds == ["signin_failed", "password_reset_requested", "password_reset"]

"""
Security keys and passkeys on both storage backends, on an injected
clock, answered by a software authenticator (tests/unit/mfa/authenticator.py):
registering, a passkey sign-in with no password, a key as the second step;
and every answer that must be refused (a challenge expired, reused or
another session's; another origin or RP ID; a counter going back; another
account's key; no user verification; malformed input), each refused with
its message, nothing changed but the challenge spent.
"""

from __future__ import annotations

import json

import pytest

from clickpass.accounts import events
from clickpass.mfa import ceremony, keys
from clickpass.mfa.ceremony import CeremonyRefused, RelyingParty
from clickpass.mfa.keys import CONFIRM, PASSKEY, SECOND_STEP, SecurityKeys, Where
from clickpass.mfa.service import SecondFactors
from clickpass.mfa.settings import MfaSettings
from clickpass.storage.sql import AdbapiStorage, Transaction
from tests.support.deferreds import async_test
from tests.unit.mfa.authenticator import SoftAuthenticator, b64url
from tests.unit.mfa.test_service import MASTER, NOW, FakeClock

RP = RelyingParty.from_base_url("https://login.example.com/", "Clickpass")
SESSION = "session-token-of-the-browser"
HERE = Where("192.0.2.1", "Firefox on Linux")
ADDR = HERE.client_address


def _add(tx: Transaction, uid: str, email: str) -> int:
    tx.execute(
        "INSERT INTO accounts (uid, email, password_hash, created) VALUES (?, ?, ?, ?)",
        uid,
        email,
        "x",
        NOW,
    )
    return int(tx.scalar("SELECT id FROM accounts WHERE uid = ?", uid))


async def _events(storage: AdbapiStorage, account_id: int) -> list[str]:
    kinds: list[str] = await storage.run(lambda tx: [e.kind for e in events.recent(tx, account_id)])
    return kinds


async def _registered(
    storage: AdbapiStorage, clock: FakeClock, passkey: bool = True
) -> tuple[SecurityKeys, int, SoftAuthenticator]:
    security_keys = SecurityKeys(storage, MfaSettings(), RP, MASTER, clock=clock)
    account_id = await storage.run(_add, "uid-k", "kim@example.com")
    device = SoftAuthenticator(RP.origin, RP.rp_id)
    options = await security_keys.registration_options(
        account_id, "kim@example.com", SESSION, passkey, ADDR
    )
    await security_keys.register(
        account_id, SESSION, device.create(options), "Blue key", passkey, HERE
    )
    return security_keys, account_id, device


def test_relying_party_from_the_public_url() -> None:
    """The RP ID is the public URL's host; the origin is exactly what a browser says."""
    assert RP.rp_id == "login.example.com" and RP.origin == "https://login.example.com"
    local = RelyingParty.from_base_url("http://LocalHost:8080/", "C")
    assert (local.rp_id, local.origin) == ("localhost", "http://localhost:8080")
    assert RelyingParty.from_base_url("https://a.example:443/", "C").origin == "https://a.example"
    with pytest.raises(ValueError):
        RelyingParty.from_base_url("ftp://a.example/", "C")


def test_counter_rule() -> None:
    """A counter must go up; an authenticator that keeps none (both 0) passes."""
    assert ceremony.counter_ok(0, 0) and ceremony.counter_ok(0, 1) and ceremony.counter_ok(4, 5)
    assert not ceremony.counter_ok(5, 5) and not ceremony.counter_ok(5, 2)
    assert not ceremony.counter_ok(5, 0)


@async_test
async def test_register_then_sign_in_with_a_passkey(storage_backend: AdbapiStorage) -> None:
    """
    A registered passkey is stored with its name and transports (unknown
    ones dropped) and logged; it then signs its owner in with no password,
    with user verification; its counter and last use are kept.
    """
    clock = FakeClock()
    security_keys, account_id, device = await _registered(storage_backend, clock)
    [stored] = await security_keys.credentials(account_id)
    assert stored.name == "Blue key" and stored.passkey and stored.transports == ("usb",)
    assert stored.sign_count == 1 and stored.last_used == 0
    assert await SecondFactors(storage_backend, MfaSettings(), MASTER, None).has_factor(account_id)
    assert "passkey_added" in await _events(storage_backend, account_id)

    clock.now += 5
    options = await security_keys.assertion_options(PASSKEY, "browser-cookie", None, ADDR)
    assert options["userVerification"] == "required" and options["allowCredentials"] == []
    used = await security_keys.check(PASSKEY, "browser-cookie", device.get(options), None, HERE)
    assert used.account_id == account_id and used.user_verified
    [after] = await security_keys.credentials(account_id)
    assert after.sign_count == 2 and after.last_used == NOW + 5


@async_test
async def test_a_challenge_is_good_once(storage_backend: AdbapiStorage) -> None:
    """The same answer twice: the second is refused, the challenge being spent."""
    security_keys, account_id, device = await _registered(storage_backend, FakeClock())
    options = await security_keys.assertion_options(SECOND_STEP, "step", account_id, ADDR)
    answer = device.get(options)
    await security_keys.check(SECOND_STEP, "step", answer, account_id, HERE)
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.check(SECOND_STEP, "step", answer, account_id, HERE)
    assert refused.value.message == keys.EXPIRED


@async_test
async def test_a_challenge_expires(storage_backend: AdbapiStorage) -> None:
    """An answer after [mfa] webauthn_timeout is refused; so is a spent registration."""
    clock = FakeClock()
    security_keys, account_id, device = await _registered(storage_backend, clock)
    options = await security_keys.assertion_options(SECOND_STEP, "step", account_id, ADDR)
    clock.now += MfaSettings().webauthn_timeout
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.check(SECOND_STEP, "step", device.get(options), account_id, HERE)
    assert refused.value.message == keys.EXPIRED
    [stored] = await security_keys.credentials(account_id)
    assert stored.last_used == 0


@async_test
async def test_a_challenge_is_bound_to_its_session_and_purpose(
    storage_backend: AdbapiStorage,
) -> None:
    """
    An answer to a challenge given to another browser session, or for
    another purpose, is refused (and spends it).
    """
    security_keys, account_id, device = await _registered(storage_backend, FakeClock())
    options = await security_keys.assertion_options(SECOND_STEP, "step", account_id, ADDR)
    with pytest.raises(CeremonyRefused):
        await security_keys.check(SECOND_STEP, "other", device.get(options), account_id, HERE)
    options = await security_keys.assertion_options(SECOND_STEP, "step", account_id, ADDR)
    with pytest.raises(CeremonyRefused):
        await security_keys.check(keys.CONFIRM, "step", device.get(options), account_id, HERE)
    # A registration challenge of another session adds nothing.
    options = await security_keys.registration_options(account_id, "k@x", SESSION, True, ADDR)
    with pytest.raises(CeremonyRefused):
        await security_keys.register(
            account_id, "other", device.create(options), "Second", True, HERE
        )
    assert len(await security_keys.credentials(account_id)) == 1


@async_test
async def test_another_origin_or_rp_id_is_refused(storage_backend: AdbapiStorage) -> None:
    """
    A phishing page's origin, or a credential made for another RP ID, is
    refused at registration and at sign-in; nothing is added or changed.
    """
    security_keys, account_id, device = await _registered(storage_backend, FakeClock())
    for origin, rp_id in (
        ("https://login.example.com.evil.example", RP.rp_id),
        ("http://login.example.com", RP.rp_id),
        ("https://login.example.com:8443", RP.rp_id),
        (RP.origin, "evil.example"),
    ):
        device.origin, device.rp_id = origin, rp_id
        options = await security_keys.assertion_options(SECOND_STEP, "s", account_id, ADDR)
        with pytest.raises(CeremonyRefused) as refused:
            await security_keys.check(SECOND_STEP, "s", device.get(options), account_id, HERE)
        assert refused.value.message == ceremony.NOT_VERIFIED
        options = await security_keys.registration_options(account_id, "k@x", SESSION, False, ADDR)
        with pytest.raises(CeremonyRefused):
            await security_keys.register(
                account_id, SESSION, device.create(options), "Other", False, HERE
            )
    assert len(await security_keys.credentials(account_id)) == 1
    # Each refusal is a security event in the person's log.
    assert (await _events(storage_backend, account_id)).count("passkey_refused") == 8


@async_test
async def test_a_counter_going_back_is_refused_and_logged(
    storage_backend: AdbapiStorage,
) -> None:
    """
    A copy of a key (its counter behind the one last seen) is refused with
    its own message, logged in the person's security log; the stored
    counter stays.
    """
    security_keys, account_id, device = await _registered(storage_backend, FakeClock())
    options = await security_keys.assertion_options(SECOND_STEP, "s", account_id, ADDR)
    await security_keys.check(SECOND_STEP, "s", device.get(options), account_id, HERE)
    device.keys[0].counter = 0  # the clone's counter: behind
    options = await security_keys.assertion_options(SECOND_STEP, "s", account_id, ADDR)
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.check(SECOND_STEP, "s", device.get(options), account_id, HERE)
    assert refused.value.message == keys.COPIED
    assert "passkey_refused" in await _events(storage_backend, account_id)
    [stored] = await security_keys.credentials(account_id)
    assert stored.sign_count == 2


@async_test
async def test_an_authenticator_without_a_counter_is_accepted(
    storage_backend: AdbapiStorage,
) -> None:
    """A key that keeps no counter (always 0) signs in again and again."""
    clock = FakeClock()
    security_keys = SecurityKeys(storage_backend, MfaSettings(), RP, MASTER, clock=clock)
    account_id = await storage_backend.run(_add, "uid-z", "zed@example.com")
    device = SoftAuthenticator(RP.origin, RP.rp_id, counts=False)
    options = await security_keys.registration_options(account_id, "z", SESSION, True, ADDR)
    await security_keys.register(account_id, SESSION, device.create(options), "Z", True, HERE)
    for _ in range(2):
        options = await security_keys.assertion_options(PASSKEY, "c", None, ADDR)
        used = await security_keys.check(PASSKEY, "c", device.get(options), None, HERE)
        assert used.account_id == account_id


@async_test
async def test_another_accounts_key_is_refused(storage_backend: AdbapiStorage) -> None:
    """At the second step of one account, the key of another is refused."""
    security_keys, _, device = await _registered(storage_backend, FakeClock())
    other = await storage_backend.run(_add, "uid-o", "olga@example.com")
    other_device = SoftAuthenticator(RP.origin, RP.rp_id)
    options = await security_keys.registration_options(other, "o", SESSION, False, ADDR)
    await security_keys.register(other, SESSION, other_device.create(options), "O", False, HERE)
    options = await security_keys.assertion_options(SECOND_STEP, "s", other, ADDR)
    # The owner's device answers the other account's challenge with its own key.
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.check(
            SECOND_STEP, "s", device.get(options, device.keys[0]), other, HERE
        )
    assert refused.value.message == keys.UNKNOWN_KEY


@async_test
async def test_passwordless_needs_user_verification_and_the_users_handle(
    storage_backend: AdbapiStorage,
) -> None:
    """
    A passkey sign-in with no password is refused when the authenticator
    did not verify the person, or the user handle is not the account's.
    """
    security_keys, account_id, device = await _registered(storage_backend, FakeClock())
    device.user_verified = False
    options = await security_keys.assertion_options(PASSKEY, "c", None, ADDR)
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.check(PASSKEY, "c", device.get(options), None, HERE)
    assert refused.value.message == ceremony.NOT_VERIFIED
    device.user_verified = True
    device.keys[0].user_handle = security_keys.user_handle(account_id + 1)
    options = await security_keys.assertion_options(PASSKEY, "c", None, ADDR)
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.check(PASSKEY, "c", device.get(options), None, HERE)
    assert refused.value.message == keys.UNKNOWN_KEY
    # A security key as a second factor needs no user verification.
    device.user_verified = False
    options = await security_keys.assertion_options(SECOND_STEP, "s", account_id, ADDR)
    await security_keys.check(SECOND_STEP, "s", device.get(options), account_id, HERE)


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "not json",
        "[1, 2]",
        json.dumps({"id": "x"}),
        json.dumps({"id": "!!", "rawId": "!!", "type": "public-key", "response": {}}),
        "x" * (ceremony.MAX_ANSWER + 1),
    ],
)
def test_malformed_answers_are_refused_as_unreadable(answer: str) -> None:
    """Anything that is no WebAuthn answer is refused with one message, never a crash."""
    for read in (ceremony.read_assertion, ceremony.read_registration):
        with pytest.raises(CeremonyRefused) as refused:
            read(answer)
        assert refused.value.message == ceremony.UNREADABLE


@async_test
async def test_malformed_cbor_and_client_data_are_refused(storage_backend: AdbapiStorage) -> None:
    """
    An attestation object that is no CBOR, or client data that is no JSON,
    is refused with a message; nothing is added.
    """
    clock = FakeClock()
    security_keys = SecurityKeys(storage_backend, MfaSettings(), RP, MASTER, clock=clock)
    account_id = await storage_backend.run(_add, "uid-m", "mo@example.com")
    device = SoftAuthenticator(RP.origin, RP.rp_id)
    options = await security_keys.registration_options(account_id, "m", SESSION, True, ADDR)
    good = json.loads(device.create(options))
    bad_cbor = dict(good, response=dict(good["response"], attestationObject=b64url(b"\xff\x00")))
    with pytest.raises(CeremonyRefused):
        await security_keys.register(account_id, SESSION, json.dumps(bad_cbor), "M", True, HERE)
    bad_client = dict(good, response=dict(good["response"], clientDataJSON=b64url(b"{nope")))
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.register(account_id, SESSION, json.dumps(bad_client), "M", True, HERE)
    assert refused.value.message == ceremony.UNREADABLE
    assert await security_keys.credentials(account_id) == []
    assert (await _events(storage_backend, account_id)).count("passkey_refused") == 2


@async_test
async def test_remove_a_key(storage_backend: AdbapiStorage) -> None:
    """
    A key is removed by its reference, by its owner only, and logged; with
    it goes the last factor, and so the recovery codes.
    """
    clock = FakeClock()
    security_keys, account_id, _ = await _registered(storage_backend, clock)
    factors = SecondFactors(storage_backend, MfaSettings(), MASTER, None, clock=clock)
    await factors.new_recovery_codes(account_id)
    [stored] = await security_keys.credentials(account_id)
    assert await security_keys.remove(account_id + 1, stored.ref, HERE) is None
    assert await security_keys.remove(account_id, "not-a-ref", HERE) is None
    assert await security_keys.remove(account_id, stored.ref, HERE) == "Blue key"
    assert not await factors.has_factor(account_id)
    assert (await factors.status(account_id)).recovery_codes_left == 0
    assert "passkey_removed" in await _events(storage_backend, account_id)


@async_test
async def test_a_bad_name_is_refused(storage_backend: AdbapiStorage) -> None:
    """A key needs a printable name of 1 to 64 characters; nothing is spent for a bad one."""
    security_keys, account_id, device = await _registered(storage_backend, FakeClock())
    options = await security_keys.registration_options(account_id, "k", SESSION, True, ADDR)
    answer = device.create(options)
    for name in ("", "   ", "x" * 65, "bad\x00name"):
        with pytest.raises(CeremonyRefused):
            await security_keys.register(account_id, SESSION, answer, name, True, HERE)
    await security_keys.register(account_id, SESSION, answer, "  Second   key ", True, HERE)
    names = [c.name for c in await security_keys.credentials(account_id)]
    assert sorted(names) == ["Blue key", "Second key"]


@async_test
async def test_operators_list_and_reset_keys(storage_backend: AdbapiStorage) -> None:
    """
    What C{user mfa} lists names each key; C{user mfa-reset} removes them
    with every other factor.
    """
    clock = FakeClock()
    security_keys, account_id, _ = await _registered(storage_backend, clock)
    factors = SecondFactors(storage_backend, MfaSettings(), MASTER, None, clock=clock)
    described = await factors.describe("kim@example.com")
    assert described is not None
    [key] = described["keys"]
    assert key["name"] == "Blue key" and key["passkey"] and key["last_used"] == 0
    assert await factors.operator_reset("kim@example.com") is True
    assert await security_keys.credentials(account_id) == []
    assert not await factors.has_factor(account_id)


def test_creation_options_for_a_passkey_and_a_security_key() -> None:
    """
    A passkey is asked as a discoverable credential with user verification;
    a security key as neither; both for this RP ID, with the person's
    opaque handle, excluding the keys they have.
    """
    handle = b"h" * 32
    passkey = ceremony.registration_options(
        RP,
        user_handle=handle,
        user_name="kim@example.com",
        challenge=b"c" * 32,
        existing=[b"old-key"],
        passkey=True,
        timeout_ms=300_000,
    )
    assert passkey["rp"] == {"id": "login.example.com", "name": "Clickpass"}
    assert passkey["user"]["id"] == b64url(handle)
    assert passkey["challenge"] == b64url(b"c" * 32)
    assert passkey["authenticatorSelection"]["residentKey"] == "required"
    assert passkey["authenticatorSelection"]["userVerification"] == "required"
    assert [c["id"] for c in passkey["excludeCredentials"]] == [b64url(b"old-key")]
    key = ceremony.registration_options(
        RP,
        user_handle=handle,
        user_name="kim@example.com",
        challenge=b"c" * 32,
        existing=[],
        passkey=False,
        timeout_ms=300_000,
    )
    assert key["authenticatorSelection"]["residentKey"] == "discouraged"
    assert key["authenticatorSelection"]["userVerification"] == "discouraged"


@async_test
async def test_a_synced_passkey_is_told_apart_from_a_device_bound_key(
    storage_backend: AdbapiStorage,
) -> None:
    """
    A passkey whose authenticator sets the backup flags (BE, BS: a synced
    passkey) is stored as backup eligible and backed up, and its use says
    synced; a key without them is device-bound, its use not synced; only
    the second counts as a key bound to one device.
    """
    clock = FakeClock()
    security_keys = SecurityKeys(storage_backend, MfaSettings(), RP, MASTER, clock=clock)
    factors = SecondFactors(storage_backend, MfaSettings(), MASTER, None)
    account_id = await storage_backend.run(_add, "uid-s", "sam@example.com")
    phone = SoftAuthenticator(RP.origin, RP.rp_id, synced=True)
    options = await security_keys.registration_options(
        account_id, "sam@example.com", SESSION, True, ADDR
    )
    await security_keys.register(account_id, SESSION, phone.create(options), "Phone", True, HERE)
    [stored] = await security_keys.credentials(account_id)
    assert stored.backup_eligible and stored.backed_up
    assert not await factors.has_device_keys(account_id)
    options = await security_keys.assertion_options(PASSKEY, "browser-cookie", None, ADDR)
    used = await security_keys.check(PASSKEY, "browser-cookie", phone.get(options), None, HERE)
    assert used.account_id == account_id and used.synced

    key = SoftAuthenticator(RP.origin, RP.rp_id)
    options = await security_keys.registration_options(
        account_id, "sam@example.com", SESSION, False, ADDR
    )
    await security_keys.register(account_id, SESSION, key.create(options), "Blue", False, HERE)
    assert await factors.has_device_keys(account_id)
    options = await security_keys.assertion_options(SECOND_STEP, "step", account_id, ADDR)
    used = await security_keys.check(
        SECOND_STEP, "step", key.get(options, key.keys[0]), account_id, HERE
    )
    assert not used.synced


@async_test
async def test_a_step_needing_a_device_bound_key_offers_and_takes_only_those(
    storage_backend: AdbapiStorage,
) -> None:
    """
    A person with a synced passkey and a key bound to one device: a step-up
    that needs a device-bound key (PAPE multi-factor-physical) lists only
    the device-bound key in allowCredentials, and an answer from the synced
    passkey is refused with a clear message, its use not recorded and no
    security event logged; the device-bound key is taken. A passwordless
    prompt for such a step refuses the synced passkey too. With no
    device-bound key at all, the options naming the person's keys are
    refused with the same message, and a passwordless prompt takes the
    synced passkey (nothing better to give).
    """
    clock = FakeClock()
    security_keys = SecurityKeys(storage_backend, MfaSettings(), RP, MASTER, clock=clock)
    account_id = await storage_backend.run(_add, "uid-d", "dee@example.com")
    phone = SoftAuthenticator(RP.origin, RP.rp_id, synced=True)
    options = await security_keys.registration_options(
        account_id, "dee@example.com", SESSION, True, ADDR
    )
    await security_keys.register(account_id, SESSION, phone.create(options), "Phone", True, HERE)
    with pytest.raises(CeremonyRefused) as none_bound:
        await security_keys.assertion_options(CONFIRM, SESSION, account_id, ADDR, device_bound=True)
    assert none_bound.value.message == keys.DEVICE_BOUND_NEEDED
    # Having no device-bound key, they sign in with the synced one still.
    options = await security_keys.assertion_options(
        PASSKEY, "cookie", None, ADDR, device_bound=True
    )
    used = await security_keys.check(
        PASSKEY, "cookie", phone.get(options), None, HERE, device_bound=True
    )
    assert used.synced
    key = SoftAuthenticator(RP.origin, RP.rp_id)
    options = await security_keys.registration_options(
        account_id, "dee@example.com", SESSION, False, ADDR
    )
    await security_keys.register(account_id, SESSION, key.create(options), "Blue", False, HERE)
    [phone_id], [key_id] = (
        [k.credential_id for k in phone.keys],
        [k.credential_id for k in key.keys],
    )

    both = await security_keys.assertion_options(CONFIRM, SESSION, account_id, ADDR)
    assert {c["id"] for c in both["allowCredentials"]} == {b64url(phone_id), b64url(key_id)}
    options = await security_keys.assertion_options(
        CONFIRM, SESSION, account_id, ADDR, device_bound=True
    )
    assert [c["id"] for c in options["allowCredentials"]] == [b64url(key_id)]

    before = {c.name: c.sign_count for c in await security_keys.credentials(account_id)}
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.check(
            CONFIRM, SESSION, phone.get(options, phone.keys[0]), account_id, HERE,
            device_bound=True,
        )  # fmt: skip
    assert refused.value.message == keys.DEVICE_BOUND_NEEDED
    assert "\n" not in refused.value.message
    after = {c.name: c.sign_count for c in await security_keys.credentials(account_id)}
    assert after == before
    assert "passkey_refused" not in await _events(storage_backend, account_id)

    options = await security_keys.assertion_options(
        CONFIRM, SESSION, account_id, ADDR, device_bound=True
    )
    used = await security_keys.check(
        CONFIRM, SESSION, key.get(options), account_id, HERE, device_bound=True
    )
    assert used.name == "Blue" and not used.synced

    options = await security_keys.assertion_options(
        PASSKEY, "cookie", None, ADDR, device_bound=True
    )
    with pytest.raises(CeremonyRefused) as passwordless:
        await security_keys.check(
            PASSKEY, "cookie", phone.get(options), None, HERE, device_bound=True
        )
    assert passwordless.value.message == keys.DEVICE_BOUND_NEEDED


async def _challenges(storage: AdbapiStorage) -> int:
    count: int = await storage.run(
        lambda tx: int(tx.scalar("SELECT COUNT(*) FROM mfa_webauthn_challenges"))
    )
    return count


@async_test
async def test_ten_thousand_page_views_leave_a_bounded_number_of_challenges(
    storage_backend: AdbapiStorage,
) -> None:
    """
    An anonymous client shows the sign-in page (whose script asks for a
    passkey challenge) 10,000 times, with no cookie kept, so each view is
    a new browser session: the address's limit stops it, each refusal one
    clear sentence, and the table holds no more than the limit; in one
    session, views past the limit per session replace its oldest
    challenge. Past the timeout, housekeeping removes them all.
    """
    clock = FakeClock()
    settings = MfaSettings(webauthn_challenges_per_address=200)
    security_keys = SecurityKeys(storage_backend, settings, RP, MASTER, clock=clock)
    refused = 0
    for view in range(10_000):
        clock.now += 0.001
        try:
            await security_keys.assertion_options(PASSKEY, f"cookie-{view}", None, "198.51.100.7")
        except keys.ChallengesThrottled as e:
            refused += 1
            assert e.message.startswith("Too many passkey requests from your network. Wait ")
            assert 0 < e.retry_after <= settings.webauthn_timeout
    assert refused == 10_000 - 200
    assert await _challenges(storage_backend) == 200

    # Another address, one session (its cookie kept): the session's newest only.
    for _view in range(50):
        clock.now += 0.001
        await security_keys.assertion_options(PASSKEY, "one-cookie", None, "203.0.113.9")
    assert await _challenges(storage_backend) == 200 + keys.CHALLENGES_PER_SESSION

    clock.now += settings.webauthn_timeout
    factors = SecondFactors(storage_backend, settings, MASTER, None)
    assert await factors.expire(int(clock.now)) == 200 + keys.CHALLENGES_PER_SESSION
    assert await _challenges(storage_backend) == 0
    # The window passed: the address may ask again.
    await security_keys.assertion_options(PASSKEY, "cookie-again", None, "198.51.100.7")


@async_test
async def test_a_replaced_challenge_is_refused_with_a_clear_message(
    storage_backend: AdbapiStorage,
) -> None:
    """
    A session that asked for more challenges than it may hold (pages shown
    again, other tabs): an answer to its oldest, replaced, is refused as
    expired or replaced, and logged; its newest still works.
    """
    clock = FakeClock()
    security_keys, account_id, device = await _registered(storage_backend, clock)
    first = await security_keys.assertion_options(SECOND_STEP, "step", account_id, ADDR)
    later = []
    for _ in range(keys.CHALLENGES_PER_SESSION):
        clock.now += 0.01
        later.append(await security_keys.assertion_options(SECOND_STEP, "step", account_id, ADDR))
    with pytest.raises(CeremonyRefused) as refused:
        await security_keys.check(SECOND_STEP, "step", device.get(first), account_id, HERE)
    assert refused.value.message == keys.EXPIRED
    assert "replaced by a newer one" in keys.EXPIRED
    assert "passkey_refused" in await _events(storage_backend, account_id)
    used = await security_keys.check(SECOND_STEP, "step", device.get(later[-1]), account_id, HERE)
    assert used.account_id == account_id

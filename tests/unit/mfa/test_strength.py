"""What partners are told of a sign-in (PAPE, OpenID Connect), and when to step up."""

from __future__ import annotations

from openid.extensions.draft import pape5 as pape

from clickpass.mfa.store import SessionAuth
from clickpass.mfa.strength import ACR_NONE, assess, needs_step_up, rfc3339

NOW = 1_700_000_000
MF = frozenset({pape.AUTH_MULTI_FACTOR})


def auth(*methods: str, password_time: int = NOW - 600, factor_time: int = 0) -> SessionAuth:
    return SessionAuth(1, frozenset(methods), password_time, factor_time)


def test_password_and_code_is_multi_factor_at_the_codes_time() -> None:
    """Password then app code: multi-factor, auth_time the code's, amr pwd otp mfa."""
    context = assess(auth("pwd", "otp", factor_time=NOW - 5))
    assert context.policies == MF
    assert context.auth_time == NOW - 5
    assert context.amr == ("pwd", "otp", "mfa")
    assert context.acr == pape.AUTH_MULTI_FACTOR


def test_recovery_code_counts_as_a_second_factor() -> None:
    """A recovery code is a look-up secret the person holds: multi-factor too."""
    assert assess(auth("pwd", "rc", factor_time=NOW)).policies == MF


def test_trusted_browser_and_password_alone_claim_nothing() -> None:
    """A trusted browser skipped the code: no policy claimed; nor for a password alone."""
    for context in (assess(auth("pwd", "trusted")), assess(auth("pwd"))):
        assert context.policies == frozenset()
        assert context.auth_time == NOW - 600
        assert context.amr == ("pwd",)
        assert context.acr == ACR_NONE


def test_step_up_for_multi_factor_only_when_there_is_a_factor() -> None:
    """Multi-factor asked and not met: step up if the person has a factor, else answer."""
    weak = assess(auth("pwd", "trusted"))
    assert needs_step_up(MF, None, True, weak, NOW)
    assert not needs_step_up(MF, None, False, weak, NOW)
    strong = assess(auth("pwd", "otp", factor_time=NOW - 900))
    assert not needs_step_up(MF, None, True, strong, NOW)
    # Phishing-resistant cannot be met by any factor here: no step-up for it.
    assert not needs_step_up(frozenset({pape.AUTH_PHISHING_RESISTANT}), None, True, weak, NOW)


def test_step_up_for_max_auth_age() -> None:
    """Older than max_auth_age: step up; 0 asks for no fresher than a moment ago."""
    context = assess(auth("pwd", password_time=NOW - 600))
    assert needs_step_up(frozenset(), 300, False, context, NOW)
    assert not needs_step_up(frozenset(), 3600, False, context, NOW)
    just_now = assess(auth("pwd", password_time=NOW - 3))
    assert not needs_step_up(frozenset(), 0, False, just_now, NOW)
    assert needs_step_up(frozenset(), 0, False, context, NOW)


def test_auth_time_format() -> None:
    """auth_time as PAPE wants it: RFC 3339, UTC, seconds."""
    assert rfc3339(NOW) == "2023-11-14T22:13:20Z"


def test_upstream_sign_in_and_code_is_multi_factor_without_a_made_up_amr() -> None:
    """
    A sign-in through an upstream provider then a code: multi-factor;
    "fed" (no RFC 8176 value) is never put in the amr, nor claimed as pwd.
    """
    context = assess(auth("fed", "otp", factor_time=NOW))
    assert context.policies == MF and context.amr == ("otp", "mfa")
    alone = assess(auth("fed"))
    assert alone.policies == frozenset() and alone.amr == ()


KEY_POLICIES = frozenset(
    {pape.AUTH_MULTI_FACTOR, pape.AUTH_MULTI_FACTOR_PHYSICAL, pape.AUTH_PHISHING_RESISTANT}
)


def test_a_security_key_after_the_password_meets_every_policy() -> None:
    """Password then a security key: multi-factor, physical and phishing-resistant."""
    context = assess(auth("pwd", "hwk", factor_time=NOW - 5))
    assert context.policies == KEY_POLICIES
    assert context.auth_time == NOW - 5
    assert context.amr == ("pwd", "hwk", "mfa")
    assert context.acr == pape.AUTH_MULTI_FACTOR


def test_a_passkey_with_user_verification_meets_every_policy() -> None:
    """
    A passkey that verified the person, with no password: multi-factor (a
    device and a PIN or biometric), physical and phishing-resistant; "uv"
    is never put in the amr.
    """
    context = assess(auth("hwk", "uv", password_time=0, factor_time=NOW))
    assert context.policies == KEY_POLICIES
    assert context.auth_time == NOW and context.amr == ("hwk", "mfa")
    # A key alone that verified no one is one factor: nothing claimed.
    alone = assess(auth("hwk", password_time=0, factor_time=NOW))
    assert alone.policies == frozenset()


def test_an_app_code_never_meets_the_key_policies() -> None:
    """Password then an app code: multi-factor only."""
    assert assess(auth("pwd", "otp", factor_time=NOW)).policies == MF


def test_step_up_for_phishing_resistant_only_with_a_key() -> None:
    """
    Phishing-resistant asked of an app-code session: step up when the
    person has a key; answer at once when they have none; no step-up once a
    key was used.
    """
    wanted = frozenset({pape.AUTH_PHISHING_RESISTANT})
    app = assess(auth("pwd", "otp", factor_time=NOW))
    assert needs_step_up(wanted, None, True, app, NOW, has_key=True)
    assert not needs_step_up(wanted, None, True, app, NOW, has_key=False)
    keyed = assess(auth("pwd", "hwk", factor_time=NOW))
    assert not needs_step_up(wanted, None, True, keyed, NOW, has_key=True)


PHISHING_RESISTANT_MF = frozenset({pape.AUTH_MULTI_FACTOR, pape.AUTH_PHISHING_RESISTANT})


def test_a_synced_passkey_is_phishing_resistant_but_not_physical() -> None:
    """
    A synced passkey ("swk": its authenticator set the backup flags) that
    verified the person: multi-factor and phishing-resistant (it signs for
    this origin only), never multi-factor-physical (it lives in a cloud
    account, on no one device the person holds); the amr says swk, not hwk.
    After a password the same.
    """
    context = assess(auth("swk", "uv", password_time=0, factor_time=NOW))
    assert context.policies == PHISHING_RESISTANT_MF
    assert context.amr == ("swk", "mfa")
    assert context.acr == pape.AUTH_MULTI_FACTOR
    after_password = assess(auth("pwd", "swk", factor_time=NOW))
    assert after_password.policies == PHISHING_RESISTANT_MF
    assert after_password.amr == ("pwd", "swk", "mfa")
    # A device-bound key used in the same session too: physical then.
    both = assess(auth("pwd", "swk", "hwk", factor_time=NOW))
    assert both.policies == KEY_POLICIES


def test_step_up_for_physical_only_with_a_key_bound_to_a_device() -> None:
    """
    Multi-factor-physical asked of a synced passkey's session: step up when
    the person also has a device-bound key; answer at once (without the
    policy) when all their keys are synced, rather than send them round for
    ever; no step-up once a device-bound key was used.
    """
    wanted = frozenset({pape.AUTH_MULTI_FACTOR_PHYSICAL})
    synced = assess(auth("swk", "uv", password_time=0, factor_time=NOW))
    assert needs_step_up(wanted, None, True, synced, NOW, has_key=True, has_device_key=True)
    assert not needs_step_up(wanted, None, True, synced, NOW, has_key=True, has_device_key=False)
    keyed = assess(auth("pwd", "hwk", factor_time=NOW))
    assert not needs_step_up(wanted, None, True, keyed, NOW, has_key=True, has_device_key=True)
    # Phishing-resistant is met by the synced passkey: no step-up for it.
    resistant = frozenset({pape.AUTH_PHISHING_RESISTANT})
    assert not needs_step_up(resistant, None, True, synced, NOW, has_key=True)

"""What the provider releases through SReg/AX, from the account and upstream claims."""

from __future__ import annotations

from clickpass.accounts.service import Account
from clickpass.openid.extensions import release, values_for


def _account(email: str = "ann@example.com", display_name: str = "") -> Account:
    return Account(1, "u" * 32, email, display_name, 0, False)


def test_account_values_without_upstream_claims() -> None:
    """Without claims, the account's email and display name are what is held."""
    assert values_for(_account(display_name="Ann Lee")) == {
        "email": "ann@example.com",
        "fullname": "Ann Lee",
        "nickname": "Ann Lee",
    }
    assert values_for(_account()) == {"email": "ann@example.com"}


def test_upstream_name_and_nickname_win_over_the_account() -> None:
    """The provider's name and preferred_username are released instead of the display name."""
    claims = {"name": "Ann  Provider\nLee", "preferred_username": "annie", "email_verified": True}
    held = values_for(_account(display_name="Old Name"), claims)
    assert held["fullname"] == "Ann Provider Lee"
    assert held["nickname"] == "annie"
    assert held["email"] == "ann@example.com"


def test_given_and_family_name_make_a_full_name() -> None:
    """A provider with no name claim but given and family names gives both as the full name."""
    held = values_for(_account(), {"given_name": "Ann", "family_name": "Lee"})
    assert held["fullname"] == "Ann Lee"
    assert held["nickname"] == "Ann"


def test_placeholder_email_is_never_released() -> None:
    """An account whose provider gave no verified email releases no email at all."""
    account = _account(email="abc@upstream.invalid", display_name="Bo")
    assert "email" not in values_for(account, {"email_verified": False, "name": "Bo"})
    assert release(frozenset({"email", "fullname"}), account, {"name": "Bo B"}) == {
        "fullname": "Bo B"
    }


def test_unverified_upstream_email_is_not_used() -> None:
    """An upstream email marked unverified never fills in a missing email."""
    account = _account(email="abc@upstream.invalid")
    claims = {"email": "bo@example.com", "email_verified": False}
    assert "email" not in values_for(account, claims)
    verified = {"email": "bo@example.com", "email_verified": True}
    assert values_for(account, verified)["email"] == "bo@example.com"


def test_non_string_claims_are_ignored() -> None:
    """Claims of the wrong type (a provider's mistake) are skipped, not released."""
    held = values_for(_account(display_name="Ann"), {"name": ["x"], "nickname": 7})
    assert held["fullname"] == "Ann" and held["nickname"] == "Ann"

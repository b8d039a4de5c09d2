"""The partner guide's migration example: OpenID 2.0 accounts found again by openid2_id."""

from __future__ import annotations

from examples.oidc_migration import Account, Accounts

IDENTIFIER = "https://clickpass.example/id/abcdefghijklmnopqrstuvwxyz234567"


def test_an_openid2_account_is_found_by_openid2_id_then_by_subject() -> None:
    accounts = Accounts([Account("ann", openid2_identifier=IDENTIFIER)])
    first, how = accounts.sign_in({"sub": "s1", "openid2_id": IDENTIFIER})
    assert (first.name, how) == ("ann", "migrated")
    again, how = accounts.sign_in({"sub": "s1"})
    assert (again.name, how) == ("ann", "subject")


def test_a_person_without_an_openid2_account_is_new() -> None:
    accounts = Accounts([Account("ann", openid2_identifier=IDENTIFIER)])
    account, how = accounts.sign_in({"sub": "s2"})
    assert how == "new" and account.oidc_subject == "s2"


def test_an_account_already_linked_is_not_taken_over() -> None:
    """An openid2_id whose account already has another subject does not move it."""
    accounts = Accounts([Account("ann", openid2_identifier=IDENTIFIER, oidc_subject="s1")])
    _account, how = accounts.sign_in({"sub": "s3", "openid2_id": IDENTIFIER})
    assert how == "new"

"""What the provider releases through SReg/AX, from the account and upstream claims."""

from __future__ import annotations

from typing import Any

import pytest
from openid.server.server import CheckIDRequest, Server
from openid.store.memstore import MemoryStore

from clickpass.accounts.service import Account
from clickpass.openid.extensions import (
    NOTHING_REQUESTED,
    parse,
    release,
    requested,
    values_for,
)


def _account(
    email: str = "ann@example.com", display_name: str = "", verified: bool = True
) -> Account:
    return Account(1, "u" * 32, email, display_name, 0, False, verified)


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


def test_upstream_email_never_stands_in_for_the_account() -> None:
    """
    An upstream email, verified by its provider or not, never fills in a
    missing email: only the account's own verified address is released.
    """
    account = _account(email="abc@upstream.invalid")
    claims = {"email": "bo@example.com", "email_verified": False}
    assert "email" not in values_for(account, claims)
    verified = {"email": "bo@example.com", "email_verified": True}
    assert "email" not in values_for(account, verified)


def test_unverified_address_is_never_released() -> None:
    """An account whose address is not verified releases no email, asked or not."""
    account = _account(verified=False)
    assert "email" not in values_for(account)
    assert release(frozenset({"email"}), account, {"email_verified": True}) == {}
    assert values_for(_account())["email"] == "ann@example.com"


def test_non_string_claims_are_ignored() -> None:
    """Claims of the wrong type (a provider's mistake) are skipped, not released."""
    held = values_for(_account(display_name="Ann"), {"name": ["x"], "nickname": 7})
    assert held["fullname"] == "Ann" and held["nickname"] == "Ann"


# What a relying party asked for: the shortcut for a request with no
# extension arguments gives what the library's parsing gives.

SELECT = "http://specs.openid.net/auth/2.0/identifier_select"
OPENID2 = {
    "openid.ns": "http://specs.openid.net/auth/2.0",
    "openid.mode": "checkid_setup",
    "openid.claimed_id": SELECT,
    "openid.identity": SELECT,
    "openid.return_to": "http://rp.example/return",
    "openid.realm": "http://rp.example/",
}
OPENID1 = {
    "openid.mode": "checkid_setup",
    "openid.identity": "http://op.example/id/x",
    "openid.return_to": "http://rp.example/return",
    "openid.trust_root": "http://rp.example/",
}
SREG_11 = "http://openid.net/extensions/sreg/1.1"
AX = "http://openid.net/srv/ax/1.0"


def _checkid(query: dict[str, str]) -> Any:
    request = Server(MemoryStore(), "http://op.example/openid").decodeRequest(query)
    assert isinstance(request, CheckIDRequest)
    return request


QUERIES = {
    "openid2, nothing asked": OPENID2,
    "openid1, nothing asked": OPENID1,
    "openid2, bare argument": {**OPENID2, "foo": "bar"},
    "openid2, sreg declared": {
        **OPENID2,
        "openid.ns.sreg": SREG_11,
        "openid.sreg.required": "email",
        "openid.sreg.optional": "nickname,dob",
    },
    "openid2, sreg under another alias": {
        **OPENID2,
        "openid.ns.x": SREG_11,
        "openid.x.optional": "fullname",
    },
    "openid2, sreg alias not declared": {**OPENID2, "openid.sreg.required": "email"},
    "openid1, sreg alias implied": {**OPENID1, "openid.sreg.required": "email,fullname"},
    "openid2, ax": {
        **OPENID2,
        "openid.ns.ax": AX,
        "openid.ax.mode": "fetch_request",
        "openid.ax.type.mail": "http://axschema.org/contact/email",
        "openid.ax.required": "mail",
    },
    "openid2, ax malformed": {
        **OPENID2,
        "openid.ns.ax": AX,
        "openid.ax.mode": "fetch_request",
        "openid.ax.required": "undeclared",
    },
    "openid2, sreg alias taken by another namespace": {
        **OPENID2,
        "openid.ns.sreg": "http://other.example/",
    },
    "openid2, unknown extension": {
        **OPENID2,
        "openid.ns.pape": "http://specs.openid.net/extensions/pape/1.0",
        "openid.pape.max_auth_age": "0",
    },
}
EXPECTED_FIELDS = {
    "openid2, sreg declared": {"email", "nickname"},
    "openid2, sreg under another alias": {"fullname"},
    "openid1, sreg alias implied": {"email", "fullname"},
    "openid2, ax": {"email"},
}


@pytest.mark.parametrize("name", QUERIES)
def test_requested_matches_the_library(name: str) -> None:
    """The shortcut is taken only where the library would find nothing."""
    ours, theirs = requested(_checkid(QUERIES[name])), parse(_checkid(QUERIES[name]))
    assert ours.fields == theirs.fields == frozenset(EXPECTED_FIELDS.get(name, ()))
    assert (ours.sreg is None, ours.ax is None) == (theirs.sreg is None, theirs.ax is None)
    assert ours.problem == theirs.problem
    nothing = ours.sreg is None and ours.ax is None and not ours.problem
    if name.endswith(("nothing asked", "bare argument", "not declared")):
        assert ours is NOTHING_REQUESTED
    else:
        assert ours is not NOTHING_REQUESTED
    if name.endswith("another namespace") or name.endswith("malformed"):
        assert not nothing and ours.problem


def test_a_taken_sreg_alias_is_a_note_not_an_error() -> None:
    """A request that maps "sreg" to another namespace asks for nothing; it is not a crash."""
    wanted = requested(_checkid(QUERIES["openid2, sreg alias taken by another namespace"]))
    assert wanted.sreg is None and wanted.fields == frozenset()
    assert "simple registration request was malformed" in wanted.problem

"""
What the OpenID Connect provider releases: only consented fields, an
account's own address only once verified (the seam the accounts' verified
flag answers), and the UserInfo claim names; the discovery document.
"""

from __future__ import annotations

import dataclasses

from clickpass.accounts.service import Account
from clickpass.oidc import web

ACCOUNT = Account(1, "uid-1", "ann@example.com", "Ann", 0, False)
HELD = {"email": "ann@example.com", "fullname": "Ann Example", "nickname": "ann"}


def test_an_unverified_address_is_never_released() -> None:
    fields = frozenset({"email", "fullname"})
    released = web.releasable(fields, HELD, ACCOUNT, web.account_email_verified)
    assert released == {"fullname": "Ann Example"}
    assert web.userinfo_claims("sub-1", released) == {"sub": "sub-1", "name": "Ann Example"}


def test_a_verified_address_is_released_as_verified() -> None:
    """The account's own address goes out once the accounts say it is verified."""
    verified = dataclasses.replace(ACCOUNT, email_verified=True)
    released = web.releasable(frozenset({"email"}), HELD, verified, web.account_email_verified)
    assert web.userinfo_claims("sub-1", released) == {
        "sub": "sub-1",
        "email": "ann@example.com",
        "email_verified": True,
    }


def test_an_address_an_upstream_provider_verified_is_released() -> None:
    """An address in the held values that is not the account's came verified from upstream."""
    held = {**HELD, "email": "ann@upstream.example"}
    released = web.releasable(frozenset({"email"}), held, ACCOUNT, web.account_email_verified)
    assert released == {"email": "ann@upstream.example"}


def test_only_consented_fields_are_released() -> None:
    released = web.releasable(frozenset({"nickname"}), HELD, ACCOUNT, lambda account: True)
    assert web.userinfo_claims("s", released) == {
        "sub": "s",
        "nickname": "ann",
        "preferred_username": "ann",
    }
    assert web.releasable(frozenset(), HELD, ACCOUNT, lambda account: True) == {}


def test_discovery_never_offers_alg_none_or_other_flows() -> None:
    doc = web.discovery_document("https://cp.example/")
    assert doc["issuer"] == "https://cp.example"
    assert doc["jwks_uri"] == "https://cp.example/oidc/jwks"
    assert "none" not in doc["id_token_signing_alg_values_supported"]
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]


def test_at_hash_is_the_left_half_of_sha256() -> None:
    # Computed independently: base64url(sha256(b"token")[:16]).
    assert web.at_hash("token") == "PEaenWxYddN6Q_NT1PiOYQ"

"""
What an export holds and what an erasure removes, on a migrated SQLite
database: every feature's part of a person, the partner sites told
through their webhook, and the refusal while the person is a site's last
admin.
"""

from __future__ import annotations

import json

import pytest

from clickpass.accounts import events, tokens
from clickpass.openid import approvals
from clickpass.openid.identifiers import identifier_url
from clickpass.partners import sites
from clickpass.selfservice import data
from clickpass.storage.sql import DirectStorage, Transaction
from tests.unit.partners.conftest import NOW, add_account, make_site

BASE = "https://login.example/"
OPAQUE = "o" * 32
SEALED_SECRET = b"sealed-totp-secret-bytes"


def _person(tx: Transaction, site: sites.Site) -> int:
    """An account with something in every table that holds a part of a person."""
    account_id = add_account(tx, "p@example.com")
    tx.execute(
        "INSERT INTO site_identifiers (opaque, account_id, sector, created, last_used) "
        "VALUES (?, ?, ?, ?, ?)",
        OPAQUE,
        account_id,
        site.sector,
        NOW,
        NOW,
    )
    approvals.remember(tx, account_id, site.realm, frozenset({"email"}), NOW)
    sites.create_link(tx, site, account_id, OPAQUE, identifier_url(BASE, OPAQUE), "register", NOW)
    tx.execute(
        "INSERT INTO upstream_identities (account_id, provider, subject, email, email_verified, "
        "claims, created, last_used) VALUES (?, 'google', 'g-1', 'p@example.com', 1, ?, ?, ?)",
        account_id,
        json.dumps({"sub": "g-1"}),
        NOW,
        NOW,
    )
    tx.execute(
        "INSERT INTO sessions (token_hash, account_id, created, expires, client_address) "
        "VALUES ('h1', ?, ?, ?, '192.0.2.1')",
        account_id,
        NOW,
        NOW + 3600,
    )
    tx.execute(
        "INSERT INTO session_details (token_hash, account_id, browser, last_seen) "
        "VALUES ('h1', ?, 'Firefox on Linux', ?)",
        account_id,
        NOW,
    )
    events.record(tx, account_id, "signin", NOW, client_address="192.0.2.1")
    events.note_browser(tx, account_id, "b" * 64, NOW)
    tx.execute(
        "INSERT INTO signin_failures (scope, subject, window_start, failures) "
        "VALUES ('account', 'p@example.com', ?, 2)",
        NOW,
    )
    _mailed_links_and_second_factors(tx, account_id)
    return account_id


def _mailed_links_and_second_factors(tx: Transaction, account_id: int) -> None:
    """A mailed link, an app, recovery codes, a key, a trusted browser, a second step."""
    tokens.issue(tx, account_id, tokens.CHANGE_EMAIL, 3600, NOW, "new@example.com")
    tx.execute(
        "INSERT INTO mfa_totp (account_id, secret, confirmed, created) VALUES (?, ?, ?, ?)",
        account_id,
        SEALED_SECRET,
        NOW,
        NOW,
    )
    tx.execute(
        "INSERT INTO mfa_recovery_codes (account_id, code_hash, created) VALUES (?, ?, ?)",
        account_id,
        "r" * 64,
        NOW,
    )
    tx.execute(
        "INSERT INTO mfa_trusted_browsers (token_hash, account_id, created, expires, "
        "client_address) VALUES (?, ?, ?, ?, '192.0.2.1')",
        "t" * 64,
        account_id,
        NOW,
        NOW + 86400,
    )
    tx.execute(
        "INSERT INTO mfa_pending (token_hash, account_id, created, expires) VALUES (?, ?, ?, ?)",
        "q" * 64,
        account_id,
        NOW,
        NOW + 300,
    )
    tx.execute(
        "INSERT INTO mfa_session_auth (token_hash, account_id, methods, password_time, "
        "factor_time, expires) VALUES ('h1', ?, 'pwd otp', ?, ?, ?)",
        account_id,
        NOW,
        NOW,
        NOW + 3600,
    )
    tx.execute(
        "INSERT INTO mfa_webauthn_credentials (id_hash, credential_id, account_id, public_key, "
        "name, passkey, created) VALUES (?, ?, ?, ?, 'Blue key', 1, ?)",
        f"k{account_id}",
        b"credential-id",
        account_id,
        b"cose-public-key",
        NOW,
    )
    tx.execute(
        "INSERT INTO mfa_webauthn_challenges (challenge_hash, purpose, binding_hash, "
        "account_id, expires) VALUES (?, 'confirm', 'b1', ?, ?)",
        f"c{account_id}",
        account_id,
        NOW + 300,
    )
    tx.execute(
        "INSERT INTO signin_failures (scope, subject, window_start, failures) "
        "VALUES ('second-factor', ?, ?, 1), ('link-address', 'p@example.com', ?, 1)",
        str(account_id),
        NOW,
        NOW,
    )


def _left(tx: Transaction, account_id: int) -> dict[str, int]:
    counts = {
        table: int(tx.scalar(f"SELECT COUNT(*) FROM {table} WHERE account_id = ?", account_id))
        for table in (
            "sessions",
            "session_details",
            "site_identifiers",
            "approvals",
            "partner_links",
            "partner_admins",
            "upstream_identities",
            "security_events",
            "known_browsers",
            "account_tokens",
            "mfa_totp",
            "mfa_recovery_codes",
            "mfa_trusted_browsers",
            "mfa_pending",
            "mfa_session_auth",
            "mfa_webauthn_credentials",
            "mfa_webauthn_challenges",
        )
    }
    counts["accounts"] = int(tx.scalar("SELECT COUNT(*) FROM accounts WHERE id = ?", account_id))
    counts["signin_failures"] = int(
        tx.scalar(
            "SELECT COUNT(*) FROM signin_failures WHERE subject IN ('p@example.com', ?)",
            str(account_id),
        )
    )
    return {table: n for table, n in counts.items() if n}


def test_export_holds_every_part_of_the_person(storage: DirectStorage) -> None:
    """Account, approvals, identifiers, sites, upstream identities, sessions and events."""
    site = make_site(storage)
    account_id = storage.run_blocking(_person, site)
    found = storage.run_blocking(data.export, account_id, BASE)
    assert found is not None
    assert found["account"]["email"] == "p@example.com"
    assert found["approvals"][0]["realm"] == site.realm
    assert found["site_identifiers"][0]["identifier"] == identifier_url(BASE, OPAQUE)
    assert found["connected_sites"][0]["site"] == site.public_id
    assert found["upstream_identities"][0]["claims"] == {"sub": "g-1"}
    assert found["sessions"][0]["browser"] == "Firefox on Linux"
    assert found["security_events"][0]["kind"] == "signin"
    assert "h1" not in json.dumps(found)  # no session token hash
    assert found["account"]["email_verified"] is False
    [link] = found["mailed_links"]
    assert (link["purpose"], link["email"], link["used"]) == (
        tokens.CHANGE_EMAIL,
        "new@example.com",
        0,
    )
    factors = found["second_factors"]
    assert factors["authenticator_app"] == {"created": NOW, "confirmed": NOW}
    assert factors["recovery_codes"] == [{"created": NOW, "used": 0}]
    assert factors["security_keys"] == [
        {"name": "Blue key", "passkey": 1, "backed_up": 0, "created": NOW, "last_used": 0}
    ]
    assert "cose-public-key" not in json.dumps(found)
    assert factors["trusted_browsers"][0]["client_address"] == "192.0.2.1"
    assert factors["session_sign_ins"][0]["methods"] == "pwd otp"
    assert factors["second_steps_waiting"][0]["first_method"] == "pwd"
    # No secret: not the app's key, not a hash of a code, token or cookie.
    text = json.dumps(found)
    for secret in ("r" * 64, "t" * 64, "q" * 64, SEALED_SECRET.decode("latin-1")):
        assert secret not in text
    token_hashes = storage.run_blocking(
        lambda tx: [r[0] for r in tx.fetchall("SELECT token_hash FROM account_tokens")]
    )
    assert token_hashes and not any(h in text for h in token_hashes)
    assert storage.run_blocking(data.export, account_id + 100, BASE) is None


def test_erasure_removes_everything_and_tells_the_sites(storage: DirectStorage) -> None:
    """
    Nothing about the person is left; each connected site gets a
    user.deleted event (after user.unlinked) and a deletion request for the person's identifier
    there; another person's data is untouched.
    """
    site = make_site(storage)
    account_id = storage.run_blocking(_person, site)
    other = storage.run_blocking(add_account, "q@example.com")
    storage.run_blocking(events.record, other, "signin", NOW)
    erased = storage.run_blocking(data.erase, account_id, BASE, NOW + 5)
    assert erased == data.Erased("p@example.com", (site.public_id,))
    assert storage.run_blocking(_left, account_id) == {}
    sent = storage.run_blocking(
        lambda tx: tx.fetchall(
            "SELECT event_type, subject, body FROM partner_events WHERE site_id = ? ORDER BY id",
            site.id,
        )
    )
    # As when the person disconnects and asks for deletion: unlinked, then deleted.
    assert [row[0] for row in sent] == ["user.linked", "user.unlinked", "user.deleted"]
    deleted = json.loads(sent[2][2])
    assert sent[2][1] == OPAQUE
    assert deleted["data"]["identifier"] == identifier_url(BASE, OPAQUE)
    [request] = storage.run_blocking(sites.deletion_requests, site.id, False)
    assert request.public_id == deleted["data"]["deletion_request"]
    assert storage.run_blocking(events.recent, other, 10)[0].kind == "signin"
    assert storage.run_blocking(data.erase, account_id, BASE, NOW) is None
    assert storage.run_blocking(add_account, "p@example.com") > account_id


def test_the_last_admin_of_a_site_cannot_be_erased(storage: DirectStorage) -> None:
    """Erasure is refused, changing nothing, while the person alone administers a site."""
    site = make_site(storage)
    [admin] = storage.run_blocking(sites.admins, site.id)
    storage.run_blocking(events.record, admin.account_id, "signin", NOW)
    with pytest.raises(data.ErasureRefused, match="only admin of the partner site Partner"):
        storage.run_blocking(data.erase, admin.account_id, BASE, NOW)
    assert storage.run_blocking(sites.admins, site.id) == [admin]
    assert len(storage.run_blocking(events.recent, admin.account_id, 10)) == 1
    second = storage.run_blocking(add_account, "second@partner.example")
    storage.run_blocking(
        lambda tx: tx.execute(
            "INSERT INTO partner_admins (site_id, account_id, created) VALUES (?, ?, ?)",
            site.id,
            second,
            NOW,
        )
    )
    assert storage.run_blocking(data.erase, admin.account_id, BASE, NOW) is not None
    assert [a.email for a in storage.run_blocking(sites.admins, site.id)] == [
        "second@partner.example"
    ]

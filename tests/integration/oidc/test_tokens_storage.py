"""
Grants, codes and tokens on a real database, SQLite and MariaDB, at
injected times: codes expire after 60 s and are single use even when two
workers race, refresh tokens expire and rotate, and housekeeping removes
what has expired.
"""

from __future__ import annotations

from typing import Any

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from twisted.internet.defer import gatherResults

from clickpass.oidc import backchannel, clients, tokens
from clickpass.oidc.tokens import Grant, Issued, Refusal
from clickpass.storage import migrations
from clickpass.storage.sql import AdbapiStorage
from tests.support.deferreds import async_test
from tests.support.storage import DatabaseTarget

pytestmark = pytest.mark.integration

NOW = 1_800_000_000
REDIRECT = "https://rp.example.com/cb"


def grant(now: int = NOW, client_id: str = "oidc_a") -> Grant:
    return Grant(
        grant_id=tokens.new_secret(), client_id=client_id, account_id=1, subject="s" * 32,
        scopes=("openid",), fields=frozenset(), nonce="n", auth_time=now, created=now,
        expires=now + 2 * tokens.CODE_LIFETIME,
    )  # fmt: skip


async def with_code(storage: AdbapiStorage, now: int = NOW) -> tuple[Grant, str]:
    g, code = grant(now), tokens.new_secret()
    await storage.run(tokens.start_grant, g, code, REDIRECT, "")
    return g, code


async def migrated(target: DatabaseTarget) -> AdbapiStorage:
    storage = target.open()
    await migrations.migrate(storage, NOW)
    return storage


@async_test
async def test_a_code_expires_after_60_seconds(database_target: DatabaseTarget) -> None:
    """Redeemed at 59 s it works; at 60 s it is invalid_grant (expired)."""
    storage = await migrated(database_target)
    _g, code = await with_code(storage)
    ok = await storage.run(tokens.redeem_code, code, "oidc_a", REDIRECT, "", NOW + 59)
    assert isinstance(ok, Issued)
    _g, late = await with_code(storage)
    refused = await storage.run(tokens.redeem_code, late, "oidc_a", REDIRECT, "", NOW + 60)
    assert refused == Refusal("invalid_grant", "the authorization code has expired")


@async_test
async def test_two_workers_racing_with_one_code_issue_once(
    reactor: Any, database_target: DatabaseTarget
) -> None:
    """Two pools redeem one code at once: one gets tokens, the other invalid_grant. Five rounds."""
    first = await migrated(database_target)
    second = database_target.open()
    for _ in range(5):
        _g, code = await with_code(first)
        results = await gatherResults(
            [
                first.run(tokens.redeem_code, code, "oidc_a", REDIRECT, "", NOW + 1),
                second.run(tokens.redeem_code, code, "oidc_a", REDIRECT, "", NOW + 1),
            ]
        )
        assert sorted(type(r).__name__ for r in results) == ["Issued", "Refusal"]
        issued = next(r for r in results if isinstance(r, Issued))
        # The loser's attempt is a reuse: what the winner got is revoked.
        assert await first.run(tokens.live_token, issued.access_token, NOW + 2) is None


@async_test
async def test_refresh_tokens_expire_and_rotate(database_target: DatabaseTarget) -> None:
    """A refresh token rotates; one past its lifetime is invalid_grant."""
    storage = await migrated(database_target)
    _g, code = await with_code(storage)
    issued = await storage.run(tokens.redeem_code, code, "oidc_a", REDIRECT, "", NOW)
    assert isinstance(issued, Issued)
    later = NOW + tokens.REFRESH_TOKEN_LIFETIME - 1
    rotated = await storage.run(tokens.refresh, issued.refresh_token, "oidc_a", later)
    assert isinstance(rotated, Issued)
    assert rotated.refresh_token != issued.refresh_token
    expired_at = later + tokens.REFRESH_TOKEN_LIFETIME
    refused = await storage.run(tokens.refresh, rotated.refresh_token, "oidc_a", expired_at)
    assert refused == Refusal("invalid_grant", "the refresh token has expired")


@async_test
async def test_access_tokens_expire_and_housekeeping_removes_them(
    database_target: DatabaseTarget,
) -> None:
    """An access token is live until its hour is over; housekeeping then deletes the rows."""
    storage = await migrated(database_target)
    _g, code = await with_code(storage)
    issued = await storage.run(tokens.redeem_code, code, "oidc_a", REDIRECT, "", NOW)
    assert isinstance(issued, Issued)
    hour = tokens.ACCESS_TOKEN_LIFETIME
    assert await storage.run(tokens.live_token, issued.access_token, NOW + hour - 1) is not None
    assert await storage.run(tokens.live_token, issued.access_token, NOW + hour) is None
    removed = await storage.run(tokens.remove_expired, NOW + tokens.REFRESH_TOKEN_LIFETIME)
    assert removed == 4  # the code, both tokens, the grant

    def count(tx: Any) -> int:
        return int(tx.scalar("SELECT COUNT(*) FROM oidc_tokens"))

    assert await storage.run(count) == 0


def test_pkce_s256_agrees_with_authlib() -> None:
    """Our S256 check accepts the challenge another implementation (Authlib) makes, only it."""
    for verifier in (tokens.new_secret(), "a" * 43, "~._-" * 32):
        challenge = create_s256_code_challenge(verifier)
        assert tokens.pkce_matches(verifier, challenge)
        assert not tokens.pkce_matches(verifier + "x", challenge)
        assert not tokens.pkce_matches(verifier, verifier)


def _rows_of(tx: Any, client_id: str) -> dict[str, int]:
    """How many grant, code, token and client assertion rows C{client_id} has."""
    granted = "SELECT grant_id FROM oidc_grants WHERE client_id = ?"
    return {
        "grants": int(tx.scalar("SELECT COUNT(*) FROM oidc_grants WHERE client_id = ?", client_id)),
        "codes": int(
            tx.scalar(f"SELECT COUNT(*) FROM oidc_codes WHERE grant_id IN ({granted})", client_id)
        ),
        "tokens": int(
            tx.scalar(f"SELECT COUNT(*) FROM oidc_tokens WHERE grant_id IN ({granted})", client_id)
        ),
        "assertions": int(
            tx.scalar("SELECT COUNT(*) FROM oidc_client_assertions WHERE client_id = ?", client_id)
        ),
    }


def _add_client(tx: Any, client_id: str) -> None:
    tx.execute(
        "INSERT INTO oidc_clients (client_id, site_id, redirect_uris, sector, created) "
        "VALUES (?, 1, ?, 'rp.example.com', ?)",
        client_id,
        REDIRECT,
        NOW,
    )
    tx.execute(
        "INSERT INTO oidc_client_assertions (client_id, jti, expires) VALUES (?, 'j', ?)",
        client_id,
        NOW + 60,
    )


@async_test
async def test_removing_a_client_removes_its_grants_codes_and_tokens(
    database_target: DatabaseTarget,
) -> None:
    """
    A removed client leaves no grant, code, access or refresh token nor
    client assertion behind; another client's rows are untouched.
    """
    storage = await migrated(database_target)
    for client_id in ("oidc_a", "oidc_b"):
        await storage.run(_add_client, client_id)
        g, code = grant(client_id=client_id), tokens.new_secret()
        await storage.run(tokens.start_grant, g, code, REDIRECT, "")
        await storage.run(tokens.redeem_code, code, client_id, REDIRECT, "", NOW + 1)
        await storage.run(tokens.start_grant, grant(client_id=client_id), "c2" + code, REDIRECT, "")
    before = {"grants": 2, "codes": 2, "tokens": 2, "assertions": 1}
    assert await storage.run(_rows_of, "oidc_a") == before
    assert await storage.run(clients.remove_client, "oidc_a", NOW + 2)
    assert await storage.run(_rows_of, "oidc_a") == dict.fromkeys(before, 0)
    assert await storage.run(_rows_of, "oidc_b") == before
    assert not await storage.run(clients.remove_client, "oidc_a", NOW + 3)


def _owed_to(tx: Any, client_id: str) -> dict[str, int]:
    """What the back-channel logout keeps for C{client_id}, by kind."""
    count = "SELECT COUNT(*) FROM {} WHERE client_id = ?{}"
    return {
        "sessions": int(tx.scalar(count.format("oidc_session_clients", ""), client_id)),
        "pending": int(
            tx.scalar(
                count.format("oidc_logouts", " AND state = ?"), client_id, backchannel.PENDING
            )
        ),
        "delivered": int(
            tx.scalar(
                count.format("oidc_logouts", " AND state = ?"), client_id, backchannel.DELIVERED
            )
        ),
    }


def _owe_logouts(tx: Any, client_id: str) -> None:
    """Two sessions signed into C{client_id}, one logout pending and one delivered."""
    for token_hash in ("a", "b"):
        backchannel.record_session(tx, client_id + token_hash, client_id, "sid", "sub", NOW)
    for state in (backchannel.PENDING, backchannel.DELIVERED):
        tx.execute(
            "INSERT INTO oidc_logouts (client_id, sid, subject, created, next_attempt, state) "
            "VALUES (?, 'sid', 'sub', ?, ?, ?)",
            client_id,
            NOW,
            NOW,
            state,
        )


@async_test
async def test_removing_a_client_forgets_its_sessions_and_pending_logouts(
    database_target: DatabaseTarget,
) -> None:
    """
    A removed client's recorded sessions and pending back-channel logouts go
    with it, in the same transaction (not at the next outbox cleanup); its
    delivered logouts stay for operators; another client's rows are untouched.
    """
    storage = await migrated(database_target)
    for client_id in ("oidc_a", "oidc_b"):
        await storage.run(_add_client, client_id)
        await storage.run(_owe_logouts, client_id)
    before = {"sessions": 2, "pending": 1, "delivered": 1}
    assert await storage.run(_owed_to, "oidc_a") == before
    assert await storage.run(clients.remove_client, "oidc_a", NOW + 2)
    assert await storage.run(_owed_to, "oidc_a") == {"sessions": 0, "pending": 0, "delivered": 1}
    assert await storage.run(_owed_to, "oidc_b") == before

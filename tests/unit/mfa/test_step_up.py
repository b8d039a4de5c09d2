"""
Step-up on an injected clock: a sensitive action goes on only within the
step-up window of a sign-in with the person's strongest factor (their
password when they have no second factor; their code when they have one,
a trusted browser not counting); otherwise it is sent to confirm.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from clickpass import config as configmod
from clickpass.balancer.forwarding import CLIENT_HEADER
from clickpass.mfa import totp
from clickpass.mfa.service import SecondFactors
from clickpass.mfa.settings import MfaSettings
from clickpass.mfa.web import MfaWeb
from clickpass.storage.sql import AdbapiStorage
from clickpass.web.app import SESSION_COOKIE, WebApp
from clickpass.web.routing import HTTPError
from tests.support.deferreds import async_test

PASSWORD = "correct horse battery"
WINDOW = MfaSettings().step_up_window


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def request_with(token: str) -> Request:
    """A request (never sent anywhere) carrying the session cookie C{token}."""
    request = Request(DummyChannel())
    request.received_cookies = {SESSION_COOKIE: token.encode("ascii")}
    return request


async def setup(tmp_path: Path, storage: AdbapiStorage, reactor: Any) -> tuple[MfaWeb, Clock]:
    settings = configmod.parse({"node": {"data_dir": str(tmp_path)}})
    app = WebApp(reactor, settings, storage, b"s" * 32, client_header=CLIENT_HEADER)
    clock = Clock()
    return MfaWeb(app, SecondFactors(storage, settings.mfa, b"s" * 32, None, clock)), clock


@async_test
async def test_password_only_person_fresh_for_the_window(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """Without a second factor, the password sign-in is fresh for the window only."""
    web, clock = await setup(tmp_path, storage_backend, reactor)
    account = await web.app.accounts.sign_up("ann@example.org", PASSWORD)
    token = await web.app.accounts.start_session(account, "192.0.2.1")
    request = request_with(token)
    await web.require_step_up(request, account, "/account/mfa")
    clock.now += WINDOW + 30
    with pytest.raises(HTTPError) as refused:
        await web.require_step_up(request, account, "/account/mfa")
    assert refused.value.status == 303
    assert refused.value.headers == {"location": "/account/confirm?next=%2Faccount%2Fmfa"}


@async_test
async def test_with_a_factor_only_a_recent_code_counts(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    With a second factor, a fresh password is not enough, nor a trusted
    browser; a code within the window is, and not after it.
    """
    web, clock = await setup(tmp_path, storage_backend, reactor)
    account = await web.app.accounts.sign_up("bob@example.org", PASSWORD)
    secret = await web.factors.begin_totp(account.id)
    await web.factors.confirm_totp(account.id, totp.code_at(secret, clock.now))
    token = await web.app.accounts.start_session(account, "192.0.2.1")
    request = request_with(token)
    now = int(clock.now)
    assert not await web.is_fresh(request, account)
    trusted = frozenset({"pwd", "trusted"})
    await web.factors.record_session(token, account.id, trusted, now, 0, now + 3600)
    assert not await web.is_fresh(request, account)
    coded = frozenset({"pwd", "otp"})
    await web.factors.record_session(token, account.id, coded, now, now, now + 3600)
    assert await web.is_fresh(request, account)
    clock.now += WINDOW + 30
    assert not await web.is_fresh(request, account)
    assert not await web.is_fresh(request_with("another"), account)


@async_test
async def test_with_a_key_only_the_key_or_a_recovery_code_counts(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    A person with a security key (and an app): step-up takes the key, the
    strongest factor, or a recovery code (the key lost), within the
    window; a fresh app code does not do.
    """
    web, clock = await setup(tmp_path, storage_backend, reactor)
    account = await web.app.accounts.sign_up("cy@example.org", PASSWORD)
    secret = await web.factors.begin_totp(account.id)
    await web.factors.confirm_totp(account.id, totp.code_at(secret, clock.now))
    await web.factors.storage.run(
        lambda tx: tx.execute(
            "INSERT INTO mfa_webauthn_credentials (id_hash, credential_id, account_id, "
            "public_key, name, created) VALUES ('k', ?, ?, ?, 'Key', ?)",
            b"id",
            account.id,
            b"key",
            int(clock.now),
        )
    )
    token = await web.app.accounts.start_session(account, "192.0.2.1")
    request = request_with(token)
    now = int(clock.now)
    for methods, fresh in (
        ({"pwd", "otp"}, False),
        ({"pwd", "hwk"}, True),
        ({"pwd", "rc"}, True),
        ({"hwk", "uv"}, True),
    ):
        await web.factors.record_session(
            token, account.id, frozenset(methods), now, now, now + 3600
        )
        assert await web.is_fresh(request, account) is fresh, methods
    clock.now += WINDOW + 30
    assert not await web.is_fresh(request, account)


@async_test
async def test_a_provider_reauth_marks_fresh_only_without_a_second_factor(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """
    A re-authentication through an upstream provider makes a stale session
    of a person with no second factor fresh (as federated, never as a
    password); for a person with one (set up while they were at the
    provider) it is refused and marks nothing.
    """
    web, clock = await setup(tmp_path, storage_backend, reactor)
    account = await web.app.accounts.sign_up("dee@example.org", PASSWORD)
    token = await web.app.accounts.start_session(account, "192.0.2.1")
    request = request_with(token)
    clock.now += WINDOW + 30
    assert await web.reauth_refusal(account) is None
    await web.after_reauth(request, account, "/account/export", "google")
    assert await web.is_fresh(request, account)
    auth = await web.auth_of(request)
    assert auth is not None and auth.methods == frozenset({"fed"})

    clock.now += WINDOW + 30
    secret = await web.factors.begin_totp(account.id)
    await web.factors.confirm_totp(account.id, totp.code_at(secret, clock.now))
    assert await web.reauth_refusal(account) is not None
    with pytest.raises(HTTPError) as refused:
        await web.after_reauth(request_with(token), account, "/account/export", "google")
    assert refused.value.status == 403
    assert not await web.is_fresh(request_with(token), account)

"""
Every kind of bad upstream behaviour ends the sign-in with one clear
error and creates nothing: a fake provider (twisted.web over TLS on
127.0.0.1, in the test's reactor) misbehaves in one way per test, and the
real connectors and flow service (real treq, real TLS checks, real SQL)
meet it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from twisted.internet.defer import Deferred

from clickpass.config import parse
from clickpass.storage import migrations
from clickpass.storage.sql import AdbapiStorage, open_sqlite
from clickpass.upstream.http import UpstreamError
from clickpass.upstream.service import Finished, FlowError, UpstreamService
from clickpass.upstream.web import build_connectors
from tests.conftest import global_reactor
from tests.integration.upstream.fakeop import CLIENT_ID, FakeProvider, listen, new_key
from tests.support.deferreds import async_test, block_on
from tests.support.tlsca import TestCA, make_ca


@dataclass
class Env:
    fake: FakeProvider
    service: UpstreamService
    storage: AdbapiStorage
    port: Any

    async def begin(self, code: str | None = None) -> tuple[dict[str, str], str]:
        """Start a sign-in and have the fake provider accept it; return the callback query."""
        started = await self.service.start("fake", "signin", None, "/account", None)
        code = code or "code-" + secrets.token_hex(8)
        self.fake.authorize(started.url, code)
        state = parse_qs(urlsplit(started.url).query)["state"][0]
        return {"state": state, "code": code, "iss": self.fake.issuer}, started.browser

    async def attempt(self) -> Finished:
        params, browser = await self.begin()
        return await self.service.finish("fake", params, browser, None)

    async def count(self, table: str) -> int:
        value = await self.storage.run(lambda tx: tx.scalar(f"SELECT COUNT(*) FROM {table}"))
        return int(value)

    async def nothing_created(self) -> None:
        assert await self.count("accounts") == 0
        assert await self.count("upstream_identities") == 0


def make_env(
    storage: AdbapiStorage,
    ca: TestCA,
    data: Path,
    fake: FakeProvider,
    now: Callable[[], float] = time.time,
) -> Env:
    reactor = global_reactor()
    port = listen(reactor, ca, fake)
    settings = parse(
        {
            "node": {"data_dir": str(data), "public_url": "http://127.0.0.1:9/"},
            "upstream": {
                "ca_bundle": str(ca.ca_pem),
                "timeout": 0.5,
                "max_response_bytes": 64 * 1024,
                "jwks_refetch_interval": 60,
                "provider": [
                    {
                        "name": "fake",
                        "kind": "oidc",
                        "display_name": "Fake",
                        "issuer": fake.issuer,
                        "client_id": CLIENT_ID,
                    }
                ],
            },
        }
    )
    connectors = build_connectors(reactor, settings, now)
    service = UpstreamService(storage, settings.upstream, connectors, settings.base_url)
    return Env(fake, service, storage, port)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("fake-ca"))


@pytest.fixture
def sqlite_storage(tmp_path: Path) -> Iterator[AdbapiStorage]:
    storage = open_sqlite(global_reactor(), tmp_path / "db.sqlite3")
    block_on(Deferred.fromCoroutine(migrations.migrate(storage, 1_700_000_000)))
    yield storage
    storage.close()


def _env(storage: AdbapiStorage, ca: TestCA, tmp_path: Path) -> Iterator[Env]:
    fake = FakeProvider()
    env = make_env(storage, ca, tmp_path, fake)
    yield env
    for request in fake.hanging:
        if not request.finished and not request._disconnected:
            request.finish()
    block_on(Deferred.fromCoroutine(_stop(env.port)))


async def _stop(port: Any) -> None:
    if port.connected:
        await port.stopListening()


@pytest.fixture
def env(sqlite_storage: AdbapiStorage, ca: TestCA, tmp_path: Path) -> Iterator[Env]:
    """The fake provider and the flow service, on SQLite."""
    yield from _env(sqlite_storage, ca, tmp_path)


@pytest.fixture
def env_any_backend(storage_backend: AdbapiStorage, ca: TestCA, tmp_path: Path) -> Iterator[Env]:
    """The fake provider and the flow service, once on SQLite and once on MariaDB."""
    yield from _env(storage_backend, ca, tmp_path)


async def refused(env: Env, reason: str, kind: type[Exception] = UpstreamError) -> str:
    """Attempt a sign-in, expect it refused for C{reason}, and nothing created."""
    with pytest.raises(kind) as info:
        await env.attempt()
    assert getattr(info.value, "reason", None) == reason, info.value
    await env.nothing_created()
    return str(info.value)


@async_test
async def test_a_good_provider_signs_in(env_any_backend: Env) -> None:
    """The harness itself: a well-behaved provider creates one account, once."""
    env = env_any_backend
    finished = await env.attempt()
    assert finished.outcome == "created"
    assert await env.count("accounts") == 1
    again = await env.attempt()
    assert (again.outcome, again.account_id) == ("signed_in", finished.account_id)
    assert await env.count("accounts") == 1


@async_test
async def test_replayed_callback_is_refused(env_any_backend: Env) -> None:
    """The same callback twice: the second one is refused and changes nothing."""
    env = env_any_backend
    params, browser = await env.begin()
    await env.service.finish("fake", params, browser, None)
    with pytest.raises(FlowError) as info:
        await env.service.finish("fake", params, browser, None)
    assert info.value.reason == "replayed_state"
    assert await env.count("accounts") == 1


@async_test
async def test_wrong_issuer_in_discovery(env: Env) -> None:
    """A discovery document naming another issuer stops the sign-in before it starts."""
    env.fake.behaviour.discovery_issuer = "https://evil.example"
    with pytest.raises(UpstreamError) as info:
        await env.service.start("fake", "signin", None, "/account", None)
    assert info.value.reason == "bad_issuer"
    assert await env.count("upstream_pending") == 0


@async_test
async def test_wrong_issuer_in_token(env: Env) -> None:
    """An ID token from another issuer is refused."""
    env.fake.behaviour.claims = {"iss": "https://evil.example"}
    assert "wrong issuer" in await refused(env, "bad_issuer")


@async_test
async def test_wrong_issuer_in_redirect(env: Env) -> None:
    """An iss parameter (RFC 9207) naming another issuer is refused before the code is used."""
    params, browser = await env.begin()
    params["iss"] = "https://evil.example"
    with pytest.raises(UpstreamError) as info:
        await env.service.finish("fake", params, browser, None)
    assert info.value.reason == "bad_issuer"
    assert env.fake.used_codes == set()
    await env.nothing_created()


@async_test
async def test_bad_signature(env: Env) -> None:
    """A token signed by a key other than the one published under its kid is refused."""
    env.fake.behaviour.signing_key = new_key()
    assert "signature is wrong" in await refused(env, "bad_signature")


@async_test
async def test_symmetric_and_unsigned_tokens(env: Env) -> None:
    """HS256 (the client secret as a key) and alg none are never accepted."""
    original = env.fake.id_token

    def hs256(code: str) -> str:
        claims = jwt.decode(original(code), options={"verify_signature": False})
        return jwt.encode(claims, "shared-secret-long-enough-for-hs256!", algorithm="HS256")

    env.fake.id_token = hs256  # type: ignore[method-assign]
    await refused(env, "bad_alg")

    def unsigned(code: str) -> str:
        claims = jwt.decode(original(code), options={"verify_signature": False})
        return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]

    env.fake.id_token = unsigned  # type: ignore[method-assign]
    await refused(env, "bad_alg")


@async_test
async def test_expired_token(env: Env) -> None:
    """A token that expired (beyond the skew) is refused."""
    import time

    now = int(time.time())
    env.fake.behaviour.claims = {"exp": now - 600, "iat": now - 900}
    assert "expired" in await refused(env, "expired")


@async_test
async def test_token_from_the_future(env: Env) -> None:
    """A token issued in the future (beyond the skew) is refused."""
    import time

    env.fake.behaviour.claims = {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}
    await refused(env, "bad_times")


@async_test
async def test_token_for_another_client(env: Env) -> None:
    """A token whose audience is another client is refused."""
    env.fake.behaviour.claims = {"aud": "someone-else"}
    await refused(env, "bad_audience")


@async_test
async def test_nonce_mismatch(env: Env) -> None:
    """A token carrying another sign-in's nonce is refused."""
    env.fake.behaviour.claims = {"nonce": "another-sign-in"}
    await refused(env, "bad_nonce")
    env.fake.behaviour.claims = {}
    env.fake.behaviour.drop_claims = ("nonce",)
    await refused(env, "bad_nonce")


@async_test
async def test_state_mismatch(env: Env) -> None:
    """An unknown state, or a state from another browser, is refused before any exchange."""
    params, browser = await env.begin()
    with pytest.raises(FlowError) as info:
        await env.service.finish("fake", {**params, "state": "forged"}, browser, None)
    assert info.value.reason == "unknown_state"
    with pytest.raises(FlowError) as info:
        await env.service.finish("fake", params, secrets.token_urlsafe(32), None)
    assert info.value.reason == "wrong_browser"
    assert env.fake.used_codes == set()
    await env.nothing_created()


@async_test
async def test_replayed_code(env: Env) -> None:
    """A code the provider already redeemed is refused by it, and we stop."""
    first, browser = await env.begin(code="the-code")
    await env.service.finish("fake", first, browser, None)
    second, browser = await env.begin(code="the-code")
    with pytest.raises(UpstreamError) as info:
        await env.service.finish("fake", second, browser, None)
    assert info.value.reason == "code_refused"
    assert await env.count("accounts") == 1


@async_test
async def test_person_declines(env: Env) -> None:
    """access_denied from the provider is a clear refusal and creates nothing."""
    params, browser = await env.begin()
    with pytest.raises(FlowError) as info:
        await env.service.finish(
            "fake", {"state": params["state"], "error": "access_denied"}, browser, None
        )
    assert info.value.reason == "access_denied"
    await env.nothing_created()


@async_test
async def test_provider_down(env: Env) -> None:
    """A provider that stopped listening after the start is reported unreachable."""
    params, browser = await env.begin()
    await env.port.stopListening()
    env.fake.drop_connections()
    with pytest.raises(UpstreamError) as info:
        await env.service.finish("fake", params, browser, None)
    # The discovery document is cached; the token request finds nobody.
    assert info.value.reason == "unreachable"
    assert "cannot be reached" in info.value.message
    await env.nothing_created()


@async_test
async def test_provider_down_from_the_start(env: Env) -> None:
    """A provider that is down when the person presses its button: a clear refusal."""
    await env.port.stopListening()
    with pytest.raises(UpstreamError) as info:
        await env.service.start("fake", "signin", None, "/account", None)
    assert info.value.reason == "unreachable"
    assert await env.count("upstream_pending") == 0


@async_test
async def test_provider_slow(env: Env) -> None:
    """A token endpoint that never answers times out (0.5 s here)."""
    env.fake.behaviour.hang = {"/token"}
    assert "did not answer in time" in await refused(env, "timeout")


@async_test
async def test_oversized_response(env: Env) -> None:
    """A key set larger than max_response_bytes is not read."""
    env.fake.behaviour.oversize = {"/jwks"}
    await refused(env, "too_large")


@async_test
async def test_malformed_responses(env: Env) -> None:
    """Non-JSON, or JSON of the wrong shape, from the token endpoint stops the sign-in."""
    env.fake.behaviour.malformed = {"/token"}
    await refused(env, "malformed")
    env.fake.behaviour.malformed = set()
    env.fake.behaviour.token_answer = b'{"access_token": "x", "token_type": "Bearer"}'
    await refused(env, "malformed_token")
    env.fake.behaviour.token_answer = b"[1, 2, 3]"
    await refused(env, "malformed")
    env.fake.behaviour.token_answer = b'{"access_token": "x", "id_token": "not.a.jwt"}'
    await refused(env, "malformed_token")
    env.fake.behaviour.token_answer = b"{}"
    env.fake.behaviour.token_status = 500
    await refused(env, "server_error")


@async_test
async def test_userinfo_about_someone_else(env: Env) -> None:
    """Userinfo for a different subject than the ID token's stops the sign-in."""
    env.fake.behaviour.userinfo = {"sub": "someone-else", "email": "x@example.test"}
    await refused(env, "bad_subject")


@async_test
async def test_key_rotation(sqlite_storage: AdbapiStorage, ca: TestCA, tmp_path: Path) -> None:
    """
    A token signed with a newly published key makes us refetch the key set
    once and succeed; an unknown key id soon after does not refetch again
    (rate limit) and is refused; a minute later it may refetch again.
    """
    offset = [0.0]
    env = make_env(sqlite_storage, ca, tmp_path, FakeProvider(), lambda: time.time() + offset[0])
    try:
        await env.attempt()
        assert env.fake.jwks_fetches == 1
        offset[0] += 61
        env.fake.behaviour.published.append(("k2", new_key()))
        env.fake.behaviour.signing_kid = "k2"
        finished = await env.attempt()
        assert finished.outcome == "signed_in"
        assert env.fake.jwks_fetches == 2
        env.fake.behaviour.signing_kid = "k9"
        env.fake.behaviour.signing_key = new_key()
        with pytest.raises(UpstreamError) as info:
            await env.attempt()
        assert info.value.reason == "unknown_key"
        assert env.fake.jwks_fetches == 2
        offset[0] += 61
        with pytest.raises(UpstreamError) as info:
            await env.attempt()
        assert info.value.reason == "unknown_key"
        assert env.fake.jwks_fetches == 3
    finally:
        await env.port.stopListening()


@async_test
async def test_untrusted_certificate(
    sqlite_storage: AdbapiStorage, ca: TestCA, tmp_path: Path
) -> None:
    """A provider whose certificate our CA bundle does not vouch for is refused."""
    other_ca = make_ca(tmp_path / "other-ca")
    fake = FakeProvider()
    env = make_env(sqlite_storage, other_ca, tmp_path, fake)
    try:
        # Serve with other_ca's certificate but trust only the module's CA.
        settings = parse(
            {
                "node": {"data_dir": str(tmp_path)},
                "upstream": {
                    "ca_bundle": str(ca.ca_pem),
                    "timeout": 2.0,
                    "provider": [
                        {
                            "name": "fake",
                            "kind": "oidc",
                            "issuer": fake.issuer,
                            "client_id": CLIENT_ID,
                        }
                    ],
                },
            }
        )
        service = UpstreamService(
            sqlite_storage,
            settings.upstream,
            build_connectors(global_reactor(), settings),
            settings.base_url,
        )
        with pytest.raises(UpstreamError) as info:
            await service.start("fake", "signin", None, "/account", None)
        assert info.value.reason == "tls"
    finally:
        await env.port.stopListening()

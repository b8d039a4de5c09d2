"""
ID token checks as pure functions of the token, the expectations and the
time; the key cache with a fake fetch and a task.Clock.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from clickpass.upstream.http import UpstreamError
from clickpass.upstream.tokens import (
    MICROSOFT_CONSUMERS_TENANT,
    Expectations,
    KeyCache,
    check_claims,
    validate_id_token,
)

NOW = 1_700_000_000
MS_TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": "https://op.example",
        "sub": "s1",
        "aud": "client",
        "exp": NOW + 300,
        "iat": NOW,
        "nonce": "n1",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def expect(**changes: Any) -> Expectations:
    values: dict[str, Any] = {
        "issuer": "https://op.example",
        "client_id": "client",
        "nonce": "n1",
        "now": NOW,
        "skew": 120,
    }
    values.update(changes)
    return Expectations(**values)


def reason(c: dict[str, Any], e: Expectations) -> str:
    with pytest.raises(UpstreamError) as info:
        check_claims("OP", c, e)
    return info.value.reason


def test_good_claims_pass() -> None:
    """A token that says what we expect passes, within the skew on both sides."""
    check_claims("OP", claims(), expect())
    check_claims("OP", claims(exp=NOW - 100), expect())
    check_claims("OP", claims(iat=NOW + 100), expect())
    check_claims("OP", claims(aud=["client", "other"], azp="client"), expect())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"iss": "https://evil.example"}, "bad_issuer"),
        ({"aud": "other"}, "bad_audience"),
        ({"aud": ["client", "other"]}, "bad_audience"),
        ({"azp": "other"}, "bad_audience"),
        ({"exp": NOW - 121}, "expired"),
        ({"iat": NOW + 121}, "bad_times"),
        ({"iat": NOW - 4000, "exp": NOW + 10}, "expired"),
        ({"nbf": NOW + 500}, "bad_times"),
        ({"exp": "soon"}, "bad_times"),
        ({"exp": None}, "bad_times"),
        ({"nonce": "n2"}, "bad_nonce"),
        ({"nonce": None}, "bad_nonce"),
        ({"sub": ""}, "bad_subject"),
    ],
)
def test_bad_claims_are_refused(change: dict[str, Any], why: str) -> None:
    """Each wrong claim is refused with its own reason."""
    assert reason(claims(**change), expect()) == why


def test_microsoft_common_tenant_issuer() -> None:
    """
    For the common endpoint the issuer is a template: the token's tid fills
    it in, and a token naming one tenant but claiming another's issuer fails.
    """
    e = expect(issuer=MS_TEMPLATE, tenant_mode="common")
    tid = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    good = claims(iss=f"https://login.microsoftonline.com/{tid}/v2.0", tid=tid)
    check_claims("Microsoft", good, e)
    assert reason({**good, "tid": "11111111-1111-1111-1111-111111111111"}, e) == "bad_issuer"
    assert reason({k: v for k, v in good.items() if k != "tid"}, e) == "bad_issuer"
    assert reason({**good, "iss": MS_TEMPLATE}, e) == "bad_issuer"


def test_microsoft_organizations_refuses_personal_accounts() -> None:
    """The organizations tenant refuses a token from the personal-accounts tenant."""
    tid = MICROSOFT_CONSUMERS_TENANT
    c = claims(iss=f"https://login.microsoftonline.com/{tid}/v2.0", tid=tid)
    check_claims("Microsoft", c, expect(issuer=MS_TEMPLATE, tenant_mode="common"))
    assert reason(c, expect(issuer=MS_TEMPLATE, tenant_mode="organizations")) == "bad_issuer"


def test_google_issuer_without_scheme() -> None:
    """Google's documented alternate issuer is accepted only where configured."""
    c = claims(iss="accounts.google.com")
    check_claims(
        "Google",
        c,
        expect(issuer="https://accounts.google.com", alternate_issuers=("accounts.google.com",)),
    )
    assert reason(c, expect(issuer="https://accounts.google.com")) == "bad_issuer"


def settled(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that must have finished (the error itself if it failed)."""
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "it did not finish"
    return results[0].value if isinstance(results[0], Failure) else results[0]


def _jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    return dict(jwk)


def test_key_cache_refetches_unknown_kid_at_most_once_per_interval() -> None:
    """
    A token under an unknown kid makes the cache refetch, but not again
    until the interval has passed on the clock; a token with a known key
    needs no fetch at all.
    """
    clock = Clock()
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    published = [_jwk(old, "old")]
    fetches: list[float] = []

    async def fetch() -> dict[str, Any]:
        fetches.append(clock.seconds())
        return {"keys": list(published)}

    cache = KeyCache("OP", fetch, clock.seconds, refetch_interval=60)
    e = expect(now=NOW, algorithms=frozenset({"ES256"}))

    def run(key: ec.EllipticCurvePrivateKey, kid: str) -> Any:
        token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": kid})
        return settled(validate_id_token("OP", token, cache, e))

    assert run(old, "old")["sub"] == "s1"
    assert fetches == [0]
    published.append(_jwk(new, "new"))
    assert run(new, "new").reason == "unknown_key"
    assert fetches == [0]
    clock.advance(60)
    assert run(new, "new")["sub"] == "s1"
    assert fetches == [0, 60]
    assert run(old, "old")["sub"] == "s1"
    assert fetches == [0, 60]


def test_concurrent_refetches_share_one_fetch_and_its_failure() -> None:
    """Two tokens meeting an empty cache at once cause one fetch; its failure reaches both."""
    pending: Deferred[dict[str, Any]] = Deferred()
    calls: list[int] = []

    async def fetch() -> dict[str, Any]:
        calls.append(1)
        return await pending

    cache = KeyCache("OP", fetch, Clock().seconds, refetch_interval=60)
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "k"})
    e = expect(algorithms=frozenset({"ES256"}))
    results: list[Any] = []
    for _ in range(2):
        Deferred.fromCoroutine(validate_id_token("OP", token, cache, e)).addBoth(results.append)
    assert calls == [1] and results == []
    pending.callback({"keys": "not a list"})
    assert [r.value.reason for r in results] == ["malformed_jwks", "malformed_jwks"]


def test_signature_by_another_key_under_a_known_kid() -> None:
    """A known kid does not make a signature by another key acceptable."""
    clock = Clock()
    good, forger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    async def fetch() -> dict[str, Any]:
        return {"keys": [_jwk(good, "k")]}

    cache = KeyCache("OP", fetch, clock.seconds, refetch_interval=60)
    token = jwt.encode(claims(), forger, algorithm="ES256", headers={"kid": "k"})
    e = expect(algorithms=frozenset({"ES256"}))
    assert settled(validate_id_token("OP", token, cache, e)).reason == "bad_signature"

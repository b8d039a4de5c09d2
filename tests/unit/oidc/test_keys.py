"""
The signing keys' life on injected times, in a migrated in-memory SQLite
database: first keys, rotation (published before signing), retirement
(published until every token has expired), removal; sealing under the
master secret; the JWKS document; no C{alg: none} anywhere.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from functools import cache

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from clickpass.oidc import keys
from clickpass.oidc.keys import KeyBox, KeyPolicy, NewKey, SigningKey
from clickpass.storage import migrations
from clickpass.storage.sql import Dialect, DirectStorage, Transaction

NOW = 1_700_000_000
SECRET = bytes(range(32))
POLICY = KeyPolicy(publication_delay=3600, longest_token_lifetime=600)


@pytest.fixture
def storage() -> Iterator[DirectStorage]:
    connection = sqlite3.connect(":memory:")
    storage = DirectStorage(connection, Dialect("sqlite"), "sqlite :memory:")
    for migration in migrations.MIGRATIONS:
        storage.run_blocking(migrations._apply, migration, NOW)
    try:
        yield storage
    finally:
        storage.close()


@cache
def new_key(alg: str, n: int) -> NewKey:
    """The n-th key of alg (RSA generation is slow: each is made once per run)."""
    return keys.generate(alg, KeyBox(SECRET))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def first_keys(storage: DirectStorage, now: int = NOW) -> dict[str, SigningKey]:
    return {
        alg: storage.run_blocking(keys.insert_first, new_key(alg, 0), now)
        for alg in keys.ALGORITHMS
    }


def states(storage: DirectStorage) -> dict[str, str]:
    return {k.kid: k.state for k in storage.run_blocking(keys.read_keys, True)}


def sealed_private_key(storage: DirectStorage, kid: str) -> bytes:
    def read(tx: Transaction) -> bytes:
        return bytes(tx.scalar("SELECT private_key FROM oidc_signing_keys WHERE kid = ?", kid))

    return storage.run_blocking(read)


def advance(storage: DirectStorage, now: int) -> list[SigningKey]:
    return storage.run_blocking(keys.advance, now, POLICY)


def test_first_keys_are_current_and_a_second_first_key_is_ignored(storage: DirectStorage) -> None:
    """
    The first key of each algorithm signs at once; another node's first
    key for the same algorithm, inserted later, is dropped and the one
    current key is returned to it.
    """
    first = first_keys(storage)
    assert {a: k.state for a, k in first.items()} == {"RS256": "current", "ES256": "current"}
    assert first["RS256"].signs_from == NOW
    again = storage.run_blocking(keys.insert_first, new_key("RS256", 1), NOW + 1)
    assert again.kid == first["RS256"].kid
    assert new_key("RS256", 1).kid not in states(storage)
    assert keys.missing_algorithms(advance(storage, NOW + 2)) == []


def test_a_rotated_key_is_published_first_and_signs_after_the_delay(
    storage: DirectStorage,
) -> None:
    """
    rotate publishes a next key that does not sign; at signs_from it becomes
    current and the old key retires, published until the promotion time
    plus the longest token lifetime; then it is removed, its private key
    erased, and no longer published.
    """
    old = first_keys(storage)["RS256"]
    waiting, created = storage.run_blocking(keys.insert_next, new_key("RS256", 2), NOW + 10, POLICY)
    assert created and waiting.state == "next"
    assert waiting.signs_from == NOW + 10 + POLICY.publication_delay
    published = [k["kid"] for k in keys.jwks_document(advance(storage, NOW + 11))["keys"]]
    assert waiting.kid in published and old.kid in published
    before = advance(storage, waiting.signs_from - 1)
    assert keys.current_key(before, "RS256") == old

    promoted_at = waiting.signs_from + 5
    after = advance(storage, promoted_at)
    current = keys.current_key(after, "RS256")
    assert current is not None and current.kid == waiting.kid
    (retired,) = [k for k in after if k.kid == old.kid]
    assert retired.state == "retired"
    assert retired.retired == promoted_at
    assert retired.retire_after == promoted_at + POLICY.longest_token_lifetime
    assert old.kid in [k["kid"] for k in keys.jwks_document(after)["keys"]]

    assert states(storage)[old.kid] == "retired"
    still = advance(storage, retired.retire_after - 1)
    assert old.kid in [k["kid"] for k in keys.jwks_document(still)["keys"]]
    gone = advance(storage, retired.retire_after)
    assert old.kid not in [k["kid"] for k in keys.jwks_document(gone)["keys"]]
    assert states(storage)[old.kid] == "removed"
    assert sealed_private_key(storage, old.kid) == b""


def test_a_second_rotate_keeps_the_key_that_already_waits(storage: DirectStorage) -> None:
    """Rotating while a next key waits returns that key (not created) and adds none."""
    first_keys(storage)
    waiting, _ = storage.run_blocking(keys.insert_next, new_key("ES256", 3), NOW, POLICY)
    again, created = storage.run_blocking(keys.insert_next, new_key("ES256", 4), NOW + 5, POLICY)
    assert not created and again.kid == waiting.kid
    assert again.signs_from == NOW + POLICY.publication_delay
    assert new_key("ES256", 4).kid not in states(storage)


def test_promotion_and_removal_happen_once(storage: DirectStorage) -> None:
    """Advancing twice at the same time (two nodes) changes nothing the second time."""
    old = first_keys(storage)["ES256"]
    waiting, _ = storage.run_blocking(keys.insert_next, new_key("ES256", 5), NOW, POLICY)
    at = waiting.signs_from
    first = advance(storage, at)
    second = advance(storage, at + 1)
    assert first == second
    (retired,) = [k for k in second if k.kid == old.kid]
    assert retired.retire_after == at + POLICY.longest_token_lifetime
    assert storage.run_blocking(keys.remove_expired, retired.retire_after) == 1
    assert storage.run_blocking(keys.remove_expired, retired.retire_after + 1) == 0


def test_each_algorithm_rotates_on_its_own(storage: DirectStorage) -> None:
    """Promoting the RS256 next key leaves the ES256 current key signing."""
    first = first_keys(storage)
    waiting, _ = storage.run_blocking(keys.insert_next, new_key("RS256", 6), NOW, POLICY)
    after = advance(storage, waiting.signs_from)
    assert keys.current_key(after, "ES256") == first["ES256"]
    assert {k.state for k in after if k.alg == "ES256"} == {"current"}


def test_the_jwks_document_holds_public_keys_only() -> None:
    """kid, use sig and alg on each; RSA 2048 and P-256; no private member."""
    rs = new_key("RS256", 0)
    es = new_key("ES256", 0)
    made = [SigningKey(k.kid, k.alg, "current", k.public_jwk, k.sealed, NOW, NOW) for k in (rs, es)]
    document = keys.jwks_document(made)
    by_alg = {k["alg"]: k for k in document["keys"]}
    assert set(by_alg["RS256"]) == {"kty", "n", "e", "kid", "use", "alg"}
    assert set(by_alg["ES256"]) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert by_alg["ES256"]["crv"] == "P-256"
    assert all(k["use"] == "sig" for k in document["keys"])
    rsa_key = jwt.PyJWK(by_alg["RS256"]).key
    assert rsa_key.key_size == 2048
    assert by_alg["RS256"]["kid"] == keys.thumbprint(by_alg["RS256"])


def test_a_private_key_unseals_only_under_its_secret_and_its_kid() -> None:
    """
    The sealed key is not the key in clear; another master secret, or the
    same sealed bytes presented as another kid, give one clear error.
    """
    made = new_key("ES256", 0)
    key = SigningKey(made.kid, made.alg, "current", made.public_jwk, made.sealed, NOW, NOW)
    private = keys.load_private_key(key, KeyBox(SECRET))
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert der not in made.sealed
    with pytest.raises(keys.KeyDecryptionError) as wrong:
        keys.load_private_key(key, KeyBox(b"another secret" * 3))
    message = str(wrong.value)
    assert "\n" not in message
    assert message.startswith(f"the private key of OpenID Connect signing key {made.kid} cannot")
    assert "[secrets] secret_file" in message
    swapped = SigningKey("another-kid", made.alg, "current", made.public_jwk, made.sealed, NOW, NOW)
    with pytest.raises(keys.KeyDecryptionError):
        keys.load_private_key(swapped, KeyBox(SECRET))


def test_alg_none_is_never_a_signing_algorithm_nor_accepted() -> None:
    """No key is made for none, and a token with alg none does not verify against the JWKS."""
    with pytest.raises(keys.UnknownAlgorithm):
        keys.generate("none", KeyBox(SECRET))
    with pytest.raises(keys.UnknownAlgorithm):
        keys.check_algorithm("HS256")
    made = new_key("RS256", 0)
    published = keys.jwks_document(
        [SigningKey(made.kid, made.alg, "current", made.public_jwk, made.sealed, NOW, NOW)]
    )
    header = json.dumps({"alg": "none", "typ": "JWT", "kid": made.kid}).encode()
    payload = json.dumps({"sub": "x"}).encode()
    unsigned = b64(header) + "." + b64(payload) + "."
    with pytest.raises(keys.UnknownAlgorithm):
        keys.verify(unsigned, published)


def test_a_token_verifies_only_with_the_algorithm_its_key_is_published_for() -> None:
    """A token that names RS256 but the ES256 key's kid is refused."""
    rs, es = new_key("RS256", 0), new_key("ES256", 0)
    published = keys.jwks_document(
        [SigningKey(k.kid, k.alg, "current", k.public_jwk, k.sealed, NOW, NOW) for k in (rs, es)]
    )
    rs_key = SigningKey(rs.kid, rs.alg, "current", rs.public_jwk, rs.sealed, NOW, NOW)
    private = keys.load_private_key(rs_key, KeyBox(SECRET))
    good = jwt.encode({"sub": "x"}, private, algorithm="RS256", headers={"kid": rs.kid})
    assert keys.verify(good, published) == {"sub": "x"}
    confused = jwt.encode({"sub": "x"}, private, algorithm="RS256", headers={"kid": es.kid})
    with pytest.raises(jwt.InvalidAlgorithmError):
        keys.verify(confused, published)

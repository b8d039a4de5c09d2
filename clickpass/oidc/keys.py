"""
The OpenID Connect provider's signing keys: one RS256 key (RSA 2048,
mandatory) and one ES256 key (P-256) that sign, generated on first need,
kept in the database (table C{oidc_signing_keys}) so that every node of a
cluster signs with the same keys, the private half sealed with AES-256-GCM
under a key derived (HKDF-SHA256) from the cluster's master secret.

A key goes through four states, one way:

  - C{next}: published in the JWKS document, not yet signing, so that
    relying parties that cache the document know it before they see a
    token it signed (C{rotate} makes one; it signs from C{signs_from});
  - C{current}: signs; exactly one per algorithm, which the database
    enforces (the unique C{current_for} column), so that two nodes that
    generate the first key at once end up with one of them;
  - C{retired}: published, no longer signing, until C{retire_after}, when
    every token it signed has expired;
  - C{removed}: no longer published; its private key is erased.

Every function that depends on time takes C{now} (integer seconds since
the epoch). The transaction functions (C{tx} first) run in
L{Storage.run}; the blocking ones (key generation, unsealing) must run off
the reactor thread, as L{SigningKeys} does.

This module must never publish, return or log a private key or the key
that seals it, and never sign with C{alg: none} or with a key that is not
C{current}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool

from clickpass.storage.sql import Row, Storage, Transaction

if TYPE_CHECKING:
    from jwt.types import Options

T = TypeVar("T")

Algorithm = Literal["RS256", "ES256"]
ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256")
State = Literal["next", "current", "retired", "removed"]
PUBLISHED_STATES: tuple[State, ...] = ("current", "next", "retired")

RSA_BITS = 2048
SEAL_VERSION = b"\x01"
NONCE_BYTES = 12
HKDF_INFO = b"clickpass oidc signing keys v1"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SigningKeyError(Exception):
    """Base of this module's errors; the message is one line for operators."""


class UnknownAlgorithm(SigningKeyError, ValueError):
    """An algorithm that Clickpass does not sign with (C{none} is one)."""


class KeyDecryptionError(SigningKeyError):
    """A stored private key cannot be unsealed with this node's master secret."""


class NoSigningKey(SigningKeyError):
    """No key is current for an algorithm (should not outlive L{SigningKeys.ensure})."""


def check_algorithm(alg: str) -> Algorithm:
    """C{alg} if Clickpass signs with it, else L{UnknownAlgorithm}."""
    for known in ALGORITHMS:
        if alg == known:
            return known
    raise UnknownAlgorithm(
        f"unknown signing algorithm {alg!r}; Clickpass signs with {', '.join(ALGORITHMS)}"
    )


@dataclass(frozen=True)
class KeyPolicy:
    """How keys rotate."""

    # How long a new key is published before it signs: relying parties
    # cache the JWKS document, commonly for up to a day.
    publication_delay: int = 86400
    # How long a retired key stays published: at least the lifetime of the
    # longest-lived token it can have signed.
    longest_token_lifetime: int = 86400


# ---------------------------------------------------------------------------
# Sealing the private keys under the master secret.
# ---------------------------------------------------------------------------


class KeyBox:
    """
    Seals and unseals private keys with AES-256-GCM under a key derived
    from the master secret; each sealed key is bound to its kid and
    algorithm (the associated data), so a row cannot be passed off as
    another.
    """

    def __init__(self, master_secret: bytes) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(
            master_secret
        )
        self._aead = AESGCM(derived)

    @staticmethod
    def _bound_to(kid: str, alg: str) -> bytes:
        return b"clickpass oidc signing key\0" + kid.encode("ascii") + b"\0" + alg.encode("ascii")

    def seal(self, kid: str, alg: str, private_der: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return (
            SEAL_VERSION + nonce + self._aead.encrypt(nonce, private_der, self._bound_to(kid, alg))
        )

    def unseal(self, kid: str, alg: str, sealed: bytes) -> bytes:
        if sealed[:1] != SEAL_VERSION or len(sealed) < 1 + NONCE_BYTES + 16:
            raise KeyDecryptionError(f"the stored private key of signing key {kid} is malformed")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, self._bound_to(kid, alg))
        except InvalidTag:
            raise KeyDecryptionError(
                f"the private key of OpenID Connect signing key {kid} cannot be decrypted with "
                "this node's master secret ([secrets] secret_file); every node must use the "
                "secret the database was created with"
            ) from None


# ---------------------------------------------------------------------------
# Keys.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """One row of C{oidc_signing_keys}."""

    kid: str
    alg: Algorithm
    state: State
    public_jwk: Mapping[str, str]
    sealed: bytes = field(repr=False)
    created: int
    signs_from: int
    retired: int = 0
    retire_after: int = 0
    removed: int = 0

    def jwk(self) -> dict[str, str]:
        """The public key as published: C{kid}, C{use: sig}, C{alg}."""
        return {**self.public_jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def describe(self) -> dict[str, Any]:
        """For operators: everything but the key material."""
        return {
            "kid": self.kid,
            "alg": self.alg,
            "state": self.state,
            "created": self.created,
            "signs_from": self.signs_from,
            "retired": self.retired,
            "retire_after": self.retire_after,
            "removed": self.removed,
        }


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key, sealed, not yet stored."""

    kid: str
    alg: Algorithm
    public_jwk: Mapping[str, str]
    sealed: bytes = field(repr=False)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(public_jwk: Mapping[str, str]) -> str:
    """The key's RFC 7638 JWK thumbprint (SHA-256), used as its kid."""
    members = ("e", "kty", "n") if public_jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: public_jwk[m] for m in members}, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode("ascii")).digest())


def generate(alg: str, box: KeyBox) -> NewKey:
    """A new key for C{alg}, sealed by C{box}. Blocking (RSA generation): off the reactor."""
    algorithm = check_algorithm(alg)
    private: PrivateKey
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        public = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        public = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    public_jwk = {k: str(v) for k, v in public.items() if k in ("kty", "n", "e", "crv", "x", "y")}
    kid = thumbprint(public_jwk)
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return NewKey(kid, algorithm, public_jwk, box.seal(kid, algorithm, der))


def load_private_key(key: SigningKey, box: KeyBox) -> PrivateKey:
    """Unseal C{key}'s private half. Blocking (key checks): off the reactor."""
    loaded = serialization.load_der_private_key(box.unseal(key.kid, key.alg, key.sealed), None)
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyDecryptionError(f"signing key {key.kid} holds an unexpected kind of key")
    return loaded


# ---------------------------------------------------------------------------
# Pure decisions on a set of keys at a time.
# ---------------------------------------------------------------------------


def current_key(keys: Sequence[SigningKey], alg: str) -> SigningKey | None:
    return next((k for k in keys if k.alg == alg and k.state == "current"), None)


def next_key(keys: Sequence[SigningKey], alg: str) -> SigningKey | None:
    return next((k for k in keys if k.alg == alg and k.state == "next"), None)


def due_for_promotion(keys: Sequence[SigningKey], now: int) -> list[SigningKey]:
    """The C{next} keys whose publication delay is over at C{now}."""
    return [k for k in keys if k.state == "next" and k.signs_from <= now]


def due_for_removal(keys: Sequence[SigningKey], now: int) -> list[SigningKey]:
    """The C{retired} keys that no unexpired token can have been signed by at C{now}."""
    return [k for k in keys if k.state == "retired" and k.retire_after <= now]


def missing_algorithms(keys: Sequence[SigningKey]) -> list[Algorithm]:
    """The algorithms with no C{current} key."""
    return [alg for alg in ALGORITHMS if current_key(keys, alg) is None]


def jwks_document(keys: Sequence[SigningKey]) -> dict[str, list[dict[str, str]]]:
    """
    The JWKS document: the public keys that are current, next or retired
    (current first), never a private member.
    """
    order = {state: i for i, state in enumerate(PUBLISHED_STATES)}
    published = sorted(
        (k for k in keys if k.state in order), key=lambda k: (order[k.state], k.alg, k.created)
    )
    return {"keys": [k.jwk() for k in published]}


# ---------------------------------------------------------------------------
# Transactions.
# ---------------------------------------------------------------------------

_COLUMNS = (
    "kid, alg, state, public_jwk, private_key, created, signs_from, retired, retire_after, removed"
)


def _key(row: Row) -> SigningKey:
    return SigningKey(
        kid=str(row[0]),
        alg=check_algorithm(str(row[1])),
        state=_state(str(row[2])),
        public_jwk=json.loads(row[3]),
        sealed=bytes(row[4]),
        created=int(row[5]),
        signs_from=int(row[6]),
        retired=int(row[7]),
        retire_after=int(row[8]),
        removed=int(row[9]),
    )


def _state(text: str) -> State:
    for state in ("next", "current", "retired", "removed"):
        if text == state:
            return state
    raise ValueError(f"unknown signing key state {text!r}")


def read_keys(tx: Transaction, include_removed: bool = False) -> list[SigningKey]:
    """Every key (without the removed ones unless asked), oldest first."""
    where = "" if include_removed else " WHERE state <> 'removed'"
    rows = tx.fetchall(f"SELECT {_COLUMNS} FROM oidc_signing_keys{where} ORDER BY created, kid")
    return [_key(r) for r in rows]


def advance(tx: Transaction, now: int, policy: KeyPolicy) -> list[SigningKey]:
    """
    Promote the C{next} keys whose delay is over (the algorithm's current
    key retires, published until C{now} plus the longest token lifetime),
    remove the retired keys whose time is over, and return the keys. Two
    nodes doing this at once both succeed and change each key once: every
    change is conditional on the state it starts from.
    """
    keys = read_keys(tx)
    for key in due_for_promotion(keys, now):
        claimed = tx.execute(
            "UPDATE oidc_signing_keys SET state = 'current', next_for = NULL "
            "WHERE kid = ? AND state = 'next'",
            key.kid,
        )
        if not claimed:
            continue  # another node promoted it first
        # current_for is unique: the old key lets go of it before the new
        # one takes it.
        tx.execute(
            "UPDATE oidc_signing_keys SET state = 'retired', current_for = NULL, retired = ?, "
            "retire_after = ? WHERE current_for = ?",
            now,
            now + policy.longest_token_lifetime,
            key.alg,
        )
        tx.execute("UPDATE oidc_signing_keys SET current_for = ? WHERE kid = ?", key.alg, key.kid)
    for key in due_for_removal(keys, now):
        tx.execute(
            "UPDATE oidc_signing_keys SET state = 'removed', private_key = ?, removed = ? "
            "WHERE kid = ? AND state = 'retired'",
            b"",
            now,
            key.kid,
        )
    return read_keys(tx)


def remove_expired(tx: Transaction, now: int) -> int:
    """Remove the retired keys whose C{retire_after} is over; return how many."""
    return tx.execute(
        "UPDATE oidc_signing_keys SET state = 'removed', private_key = ?, removed = ? "
        "WHERE state = 'retired' AND retire_after <= ?",
        b"",
        now,
        now,
    )


def _insert(
    tx: Transaction, key: NewKey, state: State, slot: str, now: int, signs_from: int
) -> int:
    # slot is current_for or next_for: unique, so a second key for the same
    # algorithm and state is ignored, whichever node inserts it.
    return tx.execute(
        tx.dialect.insert_ignore() + " INTO oidc_signing_keys "
        f"(kid, alg, state, {slot}, public_jwk, private_key, created, signs_from) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        key.kid,
        key.alg,
        state,
        key.alg,
        json.dumps(dict(key.public_jwk), separators=(",", ":")),
        key.sealed,
        now,
        signs_from,
    )


def insert_first(tx: Transaction, key: NewKey, now: int) -> SigningKey:
    """
    Make C{key} its algorithm's current key unless one already is (another
    node was first), and return the current key.
    """
    _insert(tx, key, "current", "current_for", now, now)
    current = current_key(read_keys(tx), key.alg)
    if current is None:  # pragma: no cover - the insert or another's is there
        raise NoSigningKey(f"no {key.alg} signing key after inserting one")
    return current


def insert_next(
    tx: Transaction, key: NewKey, now: int, policy: KeyPolicy
) -> tuple[SigningKey, bool]:
    """
    Publish C{key} as its algorithm's next key, signing from C{now} plus
    the publication delay, unless a next key already waits; return the next
    key and whether it is C{key}.
    """
    inserted = _insert(tx, key, "next", "next_for", now, now + policy.publication_delay)
    waiting = next_key(read_keys(tx), key.alg)
    if waiting is None:  # pragma: no cover - the insert or another's is there
        raise NoSigningKey(f"no {key.alg} next key after inserting one")
    return waiting, bool(inserted)


# ---------------------------------------------------------------------------
# The service a node (and later the provider's endpoints) uses.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    """What C{rotate} did for one algorithm."""

    key: SigningKey
    created: bool  # False: a next key already waited, and it is this one


class SigningKeys:
    """
    The keys of one node: read, promoted and generated on first need in the
    shared database; private keys unsealed once and kept in memory.
    """

    def __init__(
        self,
        reactor: IReactorThreads,
        clock: IReactorTime,
        storage: Storage,
        master_secret: bytes,
        policy: KeyPolicy = KeyPolicy(),
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._storage = storage
        self._box = KeyBox(master_secret)
        self.policy = policy
        self._private: dict[str, PrivateKey] = {}

    def _now(self) -> int:
        return int(self._clock.seconds())

    def _blocking(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    async def ensure(self) -> list[SigningKey]:
        """
        The keys now, after promoting and removing what is due and
        generating a current key for every algorithm that has none.
        """
        now = self._now()
        keys = await self._storage.run(advance, now, self.policy)
        missing = missing_algorithms(keys)
        for alg in missing:
            new = await self._blocking(generate, alg, self._box)
            await self._storage.run(insert_first, new, now)
        if missing:
            keys = await self._storage.run(read_keys)
        return keys

    async def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document to publish now."""
        return jwks_document(await self.ensure())

    async def rotate(self, algorithms: Sequence[str] = ALGORITHMS) -> list[Rotation]:
        """Publish a next key for each of C{algorithms} (or keep the one that waits)."""
        checked = [check_algorithm(alg) for alg in algorithms]
        keys = await self.ensure()
        done = []
        for alg in checked:
            waiting = next_key(keys, alg)
            if waiting is not None:
                done.append(Rotation(waiting, False))
                continue
            new = await self._blocking(generate, alg, self._box)
            key, created = await self._storage.run(insert_next, new, self._now(), self.policy)
            done.append(Rotation(key, created))
        return done

    async def all_keys(self) -> list[SigningKey]:
        """Every key, the removed ones too, after what is due now."""
        await self.ensure()
        return await self._storage.run(read_keys, True)

    async def housekeeping(self, now: int) -> int:
        """Remove the retired keys whose time is over (a housekeeping task)."""
        return await self._storage.run(remove_expired, now)

    async def sign(
        self, claims: Mapping[str, Any], alg: str = "RS256", typ: str | None = None
    ) -> str:
        """
        A compact JWS of C{claims}, signed by C{alg}'s current key, C{kid}
        (and C{typ}, when given: C{logout+jwt} for logout tokens) in its header.
        """
        algorithm = check_algorithm(alg)
        key = current_key(await self.ensure(), algorithm)
        if key is None:  # pragma: no cover - ensure made one
            raise NoSigningKey(f"no current {algorithm} signing key")
        private = self._private.get(key.kid)
        if private is None:
            private = await self._blocking(load_private_key, key, self._box)
            self._private[key.kid] = private
        headers = {"kid": key.kid} if typ is None else {"kid": key.kid, "typ": typ}
        return jwt.encode(dict(claims), private, algorithm=algorithm, headers=headers)


def verify(
    token: str,
    jwks: Mapping[str, Any],
    *,
    audience: str | None = None,
    issuer: str | None = None,
) -> dict[str, Any]:
    """
    The claims of C{token} once its signature verifies against the JWKS
    document C{jwks} (by C{kid}, with the algorithm the key is published
    for: never C{none}). For tests and diagnostics; raises PyJWT's errors.
    """
    header = jwt.get_unverified_header(token)
    alg = check_algorithm(str(header.get("alg")))
    found = jwt.PyJWKSet.from_dict(dict(jwks))
    key = next((k for k in found.keys if k.key_id == header.get("kid")), None)
    if key is None:
        raise jwt.InvalidKeyError(f"no key {header.get('kid')!r} in the JWKS document")
    if key.algorithm_name != alg:
        raise jwt.InvalidAlgorithmError(f"key {key.key_id} is published for {key.algorithm_name}")
    options: Options = {"verify_aud": audience is not None, "verify_iss": issuer is not None}
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=[alg], audience=audience, issuer=issuer, options=options
    )
    return claims

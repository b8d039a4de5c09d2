"""
ID token validation for OpenID Connect: the signature against the
provider's published keys (JWKS), then the claims (issuer, audience,
authorized party, expiry, issue time, nonce), with the time as a parameter.

Keys rotate: a token signed with a key id we have not seen makes the cache
fetch the key set again, at most once per C{refetch_interval}, so a flood of
forged tokens cannot make us hammer the provider.

This module must never accept an unsigned token ("alg": "none") or one
signed with a shared secret, and never does network I/O itself: it is given
a function that fetches the key set.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import jwt
from jwt.exceptions import InvalidSignatureError, PyJWKError, PyJWTError

from twisted.internet.defer import Deferred

from clickpass.i18n import N_, Text, part
from clickpass.upstream.http import UpstreamError

# Asymmetric algorithms only: HS* would make the client secret a signing key.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_TOKEN_LENGTH = 16 * 1024
# An ID token is meant to be used at once; one issued long ago is suspect.
MAX_TOKEN_AGE = 3600
TENANT_PLACEHOLDER = "{tenantid}"
MICROSOFT_CONSUMERS_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"


class KeyCache:
    """One provider's signing keys, refetched on an unknown key id (rate-limited)."""

    def __init__(
        self,
        who: str,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        now: Callable[[], float],
        refetch_interval: float,
    ) -> None:
        self._who = who
        self._fetch = fetch
        self._now = now
        self._refetch_interval = refetch_interval
        self._keys: dict[str, jwt.PyJWK] = {}
        self._unnamed: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None
        self._inflight: Deferred[BaseException | None] | None = None
        self.fetches = 0

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key that signed a token with header C{kid}/C{alg}."""
        if self._fetched_at is None or self._inflight is not None:
            # Nothing fetched yet, or a fetch under way: wait for it.
            await self._refresh()
        key = self._find(kid, alg)
        if key is None:
            assert self._fetched_at is not None
            if self._now() - self._fetched_at >= self._refetch_interval:
                await self._refresh()
                key = self._find(kid, alg)
        if key is None:
            raise UpstreamError(
                Text(
                    N_(
                        "%(who)s sent a sign-in token signed with a key it does not publish; "
                        "the sign-in was stopped."
                    ),
                    who=self._who,
                ),
                "unknown_key",
            )
        return key

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        # No key id: acceptable only when exactly one key could have signed.
        candidates = [
            k
            for k in [*self._keys.values(), *self._unnamed]
            if getattr(k, "algorithm_name", alg) == alg
        ]
        return candidates[0] if len(candidates) == 1 else None

    async def _refresh(self) -> None:
        # Several requests may meet an unknown key at once: one fetch serves all.
        inflight = self._inflight
        if inflight is None:
            inflight = self._inflight = Deferred.fromCoroutine(self._load_noting_failure())

            def clear(result: object) -> object:
                self._inflight = None
                return result

            # A fetch that finished at once has cleared itself already: keep
            # the local reference to wait on.
            inflight.addBoth(clear)
        await _share(inflight)

    async def _load_noting_failure(self) -> BaseException | None:
        # The shared Deferred never fails (no "unhandled error" when nobody
        # waits any more); each waiter raises the failure itself.
        try:
            await self._load()
        except Exception as e:
            return e
        return None

    async def _load(self) -> None:
        self.fetches += 1
        self._fetched_at = self._now()
        document = await self._fetch()
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise UpstreamError(
                Text(
                    N_(
                        "%(who)s published its keys in a form we could not understand; the "
                        "sign-in was stopped."
                    ),
                    who=self._who,
                ),
                "malformed_jwks",
            )
        named: dict[str, jwt.PyJWK] = {}
        unnamed: list[jwt.PyJWK] = []
        for entry in keys:
            if not isinstance(entry, dict):
                continue
            if entry.get("use", "sig") != "sig":
                continue
            if entry.get("alg") is not None and entry.get("alg") not in ALLOWED_ALGORITHMS:
                continue
            if entry.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            try:
                key = jwt.PyJWK(entry)
            except (PyJWKError, PyJWTError, ValueError, TypeError, KeyError):
                continue
            kid = entry.get("kid")
            if isinstance(kid, str):
                named[kid] = key
            else:
                unnamed.append(key)
        self._keys, self._unnamed = named, unnamed


async def _share(d: Deferred[BaseException | None]) -> None:
    """Wait for a Deferred others wait for too, leaving its result for them; raise its error."""
    waiter: Deferred[BaseException | None] = Deferred()

    def passed(result: BaseException | None) -> BaseException | None:
        waiter.callback(result)
        return result

    d.addCallback(passed)
    error = await waiter
    if error is not None:
        raise error


@dataclass(frozen=True)
class Expectations:
    """What a valid ID token must say."""

    issuer: str
    client_id: str
    nonce: str
    now: float
    skew: float
    tenant_mode: str = ""  # microsoft: "common", "organizations", or "" (fixed issuer)
    alternate_issuers: tuple[str, ...] = ()
    algorithms: frozenset[str] = ALLOWED_ALGORITHMS


def unverified_header(who: str, token: str) -> dict[str, Any]:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise _bad_token(who, N_("its sign-in token is missing or too long"), "malformed_token")
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError:
        raise _bad_token(who, N_("its sign-in token is malformed"), "malformed_token") from None
    return header


async def validate_id_token(
    who: str, token: str, keys: KeyCache, expect: Expectations
) -> dict[str, Any]:
    """
    Check C{token}'s signature and claims; return its claims, or raise
    L{UpstreamError} naming what was wrong.
    """
    header = unverified_header(who, token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in expect.algorithms:
        raise _bad_token(
            who,
            Text(N_("its sign-in token uses a signature we do not accept (%(alg)s)"), alg=alg),
            "bad_alg",
        )
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _bad_token(who, N_("its sign-in token is malformed"), "malformed_token")
    key = await keys.key_for(kid, alg)
    try:
        decoded = jwt.PyJWS().decode_complete(token, key.key, algorithms=[alg])
    except InvalidSignatureError:
        raise _bad_token(
            who, N_("its sign-in token's signature is wrong"), "bad_signature"
        ) from None
    except PyJWTError:
        raise _bad_token(who, N_("its sign-in token is malformed"), "malformed_token") from None
    try:
        claims = json.loads(decoded["payload"])
    except (ValueError, UnicodeDecodeError):
        claims = None
    if not isinstance(claims, dict):
        raise _bad_token(who, N_("its sign-in token is malformed"), "malformed_token")
    check_claims(who, claims, expect)
    return claims


def expected_issuer(who: str, claims: Mapping[str, Any], expect: Expectations) -> set[str]:
    """The issuers a token with these claims may come from."""
    if TENANT_PLACEHOLDER not in expect.issuer:
        return {expect.issuer, *expect.alternate_issuers}
    tid = claims.get("tid")
    if not isinstance(tid, str) or not tid or "/" in tid:
        raise _bad_token(who, N_("its sign-in token names no tenant"), "bad_issuer")
    if expect.tenant_mode == "organizations" and tid == MICROSOFT_CONSUMERS_TENANT:
        raise _bad_token(
            who, N_("a personal account was used where a work account is required"), "bad_issuer"
        )
    return {expect.issuer.replace(TENANT_PLACEHOLDER, tid)}


def check_claims(who: str, claims: Mapping[str, Any], expect: Expectations) -> None:
    """The claim checks of OpenID Connect Core 3.1.3.7, with our time and skew."""
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in expected_issuer(who, claims, expect):
        raise _bad_token(who, N_("its sign-in token comes from the wrong issuer"), "bad_issuer")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise _bad_token(who, N_("its sign-in token names no account"), "bad_subject")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or expect.client_id not in audiences:
        raise _bad_token(who, N_("its sign-in token was meant for another site"), "bad_audience")
    authorized = claims.get("azp")
    if (len(audiences) > 1 or authorized is not None) and authorized != expect.client_id:
        raise _bad_token(who, N_("its sign-in token was meant for another site"), "bad_audience")
    expires = claims.get("exp")
    issued = claims.get("iat")
    if not _is_time(expires) or not _is_time(issued):
        raise _bad_token(who, N_("its sign-in token has no valid times"), "bad_times")
    if expires + expect.skew <= expect.now:
        raise _bad_token(who, N_("its sign-in token has expired"), "expired")
    if issued - expect.skew > expect.now:
        raise _bad_token(who, N_("its sign-in token was issued in the future"), "bad_times")
    if issued + MAX_TOKEN_AGE + expect.skew < expect.now:
        raise _bad_token(who, N_("its sign-in token is too old"), "expired")
    not_before = claims.get("nbf")
    if not_before is not None and (
        not _is_time(not_before) or not_before - expect.skew > expect.now
    ):
        raise _bad_token(who, N_("its sign-in token is not valid yet"), "bad_times")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not _same(nonce, expect.nonce):
        raise _bad_token(
            who, N_("its sign-in token does not belong to this sign-in (nonce)"), "bad_nonce"
        )


def _is_time(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _bad_token(who: str, what: str, reason: str) -> UpstreamError:
    """
    The refusal of a token from C{who}: C{what} is wrong with it (marked
    for translation, a L{Text} when it has parameters).
    """
    return UpstreamError(
        Text(
            N_("%(who)s could not be trusted: %(what)s. The sign-in was stopped."),
            who=who,
            what=part(what),
        ),
        reason,
    )

"""
How strongly a session was signed in, as partners are told it: PAPE 1.0
for OpenID 2.0 (policies met and C{auth_time}), and the values OpenID
Connect puts in an ID token (C{amr}, C{acr}, C{auth_time}).

The rule everywhere: never claim a policy not met. A session meets
C{multi-factor} once the person gave a first factor (their password, or a
sign-in through an upstream provider) and a second factor
(an app code, a recovery code: a look-up secret they hold, or a security
key) in it, or signed in with a passkey that verified them (PIN or
biometrics: something they have and something they know or are); a
trusted browser skips the code but is not claimed as a factor.

A multi-factor sign-in with any security key or passkey also meets
C{phishing-resistant}: the key signs only for this origin, so nothing a
phishing site learns lets it sign in, and that holds for a synced passkey
too (NIST SP 800-63B's supplement on syncable authenticators keeps them
phishing resistant). C{multi-factor-physical} (PAPE 1.0: a factor that is
a physical device the person holds) is met only by a key bound to one
device (C{hwk}): a synced passkey (C{swk}: its authenticator set
WebAuthn's backup eligible or backed up flag) lives in a cloud account
and on every device signed in to it, so it is no one device the person
holds (the same supplement: synced keys are exportable, so they reach
AAL2, never AAL3, which asks for a hardware-bound key). An app code or a
recovery code meets neither.

L{assess} and L{needs_step_up} are pure; L{PapeStrength} is the OpenID
provider's L{clickpass.openid.web.SignInStrength}.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openid.extensions.draft import pape5 as pape

from twisted.web.server import Request

from clickpass.accounts.service import Account
from clickpass.mfa.service import (
    KEY_METHODS,
    METHOD_FEDERATED,
    METHOD_PASSWORD,
    METHOD_RECOVERY_CODE,
    METHOD_SECURITY_KEY,
    METHOD_TOTP,
    METHOD_USER_VERIFIED,
)
from clickpass.mfa.store import SessionAuth
from clickpass.mfa.web import MfaWeb

MULTI_FACTOR = pape.AUTH_MULTI_FACTOR
MULTI_FACTOR_PHYSICAL = pape.AUTH_MULTI_FACTOR_PHYSICAL
PHISHING_RESISTANT = pape.AUTH_PHISHING_RESISTANT
# What only a security key or passkey meets.
KEY_POLICIES = frozenset({MULTI_FACTOR_PHYSICAL, PHISHING_RESISTANT})
# Every policy a sign-in here can meet (advertised in OpenID discovery).
POLICIES = frozenset({MULTI_FACTOR}) | KEY_POLICIES
# The first factors: the password, or an upstream provider's sign-in (Google
# and others). "fed" is no RFC 8176 value: it is never put in an amr.
FIRST_FACTORS = frozenset({METHOD_PASSWORD, METHOD_FEDERATED})
# The methods that are a second factor when given with a first.
SECOND_FACTORS = frozenset({METHOD_TOTP, METHOD_RECOVERY_CODE}) | KEY_METHODS
# A site asking for a sign-in younger than this (max_auth_age 0, say) gets
# one this fresh: the person signed in again a moment ago, and is told the
# exact auth_time, not sent round again for ever.
FRESH_ENOUGH = 120
# OpenID Connect: the acr of a multi-factor sign-in (the PAPE policy URI is
# a registered acr value, OpenID Connect Core 1.0 section 2), "0" otherwise
# (no assurance claimed).
ACR_NONE = "0"


@dataclass(frozen=True)
class SignInContext:
    """What a partner may be told about how the person signed in."""

    policies: frozenset[str]
    auth_time: int
    # RFC 8176 authentication method references, e.g. ["pwd", "otp", "mfa"].
    amr: tuple[str, ...]

    @property
    def acr(self) -> str:
        return MULTI_FACTOR if MULTI_FACTOR in self.policies else ACR_NONE


def assess(auth: SessionAuth) -> SignInContext:
    """
    The policies a session meets and when the person last authenticated
    in a manner fitting them: the second factor's time for a multi-factor
    session, otherwise the latest of password and code.
    """
    factors = sorted(auth.methods & SECOND_FACTORS)
    first = auth.methods & FIRST_FACTORS
    said = sorted(first - {METHOD_FEDERATED})
    key = bool(auth.methods & KEY_METHODS)
    passkey = key and METHOD_USER_VERIFIED in auth.methods
    if ((first and factors) or passkey) and auth.factor_time:
        amr = (*said, *factors, "mfa")
        policies = {MULTI_FACTOR}
        if key:
            policies.add(PHISHING_RESISTANT)
        if METHOD_SECURITY_KEY in auth.methods:
            # A key bound to one device, never a synced passkey alone.
            policies.add(MULTI_FACTOR_PHYSICAL)
        return SignInContext(frozenset(policies), auth.factor_time, amr)
    amr = tuple(sorted({*said, *factors}))
    return SignInContext(frozenset(), max(auth.password_time, auth.factor_time), amr)


def needs_step_up(
    wanted: frozenset[str],
    max_auth_age: int | None,
    has_factor: bool,
    context: SignInContext,
    now: int,
    has_key: bool = False,
    has_device_key: bool = False,
) -> bool:
    """
    Whether to have the person sign in again before answering: the site
    wants C{multi-factor} not met yet and the person has a factor to give;
    or it wants C{phishing-resistant} not met yet and the person has a
    security key or passkey (C{has_key}) to give; or it wants
    C{multi-factor-physical} not met yet and the person has a key bound to
    one device (C{has_device_key}; a synced passkey never meets it, and
    asking for it again and again would send them round for ever); or the
    site wants a sign-in younger than C{max_auth_age}.
    """
    if MULTI_FACTOR in wanted and has_factor and MULTI_FACTOR not in context.policies:
        return True
    can_meet = (frozenset({PHISHING_RESISTANT}) if has_key else frozenset()) | (
        frozenset({MULTI_FACTOR_PHYSICAL}) if has_device_key else frozenset()
    )
    if not (wanted & can_meet) <= context.policies:
        return True
    if max_auth_age is not None:
        return now - context.auth_time > max(max_auth_age, FRESH_ENOUGH)
    return False


def rfc3339(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pape_request(openid_request: Any) -> pape.Request | None:
    """The site's PAPE request, or L{None} (malformed values are ignored, as unsaid)."""
    try:
        return pape.Request.fromOpenIDRequest(openid_request)
    except (ValueError, KeyError):
        return None


class PapeStrength:
    """PAPE for the OpenID provider: step up as asked, and say what was met."""

    def __init__(self, web: MfaWeb) -> None:
        self.web = web

    async def context(self, request: Request) -> SignInContext | None:
        """
        How this request's session was signed in, or L{None} when signed out.
        The OpenID Connect provider's hook for C{acr}, C{amr} and C{auth_time}.
        """
        auth = await self.web.auth_of(request)
        return None if auth is None else assess(auth)

    async def needs_step_up(self, request: Request, openid_request: Any, account: Account) -> bool:
        asked = pape_request(openid_request)
        if asked is None:
            # Most requests: nothing asked, nothing read.
            return False
        context = await self.context(request)
        if context is None:
            return False
        return needs_step_up(
            frozenset(asked.preferred_auth_policies),
            asked.max_auth_age,
            await self.web.factors.has_factor(account.id),
            context,
            self.web.factors.now(),
            has_key=await self.web.factors.has_keys(account.id),
            has_device_key=await self.web.factors.has_device_keys(account.id),
        )

    def step_up_url(self, back: str, openid_request: Any = None) -> str:
        """
        Where the person steps up for C{openid_request}: with a key bound
        to one device when the site asks PAPE C{multi-factor-physical}.
        """
        asked = pape_request(openid_request) if openid_request is not None else None
        physical = asked is not None and MULTI_FACTOR_PHYSICAL in asked.preferred_auth_policies
        return self.web.step_up_url(back, device_bound=physical)

    async def decorator(
        self, request: Request, openid_request: Any
    ) -> Callable[[Any], None] | None:
        if pape_request(openid_request) is None:
            return None
        context = await self.context(request)
        if context is None:
            return None
        answer = pape.Response(sorted(context.policies), rfc3339(context.auth_time))

        def add(response: Any) -> None:
            response.addExtension(answer)

        return add

"""
How strongly a session was signed in, as partners are told it: PAPE 1.0
for OpenID 2.0 (policies met and C{auth_time}), and the values OpenID
Connect puts in an ID token (C{amr}, C{acr}, C{auth_time}).

The rule everywhere: never claim a policy not met. A session meets
C{multi-factor} once the person gave a first factor (their password, or a
sign-in through an upstream provider) and a second factor
(an app code, or a recovery code: a look-up secret they hold) in it; a
trusted browser skips the code but is not claimed as a factor. Nothing is
claimed as C{multi-factor-physical} or C{phishing-resistant}: an app code
is neither.

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
    METHOD_FEDERATED,
    METHOD_PASSWORD,
    METHOD_RECOVERY_CODE,
    METHOD_TOTP,
)
from clickpass.mfa.store import SessionAuth
from clickpass.mfa.web import MfaWeb

MULTI_FACTOR = pape.AUTH_MULTI_FACTOR
# The first factors: the password, or an upstream provider's sign-in (Google
# and others). "fed" is no RFC 8176 value: it is never put in an amr.
FIRST_FACTORS = frozenset({METHOD_PASSWORD, METHOD_FEDERATED})
# The methods that are a second factor when given with a first.
SECOND_FACTORS = frozenset({METHOD_TOTP, METHOD_RECOVERY_CODE})
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
    if first and factors and auth.factor_time:
        amr = (*said, *factors, "mfa")
        return SignInContext(frozenset({MULTI_FACTOR}), auth.factor_time, amr)
    amr = tuple(sorted({*said, *factors}))
    return SignInContext(frozenset(), max(auth.password_time, auth.factor_time), amr)


def needs_step_up(
    wanted: frozenset[str],
    max_auth_age: int | None,
    has_factor: bool,
    context: SignInContext,
    now: int,
) -> bool:
    """
    Whether to have the person sign in again before answering: the site
    wants C{multi-factor} not met yet and the person has a factor to give;
    or the site wants a sign-in younger than C{max_auth_age}.
    """
    if MULTI_FACTOR in wanted and has_factor and MULTI_FACTOR not in context.policies:
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
        )

    def step_up_url(self, back: str) -> str:
        return self.web.step_up_url(back)

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

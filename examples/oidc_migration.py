"""
A worked example for docs/partner-guide.md ("Moving from OpenID 2.0 to
OpenID Connect"): how a partner site that stored each person's OpenID 2.0
identifier maps people signing in with OpenID Connect to the accounts it
already has, without losing one.

The site asks for its OpenID 2.0 realm in every authorization request
(C{openid2_realm}); Clickpass then puts the person's OpenID 2.0
identifier in the ID token (C{openid2_id}). The site looks the person up
by their OpenID Connect subject first, then by that identifier, and from
then on keeps the subject with the account.

It keeps its accounts in memory; a real site does the same in its
database, in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Account:
    name: str
    openid2_identifier: str | None = None
    oidc_subject: str | None = None


@dataclass
class Accounts:
    """The partner's accounts, found by either identifier."""

    accounts: list[Account] = field(default_factory=list)

    def by_subject(self, sub: str) -> Account | None:
        return next((a for a in self.accounts if a.oidc_subject == sub), None)

    def by_openid2(self, identifier: str) -> Account | None:
        return next((a for a in self.accounts if a.openid2_identifier == identifier), None)

    def sign_in(self, claims: Mapping[str, Any]) -> tuple[Account, str]:
        """
        The account of the person whose verified ID token claims these are,
        and how it was found: C{subject} (signed in with OpenID Connect
        before), C{migrated} (an OpenID 2.0 account, now linked to its
        subject) or C{new}.
        """
        sub = str(claims["sub"])
        found = self.by_subject(sub)
        if found is not None:
            return found, "subject"
        openid2_id = claims.get("openid2_id")
        if isinstance(openid2_id, str):
            found = self.by_openid2(openid2_id)
            if found is not None and found.oidc_subject is None:
                found.oidc_subject = sub
                return found, "migrated"
        account = Account(name=f"user-{len(self.accounts) + 1}", oidc_subject=sub)
        self.accounts.append(account)
        return account, "new"

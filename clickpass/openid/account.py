"""
The OpenID provider's part of the person's account page: the sites they
allowed to sign them in without asking (remembered approvals), and the
form that forgets one, so that site asks again next time (and, through
L{ApprovalForgotten}, loses the OpenID Connect tokens it holds).

It reads and forgets approvals only; it must never create one (only the
consent decision does).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts import events
from clickpass.accounts.service import Account
from clickpass.i18n import N_
from clickpass.openid import approvals
from clickpass.openid.extensions import FIELD_LABELS
from clickpass.storage.sql import Transaction
from clickpass.web.app import WebApp, day
from clickpass.web.pages import AccountSection
from clickpass.web.routing import HTTPError, Router

log = Logger()


class ApprovalForgotten(Protocol):
    """Told when a person forgets an approval (the OpenID Connect provider revokes its grants)."""

    async def approval_forgotten(self, account_id: int, realm: str) -> None: ...


def install(
    app: WebApp, router: Router, forgotten: ApprovalForgotten | None = None
) -> AccountSection:
    """Register the form that forgets an approval; the section lists them."""

    async def context(account: Account) -> dict[str, Any]:
        allowed = await app.storage.run(approvals.remembered, account.id)
        return {
            "approvals": [
                {
                    "realm": a.realm,
                    # To match a partner site's realm (listed with its own controls).
                    "realm_key": a.realm.strip("/"),
                    "always_ask": a.always_ask,
                    "fields": ", ".join(FIELD_LABELS.get(f, f) for f in a.fields),
                    "created": day(a.created),
                    "last_used": day(a.last_used),
                }
                for a in allowed
            ]
        }

    async def forget_approval(request: Request) -> bytes:
        # The next sign-in at that site asks again (the consent page).
        app.check_csrf(request)
        account = await app.require_account(request, back="/account")
        realm = app.form(request, "realm")
        how = app.how(request)
        now = int(app.reactor.seconds())

        def forget(tx: Transaction) -> bool:
            if not approvals.forget(tx, account.id, realm):
                return False
            events.record(
                tx,
                account.id,
                "approval_forgotten",
                now,
                client_address=how.client_address,
                browser=how.browser,
                detail=realm,
            )
            return True

        if not await app.storage.run(forget):
            raise HTTPError(404, N_("You had not allowed that site to sign you in."))
        if forgotten is not None:
            await forgotten.approval_forgotten(account.id, realm)
        log.info("person forgot their approval of {realm}", realm=realm)
        return app.redirect(request, "/account?done=approval-forgotten")

    router.add("POST", "/account/approvals/forget", forget_approval)
    return AccountSection("openid/account_approvals.html", context)

"""
The person's own account controls: their sessions (sign one out, or every
other), their security log, a download of everything Clickpass holds
about them, and deleting the account.

Every change is a CSRF-checked POST answered with a redirect, so
reloading never repeats it. The export needs a fresh sign-in with the
person's strongest factor (step-up, through the L{StepUp} seam).
Deleting asks for the password again, checked when the account goes (or,
for an account with no password, the address typed out); step-up comes
first only for a second factor or an account with no password, so nobody
is asked for their password twice in a row.

It reads and changes only the signed-in person's own account.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Protocol

from jinja2 import ChoiceLoader, FileSystemLoader

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts import events
from clickpass.accounts.service import (
    Account,
    AccountError,
    HashingBusy,
    SignInRefused,
    Throttled,
)
from clickpass.i18n import N_
from clickpass.selfservice import data
from clickpass.storage.sql import Transaction
from clickpass.web.app import WebApp
from clickpass.web.pages import AccountSection
from clickpass.web.routing import HTTPError, Router

log = Logger()

TEMPLATES = Path(__file__).parent / "templates"
EVENTS_SHOWN = 50


def _when(ts: int) -> str:
    """A Unix time as the account page shows it, to the minute (2026-12-06 17:45)."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def _has_password(tx: Transaction, account_id: int) -> bool:
    row = tx.fetchone("SELECT password_hash FROM accounts WHERE id = ?", account_id)
    return row is not None and row[0] is not None


class FactorCheck(Protocol):
    """Whether a person has a second factor (clickpass.mfa's service)."""

    async def has_factor(self, account_id: int) -> bool: ...


class StepUp(Protocol):
    """
    Step-up (clickpass.mfa): return when this session signed in with the
    person's strongest factor lately; otherwise raise the redirect that
    asks for it and comes back to C{back}. Its C{factors} say who has a
    second factor.
    """

    @property
    def factors(self) -> FactorCheck: ...

    async def require_step_up(self, request: Request, account: Account, back: str) -> None: ...


class SelfService:
    """The handlers of the person's own account controls."""

    def __init__(self, app: WebApp, step_up: StepUp | None = None) -> None:
        self.app = app
        self.step_up = step_up

    async def _stepped_up(self, request: Request, account: Account, back: str) -> None:
        """Go on only after a fresh sign-in with the strongest factor (when there is step-up)."""
        if self.step_up is not None:
            await self.step_up.require_step_up(request, account, back)

    def _now(self) -> int:
        return int(self.app.reactor.seconds())

    async def section_context(self, account: Account, request: Request) -> dict[str, Any]:
        """The sessions and security log on the account page."""
        accounts = self.app.accounts
        sessions = await accounts.sessions(account.id, self.app.session_token(request))
        found = await self.app.storage.run(events.recent, account.id, EVENTS_SHOWN)
        return {
            "sessions": [
                {
                    "handle": s.handle,
                    "browser": s.browser,
                    "client_address": s.client_address,
                    "created": _when(s.created),
                    "last_seen": _when(s.last_seen),
                    "current": s.current,
                }
                for s in sessions
            ],
            "security_events": [
                {
                    "kind": e.kind,
                    "label": e.label,
                    "when": _when(e.created),
                    "browser": e.browser,
                    "client_address": e.client_address,
                    "detail": e.detail,
                }
                for e in found
            ],
            "security_events_days": self.app.settings.accounts.security_events_days,
        }

    async def end_session(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back="/account")
        handle = self.app.form(request, "session")
        current = [
            s.handle
            for s in await self.app.accounts.sessions(account.id, self.app.session_token(request))
            if s.current
        ]
        how = self.app.how(request)
        if not await self.app.accounts.end_session_by_handle(account.id, handle, how):
            raise HTTPError(404, N_("That session has already ended."))
        if handle in current:
            # The person signed out the browser they are using.
            await self.app.sign_out(request)
            return self.app.redirect(request, "/")
        return self.app.redirect(request, "/account")

    async def end_other_sessions(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back="/account")
        ended = await self.app.accounts.end_other_sessions(
            account.id, self.app.session_token(request), self.app.how(request)
        )
        log.info("person ended {count} other sessions", count=ended)
        return self.app.redirect(request, "/account")

    async def export(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        await self._stepped_up(request, account, "/account/export")
        found = await self.app.storage.run(data.export, account.id, self.app.settings.base_url)
        if found is None:
            raise HTTPError(404, N_("There is no such account any more."))
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-disposition", b'attachment; filename="clickpass-account.json"')
        return json.dumps(found, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    async def _stepped_up_for_deleting(self, request: Request, account: Account) -> None:
        """
        Step-up before deleting, whose form asks for the password itself and
        checks it when the account is deleted: as fresh a proof of the
        password as step-up asks for. So step-up is asked first only of a
        person with a second factor (their code) or with no password (the
        address typed out proves nothing); otherwise it would ask for the
        password and the form for it again, twice in a row for nothing.
        """
        if self.step_up is None:
            return
        if await self.step_up.factors.has_factor(account.id) or not await self.app.storage.run(
            _has_password, account.id
        ):
            await self.step_up.require_step_up(request, account, "/account/delete")

    async def delete_form(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        await self._stepped_up_for_deleting(request, account)
        return await self._delete_page(request, account)

    async def _delete_page(self, request: Request, account: Account, error: str = "") -> bytes:
        found = await self.app.storage.run(data.export, account.id, self.app.settings.base_url)
        names = [site["name"] for site in (found or {}).get("connected_sites", [])]
        has_password = await self.app.storage.run(_has_password, account.id)
        return self.app.render(
            request,
            "selfservice/delete.html",
            account=account,
            partner_sites=names,
            has_password=has_password,
            error=error,
        )

    async def delete(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back="/account/delete")
        await self._stepped_up_for_deleting(request, account)
        try:
            await self._confirm(request, account)
            erased = await self.app.storage.run(
                data.erase, account.id, self.app.settings.base_url, self._now()
            )
        except (HashingBusy, Throttled) as e:
            request.setResponseCode(503 if isinstance(e, HashingBusy) else 429)
            request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
            return await self._delete_page(request, account, str(e))
        except AccountError as e:
            request.setResponseCode(400)
            return await self._delete_page(request, account, str(e))
        if erased is not None:
            log.info(
                "person deleted their account; {count} partner sites told",
                count=len(erased.sites_told),
            )
        await self.app.sign_out(request)
        return self.app.redirect(request, "/account/deleted")

    async def _confirm(self, request: Request, account: Account) -> None:
        # The password again (or, with none, the address typed out), so a
        # browser left signed in cannot be used to delete the account.
        if not await self.app.storage.run(_has_password, account.id):
            if self.app.form(request, "email").strip().lower() != account.email:
                raise AccountError(N_("Type your email address exactly to confirm."))
            return
        try:
            found = await self.app.accounts.authenticate(
                account.email,
                self.app.form(request, "password"),
                self.app.client_address(request),
                self.app.browser(request),
            )
        except SignInRefused:
            raise AccountError(N_("That is not your password.")) from None
        if found.id != account.id:  # pragma: no cover - the address is unique
            raise AccountError(N_("That is not your password."))

    async def deleted(self, request: Request) -> bytes:
        return self.app.render(request, "selfservice/deleted.html")


def install(app: WebApp, router: Router, step_up: StepUp | None = None) -> AccountSection:
    """
    Register the account controls' routes; return their part of the account
    page. With C{step_up}, the export and deleting need a fresh sign-in.
    """
    loader = app.templates.loader
    assert loader is not None
    app.templates.loader = ChoiceLoader([loader, FileSystemLoader(str(TEMPLATES))])
    pages = SelfService(app, step_up)
    router.add("POST", "/account/sessions/end", pages.end_session)
    router.add("POST", "/account/sessions/end-others", pages.end_other_sessions)
    router.add("GET", "/account/export", pages.export)
    router.add("GET", "/account/delete", pages.delete_form)
    router.add("POST", "/account/delete", pages.delete)
    router.add("GET", "/account/deleted", pages.deleted)

    async def no_context(account: Account) -> dict[str, Any]:
        return {}

    return AccountSection(
        "selfservice/account_security.html", no_context, request_context=pages.section_context
    )


__all__ = ["SelfService", "StepUp", "install"]

"""
The pages of the mailed-link account flows (L{clickpass.accounts.flows}):
sign-up's answer, verifying an address, forgot and reset password, change
password, change address and undo the change.

A link from a mail only shows a page: the change is made by the form on
it (a POST with its CSRF token), so a mail scanner that follows links
uses nothing up. A link that cannot be used gets a page saying why
(expired, used, not valid, another account's) and what to do next.

It is a sibling of the web kernel and of accounts, not part of either
(the kernel imports accounts; this imports both). This module must never
change an account but through L{clickpass.accounts.flows.AccountFlows}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from jinja2 import ChoiceLoader, FileSystemLoader

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts.flows import (
    AccountFlows,
    AddressTaken,
    Mailer,
    TooManyRequests,
    has_password,
)
from clickpass.accounts.service import Account, AccountError, HashingBusy, Throttled
from clickpass.accounts.tokens import TokenRefused
from clickpass.i18n import N_
from clickpass.web.app import WebApp, safe_next
from clickpass.web.pages import AccountSection
from clickpass.web.routing import HTTPError, Router

log = Logger()

TEMPLATES = Path(__file__).parent / "templates"
MAX_TOKEN = 128


class FactorCheck(Protocol):
    """Whether a person has a second factor (clickpass.mfa's service)."""

    async def has_factor(self, account_id: int) -> bool: ...


class SecondFactors(Protocol):
    """
    What second factors (clickpass.mfa) do for these pages: a password set
    with a reset link is a first factor only, so the second sign-in step
    follows it, as it follows a password typed at sign-in; and changing the
    password or the address needs a fresh sign-in with the strongest
    factor (step-up: return, or raise the redirect that asks for it),
    which for a person with a second factor is that factor.
    """

    @property
    def factors(self) -> FactorCheck: ...

    async def after_password(
        self, request: Request, account: Account, next_url: str
    ) -> bytes | None: ...

    async def require_step_up(self, request: Request, account: Account, back: str) -> None: ...


class OwnershipPages:
    """The handlers; given the web app, the flows and the second factors."""

    def __init__(
        self, app: WebApp, flows: AccountFlows, second_factors: SecondFactors | None = None
    ) -> None:
        self.app = app
        self.flows = flows
        self.second_factors = second_factors

    # Helpers.

    def _token(self, request: Request, name: str = "t") -> str:
        value = self.app.form(request, name)
        return value if len(value) <= MAX_TOKEN else ""

    def _refused(self, request: Request, refused: TokenRefused) -> bytes:
        request.setResponseCode(410 if refused.reason in ("expired", "used") else 400)
        return self.app.render(
            request,
            "ownership/link_refused.html",
            reason=refused.reason,
            message=str(refused),
            next_step=refused.next_step,
            next_url=refused.next_url,
        )

    def _page(self, request: Request, template: str, status: int = 200, **context: Any) -> bytes:
        request.setResponseCode(status)
        return self.app.render(request, "ownership/" + template, **context)

    def _limited(self, request: Request, e: TooManyRequests | Throttled | HashingBusy) -> None:
        request.setResponseCode(503 if isinstance(e, HashingBusy) else 429)
        request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))

    async def _stepped_up(self, request: Request, account: Account, back: str) -> None:
        """
        Go on only after a fresh sign-in with the strongest factor (with
        second factors), for the forms here, which ask for the current
        password themselves and check it when the change is made: that is
        as fresh a proof of the password as step-up asks for, so step-up
        is asked first only of a person with a second factor (their code).
        Without one, step-up would ask for the password and the form for
        it again, twice in a row for nothing.
        """
        if self.second_factors is not None and await self.second_factors.factors.has_factor(
            account.id
        ):
            await self.second_factors.require_step_up(request, account, back)

    async def _stepped_up_for_email(self, request: Request, account: Account) -> bool:
        """
        L{_stepped_up} for the address form; an account with no password (made
        through an upstream provider) has none to type there, so it is asked
        for step-up (through its provider) instead. Whether it has a password.
        """
        with_password: bool = await self.app.storage.run(has_password, account.id)
        if with_password or self.second_factors is None:
            await self._stepped_up(request, account, "/account/email")
        else:
            await self.second_factors.require_step_up(request, account, "/account/email")
        return with_password

    async def _signed_in_for(self, request: Request) -> Any:
        """The signed-in person, or a redirect to sign in and come back to this link."""
        return await self.app.require_account(request, request.uri.decode("latin-1"))

    # Sign-up (the kernel's sign-up page calls this for a valid form).

    async def signed_up(self, request: Request, email: str, password: str, next_url: str) -> bytes:
        try:
            address = await self.flows.sign_up(
                email, password, self.app.client_address(request), next_url, self.app.how(request)
            )
        except TooManyRequests as e:
            self._limited(request, e)
            return self._page(request, "signup_sent.html", error=str(e), email=email)
        return self._page(request, "signup_sent.html", email=address, next=next_url)

    # Verifying an address.

    async def verify_page(self, request: Request) -> bytes:
        account = await self._signed_in_for(request)
        token = self._token(request)
        try:
            await self.flows.check_verification(token, account)
        except TokenRefused as e:
            return self._refused(request, e)
        return self._page(request, "verify.html", token=token)

    async def verify(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, "/account")
        try:
            next_url = await self.flows.verify(self._token(request), account, self.app.how(request))
        except TokenRefused as e:
            return self._refused(request, e)
        log.info("account {account} verified its email address", account=account.id)
        return self.app.redirect(request, safe_next(next_url, "/account?verified=1"))

    async def resend(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        next_url = safe_next(self.app.form(request, "next"), "")
        account = await self.app.require_account(request, next_url or "/account")
        try:
            sent = await self.flows.resend_verification(
                account, self.app.client_address(request), next_url
            )
        except TooManyRequests as e:
            self._limited(request, e)
            return self._page(request, "resent.html", sent=False, error=str(e))
        return self._page(request, "resent.html", sent=sent, error=None)

    # Forgot and reset password.

    async def forgot_form(self, request: Request) -> bytes:
        return self._page(request, "forgot.html", email="", error=None)

    async def forgot(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        email = self.app.form(request, "email")
        try:
            await self.flows.request_reset(
                email, self.app.client_address(request), self.app.how(request)
            )
        except TooManyRequests as e:
            self._limited(request, e)
            return self._page(request, "forgot.html", email=email, error=str(e))
        return self._page(request, "forgot_sent.html")

    async def reset_form(self, request: Request) -> bytes:
        token = self._token(request)
        try:
            await self.flows.check_reset(token)
        except TokenRefused as e:
            return self._refused(request, e)
        return self._page(request, "reset.html", token=token, error=None)

    async def reset(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        token = self._token(request)
        password = self.app.form(request, "password")
        try:
            if password != self.app.form(request, "password_again"):
                raise AccountError(N_("The two passwords differ. Type the same password twice."))
            done = await self.flows.reset(token, password, self.app.how(request))
        except TokenRefused as e:
            return self._refused(request, e)
        except HashingBusy as e:
            self._limited(request, e)
            return self._page(request, "reset.html", token=token, error=str(e))
        except AccountError as e:
            return self._page(request, "reset.html", 400, token=token, error=str(e))
        log.info("account {account} reset its password", account=done.account.id)
        # The link and a new password are proof enough to pass the sign-in
        # throttle, but only of the mailbox: a person with a second factor
        # gives it before a session starts.
        next_url = "/account?reset=1"
        if self.second_factors is not None:
            answer = await self.second_factors.after_password(request, done.account, next_url)
            if answer is not None:
                return answer
        await self.app.sign_in(request, done.account)
        return self.app.redirect(request, next_url)

    # Changes by the signed-in owner.

    async def password_form(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        await self._stepped_up(request, account, "/account/password")
        return self._page(request, "password.html", error=None)

    async def change_password(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, "/account/password")
        await self._stepped_up(request, account, "/account/password")
        new = self.app.form(request, "password")
        try:
            if new != self.app.form(request, "password_again"):
                raise AccountError(N_("The two passwords differ. Type the same password twice."))
            await self.flows.change_password(
                account,
                self.app.form(request, "current_password"),
                new,
                self.app.client_address(request),
                self.app.session_token(request),
                self.app.how(request),
            )
        except (Throttled, HashingBusy) as e:
            self._limited(request, e)
            return self._page(request, "password.html", error=str(e))
        except AccountError as e:
            return self._page(request, "password.html", 400, error=_current_password_error(e))
        return self.app.redirect(request, "/account?password=1")

    async def email_form(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        with_password = await self._stepped_up_for_email(request, account)
        return self._page(
            request, "email.html", error=None, new_email="", with_password=with_password
        )

    async def change_email(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, "/account/email")
        with_password = await self._stepped_up_for_email(request, account)
        new_email = self.app.form(request, "email")
        try:
            address = await self.flows.request_email_change(
                account,
                self.app.form(request, "current_password"),
                new_email,
                self.app.client_address(request),
                self.app.how(request),
                # Without a password, step-up (just above) proved it is them.
                stepped_up=self.second_factors is not None,
            )
        except (Throttled, HashingBusy, TooManyRequests) as e:
            self._limited(request, e)
            return self._page(
                request, "email.html", error=str(e), new_email=new_email,
                with_password=with_password,
            )  # fmt: skip
        except AccountError as e:
            return self._page(
                request, "email.html", 400, error=_current_password_error(e),
                new_email=new_email, with_password=with_password,
            )  # fmt: skip
        return self._page(request, "email_sent.html", new_email=address)

    async def confirm_email_page(self, request: Request) -> bytes:
        account = await self._signed_in_for(request)
        token = self._token(request)
        try:
            found = await self.flows.check_email_change(token, account)
        except TokenRefused as e:
            return self._refused(request, e)
        if await self.flows.address_taken(found.email, account):
            # Say so now, rather than offer a button that can only fail.
            return self._taken(request, AddressTaken(found.email))
        return self._page(request, "email_confirm.html", token=token, new_email=found.email)

    def _taken(self, request: Request, e: AddressTaken) -> bytes:
        return self._page(request, "email_taken.html", 409, message=str(e), new_email=e.address)

    async def confirm_email(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, "/account")
        try:
            await self.flows.confirm_email_change(
                self._token(request), account, self.app.how(request)
            )
        except TokenRefused as e:
            return self._refused(request, e)
        except AddressTaken as e:
            return self._taken(request, e)
        except AccountError as e:
            raise HTTPError(409, str(e)) from None
        log.info("account {account} changed its email address", account=account.id)
        return self.app.redirect(request, "/account?email=1")

    async def revert_page(self, request: Request) -> bytes:
        token = self._token(request)
        try:
            found = await self.flows.check_revert(token)
        except TokenRefused as e:
            return self._refused(request, e)
        return self._page(request, "email_revert.html", token=token, old_email=found.email)

    async def revert(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        try:
            old = await self.flows.revert_email(self._token(request), self.app.how(request))
        except TokenRefused as e:
            return self._refused(request, e)
        except AccountError as e:
            raise HTTPError(409, str(e)) from None
        log.info("an email address change was undone from the old address")
        await self.app.sign_out(request)
        return self._page(request, "email_reverted.html", old_email=old)

    def account_section(self) -> AccountSection:
        """The address's state on the account page, and the links to change things."""

        async def context(account: Any) -> dict[str, Any]:
            return {"email_verified": account.email_verified}

        return AccountSection("ownership/account_email.html", context)


def _current_password_error(e: AccountError) -> str:
    # A refused sign-in check here is about the current password only.
    text = str(e)
    if text.startswith("That email and password"):
        return "That is not your current password."
    return text


def install(
    app: WebApp, router: Router, mailer: Mailer, second_factors: SecondFactors | None = None
) -> OwnershipPages:
    """
    Register the flows' pages on C{router}, with their templates; return
    the pages, whose C{signed_up} is the kernel's sign-up flow and whose
    C{account_section} goes on the account page. With C{second_factors},
    a reset signs in only through the second step, and changing the
    password or the address needs step-up with the second factor of a
    person who has one (the forms ask for the password themselves).
    """
    loader = app.templates.loader
    assert loader is not None
    app.templates.loader = ChoiceLoader([loader, FileSystemLoader(str(TEMPLATES))])
    flows = AccountFlows(app.reactor, app.storage, app.accounts, app.settings.accounts, mailer)
    pages = OwnershipPages(app, flows, second_factors)
    router.add("GET", "/verify", pages.verify_page)
    router.add("POST", "/verify", pages.verify)
    router.add("POST", "/verify/resend", pages.resend)
    router.add("GET", "/forgot", pages.forgot_form)
    router.add("POST", "/forgot", pages.forgot)
    router.add("GET", "/reset", pages.reset_form)
    router.add("POST", "/reset", pages.reset)
    router.add("GET", "/account/password", pages.password_form)
    router.add("POST", "/account/password", pages.change_password)
    router.add("GET", "/account/email", pages.email_form)
    router.add("POST", "/account/email", pages.change_email)
    router.add("GET", "/email/confirm", pages.confirm_email_page)
    router.add("POST", "/email/confirm", pages.confirm_email)
    router.add("GET", "/email/revert", pages.revert_page)
    router.add("POST", "/email/revert", pages.revert)
    return pages


__all__ = ["OwnershipPages", "install"]

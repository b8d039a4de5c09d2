"""
The pages of upstream sign-in: the provider buttons' targets, the callback
the providers send people back to, and the account page section where
people link and unlink providers.

Every state-changing request is a POST with the CSRF token; the callback is
bound to the browser by a cookie. Any failure is one clear page and
nothing created. This module must never talk to a provider itself: the
connectors and L{UpstreamService} do that.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts.service import Account
from clickpass.config import ConfigError, Settings, read_secret_file
from clickpass.i18n import N_
from clickpass.storage.sql import Storage, Transaction
from clickpass.upstream.connectors import Connector, make_connector, resolve
from clickpass.upstream.http import UpstreamError, UpstreamHTTP, make_agent
from clickpass.upstream.service import (
    LINK,
    REAUTH,
    SIGN_IN,
    AddressLost,
    FlowError,
    UpstreamService,
)
from clickpass.web.app import WebApp, safe_next
from clickpass.web.pages import AccountSection
from clickpass.web.routing import HTTPError, Router

log = Logger()

BROWSER_COOKIE = b"cp_upstream"
ACCOUNT_PAGE = "/account/upstream"
CALLBACK_PARAMS = ("state", "code", "error", "error_description", "iss")


def build_connectors(
    reactor: Any, settings: Settings, now: Any = time.time
) -> dict[str, Connector]:
    """One connector per configured provider, sharing one verifying HTTP client."""
    upstream = settings.upstream
    if not upstream.provider:
        return {}
    ca_bundle = settings.data_path(upstream.ca_bundle) if upstream.ca_bundle else None
    try:
        agent = make_agent(reactor, ca_bundle, upstream.timeout)
    except (OSError, ValueError) as e:
        raise ConfigError(f"[upstream] ca_bundle: {e}") from None
    http = UpstreamHTTP(agent, reactor, upstream.timeout, upstream.max_response_bytes)
    connectors: dict[str, Connector] = {}
    for provider in upstream.provider:
        secret = ""
        if provider.client_secret_file:
            secret = read_secret_file(
                settings.data_path(provider.client_secret_file),
                f"[[upstream.provider]] {provider.name} client_secret_file",
            )
        connectors[provider.name] = make_connector(resolve(provider, secret), http, upstream, now)
    return connectors


async def _no_values(account: Account) -> dict[str, Any]:
    return {}


# The account page's line naming the providers, linking to ACCOUNT_PAGE.
ACCOUNT_SECTION = AccountSection("upstream_account_summary.html", _no_values)


class SecondStep(Protocol):
    """
    What follows a sign-in through a provider (clickpass.mfa): the answer
    that signs the person in (the security log naming C{provider}), or
    first asks for their second factor. And step-up through a provider:
    whether the person may confirm it is them that way (the refusal, one
    sentence, or L{None}: a person with a second factor must give it), and
    the answer once they have (the session marked fresh).
    """

    async def after_federated(
        self, request: Request, account: Account, next_url: str, provider: str
    ) -> bytes: ...

    async def reauth_refusal(self, account: Account) -> str | None: ...

    async def after_reauth(
        self, request: Request, account: Account, next_url: str, provider: str
    ) -> bytes: ...


def _linked_providers(tx: Transaction, account_id: int) -> list[str]:
    rows = tx.fetchall(
        "SELECT provider FROM upstream_identities WHERE account_id = ? ORDER BY created, id",
        account_id,
    )
    return [str(r[0]) for r in rows]


class ReauthChoices:
    """
    The providers through which a signed-in person may confirm it is them
    (step-up): those configured here with an identity linked to their
    account. Built before the second factors, whose step-up page offers them.
    """

    def __init__(self, storage: Storage, connectors: dict[str, Connector]) -> None:
        self._storage = storage
        self._connectors = connectors

    async def providers_of(self, account_id: int) -> list[tuple[str, str]]:
        """(name, display name) of each provider linked to C{account_id}, once each."""
        if not self._connectors:
            return []
        names: list[str] = await self._storage.run(_linked_providers, account_id)
        seen: dict[str, str] = {}
        for name in names:
            connector = self._connectors.get(name)
            if connector is not None and name not in seen:
                seen[name] = connector.display_name
        return list(seen.items())


class UpstreamPages:
    """The handlers of upstream sign-in's pages."""

    def __init__(
        self,
        app: WebApp,
        service: UpstreamService,
        connectors: dict[str, Connector],
        second_step: SecondStep | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.connectors = connectors
        self.second_step = second_step

    def failure(self, request: Request, error: FlowError | UpstreamError, next_url: str) -> bytes:
        if isinstance(error, FlowError):
            status = error.status
        else:
            status = 502
            log.warn(
                "upstream sign-in failed: {reason}: {message}",
                reason=error.reason,
                message=error.message,
            )
        request.setResponseCode(status)
        return self.app.render(
            request,
            "upstream_error.html",
            status=status,
            message=error.message,
            next=next_url,
        )

    def browser(self, request: Request) -> str:
        raw = request.getCookie(BROWSER_COOKIE)
        return raw.decode("ascii", "replace") if raw else ""

    async def begin(
        self, request: Request, name: str, intent: str, account_id: int | None
    ) -> bytes:
        next_url = ACCOUNT_PAGE if intent == LINK else safe_next(self.app.form(request, "next"))
        session = self.app.session_token(request) if intent == REAUTH else ""
        try:
            started = await self.service.start(
                name, intent, account_id, next_url, self.browser(request), session
            )
        except (FlowError, UpstreamError) as e:
            return self.failure(request, e, next_url)
        # Lax: the provider's redirect back is a top-level GET, which carries it.
        self.app.set_cookie(request, BROWSER_COOKIE, started.browser, None)
        return self.app.redirect(request, started.url)

    async def start(self, request: Request, name: str) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.current_account(request)
        if account is not None:
            return self.app.redirect(request, safe_next(self.app.form(request, "next")))
        return await self.begin(request, name, SIGN_IN, None)

    async def link(self, request: Request, name: str) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request)
        return await self.begin(request, name, LINK, account.id)

    async def reauth(self, request: Request, name: str) -> bytes:
        """
        Step-up through a provider linked to the signed-in person's account:
        off to the provider, which is asked to make them sign in again.
        """
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back="/account/confirm")
        if self.second_step is not None:
            refusal = await self.second_step.reauth_refusal(account)
            if refusal is not None:
                raise HTTPError(403, refusal)
        linked = {i.provider for i in await self.service.linked(account.id)}
        if name not in linked or name not in self.connectors:
            raise HTTPError(
                400, N_("That sign-in provider is not linked to your account; confirm another way.")
            )
        return await self.begin(request, name, REAUTH, account.id)

    async def callback(self, request: Request, name: str) -> bytes:
        params: dict[str, str] = {}
        for key in CALLBACK_PARAMS:
            value = self.app.form(request, key)
            if value:
                params[key] = value
        account = await self.app.current_account(request)
        try:
            finished = await self.service.finish(
                name,
                params,
                self.browser(request),
                account.id if account else None,
                self.app.session_token(request),
            )
        except (FlowError, UpstreamError) as e:
            return self.failure(request, e, ACCOUNT_PAGE if account else "/account")
        if finished.outcome == "reauthenticated":
            assert account is not None  # the flow is bound to this signed-in session
            if self.second_step is None:
                return self.app.redirect(request, safe_next(finished.next_url))
            return await self.second_step.after_reauth(
                request, account, safe_next(finished.next_url), name
            )
        if account is None or account.id != finished.account_id:
            found = await self.app.accounts.get(finished.account_id)
            if found is None:  # pragma: no cover - just written in the same flow
                raise HTTPError(500, N_("Something went wrong on our side. Please try again."))
            if self.second_step is not None:
                # A provider's sign-in is a first factor only: a person with
                # a second factor gives it too.
                return await self.second_step.after_federated(
                    request, found, safe_next(finished.next_url), name
                )
            await self.app.sign_in(request, found, method=name)
        return self.app.redirect(request, safe_next(finished.next_url))

    async def account_page(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        linked = await self.service.linked(account.id)
        names = {c.name: c.display_name for c in self.connectors.values()}
        return self.app.render(
            request,
            "upstream_account.html",
            account=account,
            linked=[
                {
                    "id": i.id,
                    "provider": names.get(i.provider, i.provider),
                    "email": i.email,
                    "email_verified": i.email_verified,
                    "display_name": i.display_name,
                }
                for i in linked
            ],
            message=self.app.form(request, "done"),
        )

    async def unlink(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request)
        raw = self.app.form(request, "identity")
        if not raw.isdigit() or len(raw) > 18:
            raise HTTPError(400, N_("Choose a linked sign-in method to unlink."))
        try:
            await self.service.unlink(account.id, int(raw))
        except FlowError as e:
            return self.failure(request, e, ACCOUNT_PAGE)
        return self.app.redirect(request, ACCOUNT_PAGE + "?done=unlinked")


def install(
    app: WebApp,
    router: Router,
    connectors: dict[str, Connector],
    second_step: SecondStep | None = None,
    address_lost: AddressLost | None = None,
) -> UpstreamService:
    """
    Register the upstream sign-in pages on C{router}; the service returned
    is the OpenID provider's source of claims. C{address_lost} tells an
    address taken from an unverified account by its verified owner.
    """
    service = UpstreamService(
        app.storage,
        app.settings.upstream,
        connectors,
        app.settings.base_url,
        address_lost=address_lost,
    )
    # The sign-in and sign-up pages show a button per provider.
    app.templates.globals["upstream_providers"] = [
        {"name": c.name, "display_name": c.display_name} for c in connectors.values()
    ]
    pages = UpstreamPages(app, service, connectors, second_step)
    router.add("POST", "/upstream/{name}/start", pages.start)
    router.add("POST", "/upstream/{name}/link", pages.link)
    router.add("POST", "/upstream/{name}/reauth", pages.reauth)
    router.add("GET", "/upstream/{name}/callback", pages.callback)
    router.add("GET", ACCOUNT_PAGE, pages.account_page)
    router.add("POST", "/account/upstream/unlink", pages.unlink)
    return service


__all__ = ["ACCOUNT_SECTION", "ReauthChoices", "build_connectors", "install"]

"""
The pages people use for their Clickpass account: home, sign-up, sign-in,
sign-out (and the page saying it happened), account, the footer's privacy,
terms and help pages (shipped, or the operator's: [web] *_page), plus static
files and the liveness probe.

Every form carries a CSRF token; bad credentials get one generic message.

Features add to these pages through the seams below (L{HomeDiscovery},
L{SigninBranding}, L{AccountSection}, L{SecondStep}), given by the application's
composition root; this module must never import a feature.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from markupsafe import Markup

from twisted.web.server import Request

from clickpass import i18n
from clickpass.accounts.service import (
    Account,
    AccountError,
    HashingBusy,
    SignUpThrottled,
    Throttled,
)
from clickpass.config import Settings
from clickpass.i18n import N_
from clickpass.web.app import FOOTER_PAGES, STATIC, WebApp, safe_next
from clickpass.web.routing import HTTPError, Router


@dataclass(frozen=True)
class HomeDiscovery:
    """
    What a feature serves at the site root besides the home page (the OpenID
    provider: discovery of its OP Identifier): C{answer} gives the response
    instead of the page, or L{None}; C{head_html} goes into the page's head.
    """

    answer: Callable[[Request], bytes | None]
    head_html: str


class SigninBranding(Protocol):
    """Who a person signs in for (a partner site), for "to continue to PARTNER"."""

    async def branding(self, next_url: str) -> dict[str, str] | None: ...


class SignUpFlow(Protocol):
    """
    What a valid sign-up form leads to (the accounts' mailed verification):
    the page to answer with, the same whether or not the address is taken.
    """

    async def signed_up(
        self, request: Request, email: str, password: str, next_url: str
    ) -> bytes: ...


@dataclass(frozen=True)
class AccountSection:
    """
    A feature's part of the account page: the C{template} included there,
    and the values it needs for a signed-in C{Account}.
    """

    template: str
    context: Callable[[Account], Awaitable[dict[str, Any]]]
    # For a part that depends on the browser asking (its own session).
    request_context: Callable[[Account, Request], Awaitable[dict[str, Any]]] | None = None


class SecondStep(Protocol):
    """
    What follows a correct password (second factors): the answer that asks
    for more before the session starts, or L{None} to sign the person in.
    """

    async def after_password(
        self, request: Request, account: Account, next_url: str
    ) -> bytes | None: ...


class AccountPages:
    """The handlers of the account pages, with the features' parts of them."""

    def __init__(
        self,
        app: WebApp,
        home_discovery: HomeDiscovery | None,
        branding: SigninBranding | None,
        account_sections: Sequence[AccountSection],
        second_step: SecondStep | None = None,
        signup_flow: SignUpFlow | None = None,
    ) -> None:
        self.app = app
        self.signup_flow = signup_flow
        self.home_discovery = home_discovery
        self.branding = branding
        self.account_sections = account_sections
        self.second_step = second_step
        self.statics = _load_static()
        self.info_pages = _load_info_pages(app.settings)

    async def home(self, request: Request) -> bytes:
        head = ""
        if self.home_discovery is not None:
            answer = self.home_discovery.answer(request)
            if answer is not None:
                return answer
            head = self.home_discovery.head_html
        account = await self.app.current_account(request)
        return self.app.render(request, "home.html", account=account, openid_head=head)

    async def arriving_from(self, next_url: str) -> dict[str, str] | None:
        # The partner site a person signs in for; None for anything else.
        if self.branding is None:
            return None
        return await self.branding.branding(next_url)

    async def form_page(
        self,
        request: Request,
        template: str,
        next_url: str,
        email: str = "",
        error: str | None = None,
    ) -> bytes:
        # The sign-in and sign-up pages, fresh or with the one error to show.
        return self.app.render(
            request,
            template,
            next=next_url,
            email=email,
            error=error,
            partner=await self.arriving_from(next_url),
            destination=destination_host(next_url),
            # The sign-in form shown again keeps the person's choice.
            keep=self.app.form(request, "keep") == "yes",
        )

    async def busy(
        self, request: Request, template: str, next_url: str, email: str, e: HashingBusy
    ) -> bytes:
        # Too many passwords to check at this worker: try again shortly.
        request.setResponseCode(503)
        request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
        return await self.form_page(request, template, next_url, email, str(e))

    async def signup_form(self, request: Request) -> bytes:
        account = await self.app.current_account(request)
        next_url = safe_next(self.app.form(request, "next"))
        if account is not None:
            return self.app.redirect(request, next_url)
        return await self.form_page(request, "signup.html", next_url)

    async def signup(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        email = self.app.form(request, "email")
        password = self.app.form(request, "password")
        next_url = safe_next(self.app.form(request, "next"))
        try:
            if password != self.app.form(request, "password_again"):
                raise AccountError(N_("The two passwords differ. Type the same password twice."))
            if self.signup_flow is not None:
                return await self.signup_flow.signed_up(request, email, password, next_url)
            account = await self.app.accounts.sign_up(
                email, password, self.app.client_address(request)
            )
        except HashingBusy as e:
            return await self.busy(request, "signup.html", next_url, email, e)
        except SignUpThrottled as e:
            request.setResponseCode(429)
            request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
            return await self.form_page(request, "signup.html", next_url, email, str(e))
        except AccountError as e:
            request.setResponseCode(400)
            return await self.form_page(request, "signup.html", next_url, email, str(e))
        await self.app.sign_in(request, account, method="signup")
        return self.app.redirect(request, next_url)

    async def signin_form(self, request: Request) -> bytes:
        account = await self.app.current_account(request)
        next_url = safe_next(self.app.form(request, "next"))
        if account is not None:
            return self.app.redirect(request, next_url)
        # An OpenID Connect login_hint fills in the address.
        hint = self.app.form(request, "login_hint")[:254]
        return await self.form_page(request, "signin.html", next_url, hint)

    async def signin(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        email = self.app.form(request, "email")
        next_url = safe_next(self.app.form(request, "next"))
        try:
            account = await self.app.accounts.authenticate(
                email,
                self.app.form(request, "password"),
                self.app.client_address(request),
                self.app.browser(request),
            )
        except HashingBusy as e:
            self.app.signins.inc(outcome="busy")
            return await self.busy(request, "signin.html", next_url, email, e)
        except Throttled as e:
            self.app.signins.inc(outcome="throttled")
            request.setResponseCode(429)
            request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
            return await self.form_page(request, "signin.html", next_url, email, str(e))
        except AccountError as e:
            self.app.signins.inc(outcome="refused")
            request.setResponseCode(401)
            return await self.form_page(request, "signin.html", next_url, email, str(e))
        self.app.signins.inc(outcome="success")
        # Unticked, the session ends when the browser closes.
        self.app.choose_keep(request, self.app.form(request, "keep") == "yes")
        if self.second_step is not None:
            answer = await self.second_step.after_password(request, account, next_url)
            if answer is not None:
                return answer
        await self.app.sign_in(request, account)
        return self.app.redirect(request, next_url)

    async def signout(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        await self.app.sign_out(request)
        return self.app.redirect(request, "/signed-out")

    async def choose_language(self, request: Request) -> bytes:
        # The footer's switcher; back to the page it was on (the Referer,
        # sent for our own pages: Referrer-Policy same-origin), never to
        # another site. A language we do not speak changes nothing.
        self.app.check_csrf(request)
        chosen = i18n.known(self.app.form(request, "language"))
        if chosen is not None:
            self.app.set_language(request, chosen)
        return self.app.redirect(request, self.app.page_before(request))

    async def signed_out(self, request: Request) -> bytes:
        # Says that signing out worked; someone still signed in is not told so.
        account = await self.app.current_account(request)
        return self.app.render(request, "signed_out.html", still_signed_in=account is not None)

    async def info_page(self, request: Request, name: str) -> bytes:
        # The privacy, terms and help pages: an operator's file, or ours.
        page = self.info_pages[name]
        if page.startswith(("http://", "https://")):
            return self.app.redirect(request, page, 302)
        await self.app.current_account(request)
        if page:
            # The operator's own file, named in the configuration: trusted as a template is.
            body = Markup(page)  # noqa: S704 - the operator's page, not anyone's input
            return self.app.render(request, "info_page.html", name=name, body=body)
        return self.app.render(request, f"info_{name}.html", name=name)

    async def account_page(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        context: dict[str, Any] = {}
        for section in self.account_sections:
            context.update(await section.context(account))
            if section.request_context is not None:
                context.update(await section.request_context(account, request))
        return self.app.render(
            request,
            "account.html",
            account=account,
            account_sections=[section.template for section in self.account_sections],
            **context,
        )

    async def healthz(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"

    async def readyz(self, request: Request) -> bytes:
        # Ready: the database answers and takes writes (clickpass.monitor.health).
        from clickpass.monitor.health import readiness

        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        problems = await readiness(self.app)
        if problems:
            request.setResponseCode(503)
            return ("not ready: " + "; ".join(problems) + "\n").encode("utf-8")
        return b"ready\n"

    async def static(self, request: Request, name: str) -> bytes:
        found = self.statics.get(name)
        if found is None:
            raise HTTPError(404, N_("There is nothing at this address."))
        body, content_type, etag = found
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"public, max-age=3600")
        request.setHeader(b"etag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        return body


def install(
    app: WebApp,
    router: Router,
    *,
    home_discovery: HomeDiscovery | None = None,
    branding: SigninBranding | None = None,
    account_sections: Sequence[AccountSection] = (),
    second_step: SecondStep | None = None,
    signup_flow: SignUpFlow | None = None,
) -> None:
    """Register the account pages on C{router}, with the features' parts of them."""
    pages = AccountPages(app, home_discovery, branding, account_sections, second_step, signup_flow)
    router.add("GET", "/", pages.home)
    router.add("GET", "/signup", pages.signup_form)
    router.add("POST", "/signup", pages.signup)
    router.add("GET", "/signin", pages.signin_form)
    router.add("POST", "/signin", pages.signin)
    router.add("POST", "/signout", pages.signout)
    router.add("POST", "/language", pages.choose_language)
    router.add("GET", "/account", pages.account_page)
    router.add("GET", "/signed-out", pages.signed_out)
    for name in pages.info_pages:
        router.add("GET", "/" + name, partial(pages.info_page, name=name))
    router.add("GET", "/healthz", pages.healthz)
    router.add("GET", "/readyz", pages.readyz)
    router.add("GET", "/static/{name}", pages.static)


# Where a sign-in request names the site that asked for it: an OpenID 2
# realm (or its OpenID 1 name, or failing both the return address), or an
# OpenID Connect redirect_uri. Read as text from the address the person
# goes on to, so this module stays ignorant of the features behind it.
DESTINATION_FIELDS = ("openid.realm", "openid.trust_root", "openid.return_to", "redirect_uri")


def destination_host(next_url: str) -> str | None:
    """
    The host name of the site a sign-in continues to, for "to continue to
    HOST", when C{next_url} is a sign-in request of a site; L{None} otherwise.
    """
    query = parse_qs(urlsplit(next_url).query)
    for name in DESTINATION_FIELDS:
        for value in query.get(name, ()):
            try:
                host = urlsplit(value).hostname
            except ValueError:
                continue
            if host:
                # A realm's wildcard ("*.example.com") names the domain.
                return host.removeprefix("*.")
    return None


def _load_info_pages(settings: Settings) -> dict[str, str]:
    """
    Each footer page's source ([web] *_page): its URL, the HTML of the
    operator's file (checked readable at start, L{clickpass.config.check_files}),
    or "" for the page shipped here.
    """
    pages: dict[str, str] = {}
    for name, _label in FOOTER_PAGES:
        page = str(getattr(settings.web, f"{name}_page"))
        if page and not page.startswith(("http://", "https://")):
            page = settings.data_path(page).read_text(encoding="utf-8")
        pages[name] = page
    return pages


def _load_static() -> dict[str, tuple[bytes, bytes, bytes]]:
    files: dict[str, tuple[bytes, bytes, bytes]] = {}
    for path in STATIC.iterdir():
        if not path.is_file():
            continue
        body = path.read_bytes()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode("ascii") + b'"'
        files[path.name] = (body, content_type.encode("ascii"), etag)
    return files

"""
The kernel of the web application a worker serves: what every page
shares. The kernel every feature builds on: L{WebApp} (sessions, CSRF, forms,
rendering), the per-request L{RequestState}, and L{AppSite}. The
application is assembled in clickpass.application; this module must never
import a feature (OpenID, partners, upstream sign-in).
Nothing here blocks the reactor: database work goes through the storage's
pool, password hashing through threads.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape

from twisted.internet.address import UNIXAddress
from twisted.web.server import Request, Site
from zope.interface import Interface

from clickpass import i18n
from clickpass._version import __version__
from clickpass.accounts.events import describe_browser
from clickpass.accounts.service import Account, Accounts, SignIn
from clickpass.config import Settings
from clickpass.i18n import N_, Text
from clickpass.monitor.metrics import Registry
from clickpass.storage.sql import Storage
from clickpass.web.routing import HTTPError, Router

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

SESSION_COOKIE = b"cp_session"
CSRF_COOKIE = b"cp_csrf"
# A long-lived random name for the browser, so that a sign-in from a
# browser the account never used is noticed (only its hash is stored).
BROWSER_COOKIE = b"cp_browser"
BROWSER_COOKIE_AGE = 2 * 365 * 24 * 3600
# Whether the person asked to stay signed in ("1") or not ("0"), for the
# length of this browser session: it carries the choice made on the password
# form through any second step to where the session starts.
KEEP_COOKIE = b"cp_keep"
# The language the person chose with the footer's switcher (a year), and
# the one a partner asked for in the sign-in flow under way (ui_locales,
# openid.ui.lang: for this browser session, under the person's own choice
# of the flow's pages). Both are read only when they name a known language.
LANGUAGE_COOKIE = b"cp_lang"
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600
FLOW_LANGUAGE_COOKIE = b"cp_flow_lang"
MAX_FIELD = 4096

SECURITY_HEADERS = {
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"content-security-policy": b"default-src 'self'; img-src 'self' https: data:; "
    b"frame-ancestors 'none'; form-action 'self' http: https:",
}

T = TypeVar("T")

# What a page says at its top after an action redirected to it with
# ?done=NAME: a fixed list, so that a link cannot make a page say anything else.
NOTICES = {
    "site-disconnected": N_(
        "Disconnected. That site will not sign you in with Clickpass until you connect it again."
    ),
    "site-forget-asked": N_(
        "Disconnected, and the site was asked to delete what it holds about you."
    ),
    "approval-forgotten": N_("Forgotten. That site will ask you again before it signs you in."),
}


class IRequestState(Interface):
    """The key under which a request carries its L{RequestState}."""


class Unread:
    """A value not looked up yet (as opposed to one looked up and found missing)."""


UNREAD = Unread()


@dataclass
class RequestState:
    """
    What the kernel learns about one request while serving it, kept on the
    request as a component (Twisted's C{Request} is C{Componentized}) so
    that each is looked up at most once: the signed-in person and the CSRF
    cookie.
    """

    account: Account | Unread | None = UNREAD
    csrf_cookie: str | None = None
    # The "keep me signed in" choice made in this request (L{WebApp.choose_keep}).
    keep: bool | None = None
    # The language the request's pages and mail are in (L{WebApp.choose_language}).
    language: str | None = None


def request_state(request: Request) -> RequestState:
    """The request's L{RequestState}, made on first use."""
    state = request.getComponent(IRequestState)
    if not isinstance(state, RequestState):
        state = RequestState()
        request.setComponent(IRequestState, state)
    return state


class WebApp:
    """What every page handler shares."""

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        storage: Storage,
        secret: bytes,
        *,
        client_header: bytes,
    ) -> None:
        self.reactor = reactor
        # The header in which the front names the client (its own; it drops
        # any copy a client sent): given by the application, which knows the
        # front, so that the kernel imports nothing of it.
        self.client_header = client_header
        self.settings = settings
        self.storage = storage
        self.secret = secret
        self.accounts = Accounts(reactor, storage, settings.accounts)
        # This worker's metrics; the front adds up every worker's on /metrics.
        self.metrics = Registry()
        self.signins = self.metrics.counter(
            "clickpass_signins_total",
            "Password sign-ins at Clickpass, by outcome (success, refused, throttled, busy).",
            ("outcome",),
        )
        self._csrf_key = self.derive_key(b"csrf")
        self.templates = Environment(
            loader=FileSystemLoader(str(TEMPLATES)),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        i18n.install(self.templates)
        self.templates.filters["tr"] = i18n.translate
        self.templates.globals.update(
            version=__version__,
            base_url=settings.base_url,
            min_password_length=settings.accounts.min_password_length,
            footer_links=footer_links(settings),
        )

    def derive_key(self, purpose: bytes) -> bytes:
        """A key for one purpose, derived from the master secret."""
        return hmac.new(self.secret, b"clickpass key: " + purpose, hashlib.sha256).digest()

    # Requests.

    def client_address(self, request: Request) -> str:
        """
        The client's address. Behind our own front (a unix socket, which
        only the front reaches) it is the front's X-Clickpass-Client: the
        front works it out (from [web] trusted_proxies) and drops any copy a
        client sent. X-Forwarded-For is never believed here.
        """
        peer = request.getClientAddress()
        if isinstance(peer, UNIXAddress):
            client = request.getHeader(self.client_header)
            return client.decode("ascii", "replace")[:64] if client else "unknown"
        return str(getattr(peer, "host", "unknown"))

    def is_secure(self, request: Request) -> bool:
        if request.isSecure() or self.settings.served_over_tls:
            return True
        if isinstance(request.getClientAddress(), UNIXAddress):
            # Set by the front (or passed on from a trusted proxy).
            return request.getHeader(b"x-forwarded-proto") == b"https"
        return False

    def set_cookie(self, request: Request, name: bytes, value: str, max_age: int | None) -> None:
        request.addCookie(
            name,
            value.encode("ascii"),
            path=b"/",
            max_age=str(max_age).encode("ascii") if max_age is not None else None,
            httpOnly=True,
            secure=self.is_secure(request),
            sameSite="lax",
        )

    def form(self, request: Request, name: str, default: str = "") -> str:
        """One form field as text; a bad or oversized value is a 400."""
        values = (request.args or {}).get(name.encode("ascii"))
        if not values:
            return default
        raw: bytes = values[0]
        if len(raw) > MAX_FIELD:
            raise HTTPError(400, Text(N_("The field %(name)r is too long."), name=name))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(
                400, Text(N_("The field %(name)r is not valid UTF-8."), name=name)
            ) from None

    # Sessions.

    def session_token(self, request: Request) -> str:
        raw = request.getCookie(SESSION_COOKIE)
        return raw.decode("ascii", "replace") if raw else ""

    async def current_account(self, request: Request) -> Account | None:
        """The signed-in person, or L{None}; looked up once per request."""
        state = request_state(request)
        if not isinstance(state.account, Unread):
            return state.account
        token = self.session_token(request)
        account = await self.accounts.session_account(token) if token else None
        state.account = account
        return account

    async def current_account_with(
        self, request: Request, fn: Callable[..., T], *args: object
    ) -> tuple[Account | None, T | None]:
        """
        L{current_account}, and C{fn(tx, account, *args)} when someone is
        signed in: both in one transaction when the account was not looked up
        yet (L{Accounts.session_account_with}).
        """
        state = request_state(request)
        if not isinstance(state.account, Unread):
            account = state.account
            if account is None:
                return None, None
            extra: T = await self.storage.run(fn, account, *args)
            return account, extra
        token = self.session_token(request)
        found, seen = await self.accounts.session_account_with(token, fn, *args)
        state.account = found
        return found, seen

    async def require_account(self, request: Request, back: str | None = None) -> Account:
        """
        The signed-in person; otherwise a redirect to sign in and come back to
        C{back} (by default this request's address; a form's handler names
        the page the form was on, since its own address only takes a POST).
        """
        account = await self.current_account(request)
        if account is None:
            target = back if back is not None else request.uri.decode("latin-1")
            raise HTTPError(303, N_("Sign in first."), {"location": self.signin_url(target)})
        return account

    def browser(self, request: Request) -> str:
        """The asking browser's short name ("Firefox on Linux"), for the security log."""
        agent = request.getHeader(b"user-agent") or b""
        return describe_browser(agent.decode("utf-8", "replace")[:512])

    def how(self, request: Request, method: str = "password") -> SignIn:
        """Who is signing in (or changing their account), as the security log says it."""
        return SignIn(self.client_address(request), self.browser(request), method=method)

    def _browser_hash(self, request: Request) -> str:
        raw = request.getCookie(BROWSER_COOKIE)
        name = raw.decode("ascii", "replace") if raw else ""
        if not (16 <= len(name) <= 64) or not name.replace("-", "").replace("_", "").isalnum():
            name = secrets.token_urlsafe(24)
        # Renewed at every sign-in, so a browser in use keeps its name.
        self.set_cookie(request, BROWSER_COOKIE, name, BROWSER_COOKIE_AGE)
        return hashlib.sha256(name.encode("ascii")).hexdigest()

    def choose_keep(self, request: Request, keep: bool) -> None:
        """
        Record the person's "keep me signed in" choice for the session that
        L{sign_in} starts next in this browser (after a second step, too).
        """
        self.set_cookie(request, KEEP_COOKIE, "1" if keep else "0", None)
        request_state(request).keep = keep

    def keeps_session(self, request: Request) -> bool:
        """
        Whether the session cookie outlives the browser session: unless the
        person chose otherwise on the password form (L{choose_keep}).
        """
        chosen = request_state(request).keep
        if chosen is not None:
            return chosen
        return bool(request.getCookie(KEEP_COOKIE) != b"0")

    async def sign_in(self, request: Request, account: Account, method: str = "password") -> str:
        """
        Start a session for C{account}, rotating any token the browser had,
        and log the sign-in (C{method}: "password", "signup", or the
        upstream provider's name); return the new token (for a feature that
        records how it was signed in). The cookie lasts the configured
        session lifetime, or only until the browser closes when the person
        did not ask to stay signed in (L{keeps_session}).
        """
        how = dataclasses.replace(
            self.how(request, method), browser_hash=self._browser_hash(request)
        )
        token = await self.accounts.start_session(
            account, how.client_address, self.session_token(request) or None, how
        )
        lifetime = self.settings.accounts.session_lifetime if self.keeps_session(request) else None
        self.set_cookie(request, SESSION_COOKIE, token, lifetime)
        request_state(request).account = account
        return token

    async def sign_out(self, request: Request) -> None:
        token = self.session_token(request)
        if token:
            await self.accounts.end_session(token)
        self.set_cookie(request, SESSION_COOKIE, "", 0)
        request_state(request).account = None

    # CSRF: a random cookie, and in every form an HMAC of it.

    def csrf_token(self, request: Request) -> str:
        state = request_state(request)
        cookie = state.csrf_cookie
        if cookie is None:
            raw = request.getCookie(CSRF_COOKIE)
            cookie = raw.decode("ascii", "replace") if raw else ""
            if (
                not (16 <= len(cookie) <= 64)
                or not cookie.replace("-", "").replace("_", "").isalnum()
            ):
                cookie = secrets.token_urlsafe(24)
                self.set_cookie(request, CSRF_COOKIE, cookie, None)
            state.csrf_cookie = cookie
        return hmac.new(self._csrf_key, cookie.encode("ascii"), hashlib.sha256).hexdigest()

    def check_csrf(self, request: Request) -> None:
        """Refuse a form that did not come from one of our pages."""
        raw = request.getCookie(CSRF_COOKIE)
        given = self.form(request, "csrf_token")
        if raw and given:
            expected = hmac.new(self._csrf_key, raw, hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, given):
                return
        raise HTTPError(
            403,
            N_(
                "This form has expired or came from another site. Go back, reload the page "
                "and try again."
            ),
        )

    # Languages.

    def choose_language(self, request: Request) -> str:
        """
        Pick the request's language and make it the current one (for its
        pages and the mail it causes): a partner's wish for the sign-in
        flow under way, else the person's choice in the switcher, else
        the browser's Accept-Language, else English. Called first for
        every request (L{Router.on_request}), in the request's own context.
        """
        state = request_state(request)
        if state.language is None:
            state.language = i18n.known(_cookie(request, FLOW_LANGUAGE_COOKIE)) or _chosen_language(
                request
            )
        i18n.current.set(state.language)
        return state.language

    def set_language(self, request: Request, language: str) -> None:
        """The person chose C{language} (a known one) in the switcher: remember it."""
        self.set_cookie(request, LANGUAGE_COOKIE, language, LANGUAGE_COOKIE_AGE)
        if request.getCookie(FLOW_LANGUAGE_COOKIE):
            self.set_cookie(request, FLOW_LANGUAGE_COOKIE, "", 0)
        request_state(request).language = language
        i18n.current.set(language)

    def use_language(self, request: Request, language: str) -> None:
        """
        This request's page is in C{language} (a known one), because its
        address names it (a partner guide in another language): for this
        request only, nothing remembered.
        """
        request_state(request).language = language
        i18n.current.set(language)

    def page_before(self, request: Request) -> str:
        """
        The path and query of the page a form was posted from (its
        Referer), without a notice's C{done} (said once); C{/} when the
        browser did not say or it is not a path on this site.
        """
        referer = _header(request, b"referer") or ""
        parts = urlsplit(referer[:MAX_FIELD])
        if parts.netloc != (_header(request, b"host") or ""):
            return "/"
        kept = [p for p in parts.query.split("&") if p and not p.startswith("done=")]
        return safe_next(parts.path + ("?" + "&".join(kept) if kept else ""), "/")

    def follow_partner_language(self, request: Request, wishes: list[str] | None) -> None:
        """
        A sign-in flow starts with a partner's list of languages (C{None}:
        it named none): its pages follow the first we speak, for this
        browser session, unless the person chooses another in the
        switcher. A flow that names none forgets an earlier flow's.
        """
        language = i18n.pick(wishes) if wishes else None
        if language is None:
            if request.getCookie(FLOW_LANGUAGE_COOKIE):
                self.set_cookie(request, FLOW_LANGUAGE_COOKIE, "", 0)
                # This request no longer follows the earlier flow's language.
                language = _chosen_language(request)
                request_state(request).language = language
                i18n.current.set(language)
            return
        self.set_cookie(request, FLOW_LANGUAGE_COOKIE, language, None)
        request_state(request).language = language
        i18n.current.set(language)

    # Responses.

    def render(self, request: Request, template: str, **context: Any) -> bytes:
        # In a context of its own: an error page rendered outside any
        # handler must not leave its language behind in the reactor's.
        language = request_state(request).language or self.choose_language_outside(request)
        return contextvars.copy_context().run(self._render, request, language, template, context)

    def choose_language_outside(self, request: Request) -> str:
        """L{choose_language} for a page rendered outside a handler (a 404), leaving no trace."""
        return contextvars.copy_context().run(self.choose_language, request)

    def _render(
        self, request: Request, language: str, template: str, context: dict[str, Any]
    ) -> bytes:
        i18n.current.set(language)
        request.setHeader(b"content-language", language.encode("ascii"))
        request.setHeader(b"vary", b"Accept-Language, Cookie")
        context.setdefault("language", language)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        context.setdefault("csrf_token", self.csrf_token(request))
        done = (request.args or {}).get(b"done", [b""])[0]
        notice = NOTICES.get(done.decode("ascii", "replace"))
        context.setdefault("notice", i18n.translate(notice) if notice else None)
        known = request_state(request).account
        context.setdefault("account", None if isinstance(known, Unread) else known)
        return self.templates.get_template(template).render(**context).encode("utf-8")

    def redirect(self, request: Request, url: str, status: int = 303) -> bytes:
        request.setResponseCode(status)
        # The router percent-encodes what is not visible ASCII (safe_location).
        request.setHeader(b"location", url.encode("utf-8"))
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def signin_url(self, next_url: str) -> str:
        return "/signin?next=" + quote(safe_next(next_url), safe="")

    def error_page(self, request: Request, status: int, message: str) -> bytes:
        if status in (301, 302, 303, 307):
            return b""
        return self.render(request, "error.html", status=status, message=message)


@dataclass(frozen=True)
class FooterLink:
    """One of the footer's links to the pages an operator can replace ([web] *_page)."""

    name: str
    label: str
    url: str


FOOTER_PAGES = (("privacy", N_("Privacy")), ("terms", N_("Terms of use")), ("help", N_("Help")))


def footer_links(settings: Settings) -> list[FooterLink]:
    """The footer's links: the operator's URL for a page, or our own address for it."""
    links = []
    for name, label in FOOTER_PAGES:
        page = str(getattr(settings.web, f"{name}_page"))
        url = page if page.startswith(("http://", "https://")) else "/" + name
        links.append(FooterLink(name, label, url))
    return links


def _chosen_language(request: Request) -> str:
    """The person's own language: the switcher's choice, else the browser's, else English."""
    return (
        i18n.known(_cookie(request, LANGUAGE_COOKIE))
        or i18n.negotiate(_header(request, b"accept-language"))
        or i18n.DEFAULT
    )


def _cookie(request: Request, name: bytes) -> str | None:
    raw = request.getCookie(name)
    return raw.decode("ascii", "replace") if raw else None


def _header(request: Request, name: bytes) -> str | None:
    raw = request.getHeader(name)
    return raw.decode("latin-1") if raw else None


def day(ts: int) -> str:
    """A Unix time as the UTC date the account pages show (2026-12-06)."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d")


def safe_next(value: str, default: str = "/account") -> str:
    """
    Where to go after signing in: only a path on this site, never another
    host (an open redirect would let anyone phish with our name).
    """
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 0x20 for c in value):
        return default
    return value


class AppSite(Site):
    """The Site a worker serves: the router, with the application and its metrics."""

    def __init__(self, root: Router, app: WebApp) -> None:
        super().__init__(root)
        self.displayTracebacks = False
        self.app = app
        # The worker hands this registry's snapshot to the front, which
        # serves /metrics for the node.
        self.metrics = app.metrics

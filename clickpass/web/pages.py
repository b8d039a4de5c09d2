"""
The pages people use for their Clickpass account: home, sign-up, sign-in,
sign-out, account, plus static files and the liveness probe.

Every form carries a CSRF token; bad credentials get one generic message.
"""

from __future__ import annotations

import hashlib
import mimetypes

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts.service import AccountError, HashingBusy, Throttled
from clickpass.openid import approvals
from clickpass.openid.discovery import op_discovery, op_head_html
from clickpass.openid.extensions import FIELD_LABELS
from clickpass.web.app import STATIC, WebApp, day, safe_next
from clickpass.web.routing import HTTPError, Router

log = Logger()


def install(app: WebApp, router: Router) -> None:
    """Register the account pages on C{router}."""

    async def home(request: Request) -> bytes:
        # The site root is the OpenID OP Identifier: Yadis and HTML discovery.
        xrds = op_discovery(request, app.settings.base_url)
        if xrds is not None:
            return xrds
        account = await app.current_account(request)
        return app.render(
            request, "home.html", account=account, openid_head=op_head_html(app.settings.base_url)
        )

    async def arriving_from(next_url: str) -> dict[str, str] | None:
        # The partner site a person signs in for, for "to continue to PARTNER"
        # (clickpass.partners.flow.PartnerFlow.branding); None for anything else.
        partners = getattr(app, "partners", None)
        if partners is None:
            return None
        branding: dict[str, str] | None = await partners.branding(next_url)
        return branding

    async def form_page(
        request: Request, template: str, next_url: str, email: str = "", error: str | None = None
    ) -> bytes:
        # The sign-in and sign-up pages, fresh or with the one error to show.
        return app.render(
            request,
            template,
            next=next_url,
            email=email,
            error=error,
            partner=await arriving_from(next_url),
        )

    async def busy(
        request: Request, template: str, next_url: str, email: str, e: HashingBusy
    ) -> bytes:
        # Too many passwords to check at this worker: try again shortly.
        request.setResponseCode(503)
        request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
        return await form_page(request, template, next_url, email, str(e))

    async def signup_form(request: Request) -> bytes:
        account = await app.current_account(request)
        next_url = safe_next(app.form(request, "next"))
        if account is not None:
            return app.redirect(request, next_url)
        return await form_page(request, "signup.html", next_url)

    async def signup(request: Request) -> bytes:
        app.check_csrf(request)
        email = app.form(request, "email")
        password = app.form(request, "password")
        next_url = safe_next(app.form(request, "next"))
        try:
            if password != app.form(request, "password_again"):
                raise AccountError("The two passwords differ. Type the same password twice.")
            account = await app.accounts.sign_up(email, password)
        except HashingBusy as e:
            return await busy(request, "signup.html", next_url, email, e)
        except AccountError as e:
            request.setResponseCode(400)
            return await form_page(request, "signup.html", next_url, email, str(e))
        await app.sign_in(request, account)
        return app.redirect(request, next_url)

    async def signin_form(request: Request) -> bytes:
        account = await app.current_account(request)
        next_url = safe_next(app.form(request, "next"))
        if account is not None:
            return app.redirect(request, next_url)
        return await form_page(request, "signin.html", next_url)

    async def signin(request: Request) -> bytes:
        app.check_csrf(request)
        email = app.form(request, "email")
        next_url = safe_next(app.form(request, "next"))
        try:
            account = await app.accounts.authenticate(
                email, app.form(request, "password"), app.client_address(request)
            )
        except HashingBusy as e:
            app.signins.inc(outcome="busy")
            return await busy(request, "signin.html", next_url, email, e)
        except Throttled as e:
            app.signins.inc(outcome="throttled")
            request.setResponseCode(429)
            request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
            return await form_page(request, "signin.html", next_url, email, str(e))
        except AccountError as e:
            app.signins.inc(outcome="refused")
            request.setResponseCode(401)
            return await form_page(request, "signin.html", next_url, email, str(e))
        app.signins.inc(outcome="success")
        await app.sign_in(request, account)
        return app.redirect(request, next_url)

    async def signout(request: Request) -> bytes:
        app.check_csrf(request)
        await app.sign_out(request)
        return app.redirect(request, "/")

    async def account_page(request: Request) -> bytes:
        account = await app.require_account(request)
        partners = getattr(app, "partners", None)
        sites = await partners.connected(account) if partners is not None else []
        allowed = await app.storage.run(approvals.remembered, account.id)
        return app.render(
            request,
            "account.html",
            account=account,
            partner_sites=sites,
            approvals=[
                {
                    "realm": a.realm,
                    "fields": ", ".join(FIELD_LABELS.get(f, f) for f in a.fields),
                    "created": day(a.created),
                    "last_used": day(a.last_used),
                }
                for a in allowed
            ],
        )

    async def forget_approval(request: Request) -> bytes:
        # The next sign-in at that site asks again (the consent page).
        app.check_csrf(request)
        account = await app.require_account(request, back="/account")
        realm = app.form(request, "realm")
        if not await app.storage.run(approvals.forget, account.id, realm):
            raise HTTPError(404, "You had not allowed that site to sign you in.")
        log.info("person forgot their approval of {realm}", realm=realm)
        return app.redirect(request, "/account")

    async def healthz(request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"

    async def readyz(request: Request) -> bytes:
        # Ready: the database answers and takes writes (clickpass.monitor.health).
        from clickpass.monitor.health import readiness

        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        problems = await readiness(app)
        if problems:
            request.setResponseCode(503)
            return ("not ready: " + "; ".join(problems) + "\n").encode("utf-8")
        return b"ready\n"

    statics = _load_static()

    async def static(request: Request, name: str) -> bytes:
        found = statics.get(name)
        if found is None:
            raise HTTPError(404, "There is nothing at this address.")
        body, content_type, etag = found
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"public, max-age=3600")
        request.setHeader(b"etag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        return body

    router.add("GET", "/", home)
    router.add("GET", "/signup", signup_form)
    router.add("POST", "/signup", signup)
    router.add("GET", "/signin", signin_form)
    router.add("POST", "/signin", signin)
    router.add("POST", "/signout", signout)
    router.add("GET", "/account", account_page)
    router.add("POST", "/account/approvals/forget", forget_approval)
    router.add("GET", "/healthz", healthz)
    router.add("GET", "/readyz", readyz)
    router.add("GET", "/static/{name}", static)


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

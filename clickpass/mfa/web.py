"""
The second factors' pages: the second sign-in step (a correct password,
then a code before the session starts), setting up and removing an
authenticator app, recovery codes, trusted browsers, and step-up (a fresh
sign-in with the strongest factor before a sensitive action).

The kernel calls L{MfaWeb.after_password} through its
L{clickpass.web.pages.SecondStep} seam; other features call
L{MfaWeb.require_step_up} through a Protocol of their own. Codes are
judged by L{clickpass.mfa.service.SecondFactors}; nothing here touches
the tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from jinja2 import ChoiceLoader, FileSystemLoader

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts.service import Account, AccountError, HashingBusy, Throttled
from clickpass.i18n import N_
from clickpass.mfa import keys_web, store, totp
from clickpass.mfa.ceremony import RelyingParty
from clickpass.mfa.keys import SecurityKeys
from clickpass.mfa.service import (
    KEY_METHODS,
    METHOD_FEDERATED,
    METHOD_PASSWORD,
    METHOD_RECOVERY_CODE,
    METHOD_TOTP,
    METHOD_TRUSTED_BROWSER,
    Outcome,
    SecondFactors,
)
from clickpass.mfa.store import SessionAuth
from clickpass.web.app import WebApp, day, safe_next
from clickpass.web.pages import AccountSection
from clickpass.web.routing import HTTPError, Router

log = Logger()

TEMPLATES = Path(__file__).parent / "templates"
SECOND_STEP_COOKIE = b"cp_second_step"
TRUSTED_COOKIE = b"cp_trusted"
MANAGE = "/account/mfa"
# The step-up page's field asking for a key bound to one device.
DEVICE_FIELD = "device"
# The methods that are a second factor given in a session.
GIVEN_FACTORS = frozenset({METHOD_TOTP, METHOD_RECOVERY_CODE}) | KEY_METHODS
# What step-up takes of a person who has a security key or passkey.
KEY_OR_RECOVERY = frozenset({METHOD_RECOVERY_CODE}) | KEY_METHODS


# The security log's name for a password sign-in (a provider's sign-in is
# logged by the provider's name).
SIGNED_IN_WITH_PASSWORD = "password"  # noqa: S105 (a method's name, not a password)
NOT_WITH_A_PROVIDER = N_(
    "You have a second factor, so confirm it is you with it, not with a sign-in provider."
)


class ReauthProviders(Protocol):
    """
    The upstream providers (clickpass.upstream) through which a person may
    confirm it is them at step-up: (name, display name) of each linked to
    their account. Their button posts to /upstream/NAME/reauth.
    """

    async def providers_of(self, account_id: int) -> list[tuple[str, str]]: ...


class MfaWeb:
    """The handlers of the second factors' pages."""

    def __init__(
        self, app: WebApp, factors: SecondFactors, reauth: ReauthProviders | None = None
    ) -> None:
        self.app = app
        self.factors = factors
        self.settings = factors.settings
        self.reauth = reauth

    def cookie(self, request: Request, name: bytes) -> str:
        raw = request.getCookie(name)
        return raw.decode("ascii", "replace") if raw else ""

    # The second sign-in step.

    async def after_password(
        self, request: Request, account: Account, next_url: str
    ) -> bytes | None:
        """
        After a correct password: L{None} for a person with no second factor
        (the kernel signs them in); otherwise L{after_first_factor}.
        """
        if not await self.factors.has_factor(account.id):
            return None
        return await self.after_first_factor(
            request, account, next_url, METHOD_PASSWORD, SIGNED_IN_WITH_PASSWORD
        )

    async def after_federated(
        self, request: Request, account: Account, next_url: str, provider: str
    ) -> bytes:
        """
        After a sign-in through the upstream C{provider} (Google and
        others): the same second step as after a password, for a person who
        has a second factor; anyone else is signed in here, the session
        recorded as federated (never claimed to partners as a password) and
        the security log naming the provider.
        """
        if await self.factors.has_factor(account.id):
            return await self.after_first_factor(
                request, account, next_url, METHOD_FEDERATED, provider
            )
        methods = frozenset({METHOD_FEDERATED})
        await self.start_session(request, account, methods, self.factors.now(), 0, provider)
        return self.app.redirect(request, next_url)

    async def after_first_factor(
        self,
        request: Request,
        account: Account,
        next_url: str,
        first_method: str,
        signin_method: str,
    ) -> bytes:
        """
        A person with a second factor gave the first (C{first_method}, as
        partners are told; C{signin_method}, as the security log names it):
        a trusted browser is signed in here; anyone else is sent to give a
        code, with a second step that expires.
        """
        now = self.factors.now()
        if await self.factors.is_trusted(self.cookie(request, TRUSTED_COOKIE), account.id):
            methods = frozenset({first_method, METHOD_TRUSTED_BROWSER})
            await self.start_session(request, account, methods, now, 0, signin_method)
            return self.app.redirect(request, next_url)
        token = await self.factors.start_second_step(account.id, first_method, signin_method)
        self.app.set_cookie(request, SECOND_STEP_COOKIE, token, self.settings.second_step_lifetime)
        return self.app.redirect(request, "/signin/code?next=" + quote(next_url, safe=""))

    async def start_session(
        self,
        request: Request,
        account: Account,
        methods: frozenset[str],
        password_time: int,
        factor_time: int,
        method: str = SIGNED_IN_WITH_PASSWORD,
    ) -> None:
        """
        Sign the person in (the security log says how: C{method}) and record
        how this session was signed in.
        """
        token = await self.app.sign_in(request, account, method=method)
        lifetime = self.app.settings.accounts.session_lifetime
        await self.factors.record_session(
            token, account.id, methods, password_time, factor_time, self.factors.now() + lifetime
        )

    async def code_page(
        self,
        request: Request,
        account_id: int,
        next_url: str,
        error: str | None = None,
        status: int = 200,
    ) -> bytes:
        request.setResponseCode(status)
        return self.app.render(
            request,
            "mfa/second_step.html",
            next=next_url,
            error=error,
            with_key=await self.factors.has_keys(account_id),
            with_app=await self.factors.has_totp(account_id),
            device_bound=await self.device_bound_asked(request, account_id),
        )

    async def code_form(self, request: Request) -> bytes:
        next_url = safe_next(self.app.form(request, "next"))
        found = await self.factors.second_step(self.cookie(request, SECOND_STEP_COOKIE))
        if found is None:
            return self.app.redirect(request, self.app.signin_url(next_url))
        return await self.code_page(request, found.account_id, next_url)

    async def code(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        next_url = safe_next(self.app.form(request, "next"))
        token = self.cookie(request, SECOND_STEP_COOKIE)
        found = await self.factors.second_step(token)
        account = await self.app.accounts.get(found.account_id) if found is not None else None
        if found is None or account is None or account.disabled:
            raise HTTPError(
                400, N_("Your sign-in took too long and has expired. Sign in again from the start.")
            )
        try:
            outcome = await self.factors.check_code(
                account.id,
                account.email,
                self.app.form(request, "code"),
                client_address=self.app.client_address(request),
                browser=self.app.browser(request),
            )
        except Throttled as e:
            request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
            return await self.code_page(request, account.id, next_url, str(e), 429)
        except AccountError as e:
            return await self.code_page(request, account.id, next_url, str(e), 401)
        await self.factors.end_second_step(token)
        self.app.set_cookie(request, SECOND_STEP_COOKIE, "", 0)
        methods = frozenset({found.first_method, outcome.value})
        await self.start_session(
            request, account, methods, found.first_time, self.factors.now(), found.signin_method
        )
        if self.app.form(request, "trust") == "yes":
            await self.trust(request, account)
        if outcome is Outcome.RECOVERY_CODE:
            log.info("account {account_id} signed in with a recovery code", account_id=account.id)
        return self.app.redirect(request, next_url)

    async def trust(self, request: Request, account: Account) -> None:
        trusted = await self.factors.trust_browser(account.id, self.app.client_address(request))
        self.app.set_cookie(
            request, TRUSTED_COOKIE, trusted, self.settings.trusted_browser_lifetime
        )

    # Step-up.

    async def auth_of(self, request: Request) -> SessionAuth | None:
        """How this request's session was signed in, or L{None} when signed out."""
        return await self.factors.session_auth(self.app.session_token(request))

    async def is_fresh(self, request: Request, account: Account) -> bool:
        """
        Whether this session signed in with the person's strongest factor
        within the step-up window: their second factor if they have one
        (a trusted browser does not count), otherwise their password.
        """
        auth = await self.auth_of(request)
        if auth is None or auth.account_id != account.id:
            return False
        since = self.factors.now() - self.settings.step_up_window
        if await self.factors.has_keys(account.id):
            # The strongest factor is a key: an app code does not do, a
            # recovery code (the key lost) does.
            return auth.factor_time >= since and bool(auth.methods & KEY_OR_RECOVERY)
        if await self.factors.has_factor(account.id):
            return auth.factor_time >= since
        return auth.password_time >= since

    async def require_step_up(self, request: Request, account: Account, back: str) -> None:
        """
        Go on only after a fresh sign-in with the strongest factor (see
        L{is_fresh}); otherwise answer with a redirect to confirm it is
        them and come back to C{back}. Every sensitive action calls this.
        """
        if await self.is_fresh(request, account):
            return
        raise HTTPError(303, N_("Confirm it is you first."), {"location": self.step_up_url(back)})

    async def second_factor_needed(
        self, request: Request, account: Account, back: str
    ) -> str | None:
        """
        For a partner site that requires a second factor: L{None} when this
        session had one (a trusted browser is none); otherwise where the
        person gives theirs (step-up), or first sets one up, then comes
        back to C{back}.
        """
        auth = await self.auth_of(request)
        if (
            auth is not None
            and auth.account_id == account.id
            and auth.methods & GIVEN_FACTORS
            and auth.factor_time
        ):
            return None
        if await self.factors.has_factor(account.id):
            return self.step_up_url(back)
        return MANAGE + "?next=" + quote(safe_next(back), safe="")

    def way_back(self, request: Request) -> str:
        """
        Where the set-up pages go on to once a factor is set up: the
        request's C{next} when it is a path on this site (a partner site
        that requires a second factor sent the person here), else C{""}.
        Another host, or a protocol-relative C{//host}, is ignored: an open
        redirect would let anyone phish with our name.
        """
        return safe_next(self.app.form(request, "next"), "")

    def step_up_url(self, back: str, device_bound: bool = False) -> str:
        """
        The page that confirms it is the person, then goes back to C{back};
        with C{device_bound}, with a key bound to one device (see
        L{device_bound_asked}).
        """
        url = "/account/confirm?next=" + quote(safe_next(back), safe="")
        return url + ("&" + DEVICE_FIELD + "=1" if device_bound else "")

    async def device_bound_asked(self, request: Request, account_id: int) -> bool:
        """
        Whether this step asks for a key bound to one device (the step-up
        URL or the form says so, or the way back is an OpenID request whose
        site wants PAPE C{multi-factor-physical}, which a synced passkey
        never meets) and the person has one: then only such keys are
        offered and taken. A person with none goes on as before (the site
        is told what was met).
        """
        asked = self.app.form(request, DEVICE_FIELD) == "1" or keys_web.physical_asked(
            safe_next(self.app.form(request, "next"), "")
        )
        return asked and bool(await self.factors.has_device_keys(account_id))

    async def go_on(self, request: Request) -> bytes:
        """
        The recovery codes acknowledged: on to the way back the set-up
        carried (the request that was waiting), or back to the factors.
        """
        self.app.check_csrf(request)
        await self.app.require_account(request, back=MANAGE)
        return self.app.redirect(request, safe_next(self.app.form(request, "next"), MANAGE))

    async def confirm_page(
        self, request: Request, account: Account, error: str | None = None, status: int = 200
    ) -> bytes:
        """
        Confirm it is you: with the second factor for a person who has one;
        otherwise with the password, or through a provider linked to the
        account (an account that signs in only through providers has no
        password to give).
        """
        with_code = await self.factors.has_factor(account.id)
        providers: list[tuple[str, str]] = []
        if not with_code and self.reauth is not None:
            providers = await self.reauth.providers_of(account.id)
        with_password = not with_code and (
            not providers or await self.factors.storage.run(store.has_password, account.id)
        )
        request.setResponseCode(status)
        return self.app.render(
            request,
            "mfa/confirm.html",
            next=safe_next(self.app.form(request, "next"), MANAGE),
            with_code=with_code,
            with_key=await self.factors.has_keys(account.id),
            device_bound=await self.device_bound_asked(request, account.id),
            with_app=await self.factors.has_totp(account.id),
            with_password=with_password,
            reauth_providers=[{"name": n, "display_name": d} for n, d in providers],
            error=error,
        )

    async def confirm_form(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        return await self.confirm_page(request, account)

    async def confirm(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back="/account/confirm")
        auth = await self.auth_of(request)
        now = self.factors.now()
        try:
            if await self.factors.has_factor(account.id):
                outcome = await self.factors.check_code(
                    account.id, account.email, self.app.form(request, "code")
                )
                if outcome is Outcome.TOTP and await self.factors.has_keys(account.id):
                    raise AccountError(
                        N_(
                            "This needs your security key or passkey (or, if you lost it, one of "
                            "your recovery codes), not an app code."
                        )
                    )
                methods = (auth.methods if auth else frozenset()) | {outcome.value}
                password_time, factor_time = (auth.password_time if auth else now), now
            else:
                await self.app.accounts.authenticate(
                    account.email,
                    self.app.form(request, "password"),
                    self.app.client_address(request),
                )
                methods, password_time, factor_time = frozenset({METHOD_PASSWORD}), now, 0
        except (Throttled, HashingBusy) as e:
            # Too many tries (429), or too many passwords to check at once here (503).
            request.setHeader(b"retry-after", str(e.retry_after).encode("ascii"))
            status = 429 if isinstance(e, Throttled) else 503
            return await self.confirm_page(request, account, str(e), status)
        except AccountError as e:
            return await self.confirm_page(request, account, str(e), 401)
        lifetime = self.app.settings.accounts.session_lifetime
        await self.factors.record_session(
            self.app.session_token(request),
            account.id,
            methods,
            password_time,
            factor_time,
            now + lifetime,
        )
        return self.app.redirect(request, safe_next(self.app.form(request, "next"), MANAGE))

    async def reauth_refusal(self, account: Account) -> str | None:
        """
        Why this person may not confirm it is them through an upstream
        provider (they have a second factor: step-up takes the strongest),
        or L{None}.
        """
        if await self.factors.has_factor(account.id):
            return NOT_WITH_A_PROVIDER
        return None

    async def after_reauth(
        self, request: Request, account: Account, next_url: str, provider: str
    ) -> bytes:
        """
        The person confirmed it is them through C{provider} (a linked
        identity, freshly signed in there): this session is fresh, as after
        a password at the confirm page, and on to C{next_url}. A second
        factor set up meanwhile is still asked for; nothing is marked then.
        """
        if await self.factors.has_factor(account.id):
            raise HTTPError(403, NOT_WITH_A_PROVIDER)
        now = self.factors.now()
        await self.factors.record_session(
            self.app.session_token(request),
            account.id,
            frozenset({METHOD_FEDERATED}),
            now,
            0,
            now + self.app.settings.accounts.session_lifetime,
        )
        log.info(
            "account {account_id} confirmed it was them through {provider}",
            account_id=account.id,
            provider=provider,
        )
        return self.app.redirect(request, safe_next(next_url, MANAGE))

    # Managing the factors.

    async def manage(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        status = await self.factors.status(account.id)
        return self.app.render(
            request,
            "mfa/manage.html",
            status=status,
            keys=[
                {
                    "ref": k.ref,
                    "name": k.name,
                    "passkey": k.passkey,
                    "backed_up": k.backed_up,
                    "created": day(k.created),
                    "last_used": day(k.last_used) if k.last_used else "",
                }
                for k in status.keys
            ],
            browsers=[
                {
                    "ref": b.ref,
                    "created": day(b.created),
                    "expires": day(b.expires),
                    "address": b.client_address,
                }
                for b in status.trusted_browsers
            ],
            done=self.app.form(request, "done"),
            # A partner site that requires a second factor sent the person here.
            back=self.way_back(request),
        )

    async def begin_totp(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        back = self.way_back(request)
        account = await self.app.require_account(request, back=keys_web.with_next(MANAGE, back))
        await self.require_step_up(request, account, keys_web.with_next(MANAGE, back))
        await self.refusing(self.factors.begin_totp(account.id))
        return self.app.redirect(request, keys_web.with_next(MANAGE + "/totp", back))

    async def totp_page(
        self, request: Request, account: Account, error: str | None = None, status: int = 200
    ) -> bytes:
        secret = await self.factors.pending_totp(account.id)
        if secret is None:
            return self.app.redirect(request, MANAGE)
        uri = totp.provisioning_uri(secret, account.email, self.settings.issuer)
        request.setResponseCode(status)
        return self.app.render(
            request,
            "mfa/totp_setup.html",
            qr_svg=totp.qr_svg(uri),
            secret=totp.grouped(secret),
            uri=uri,
            error=error,
            next=self.way_back(request),
        )

    async def totp_form(self, request: Request) -> bytes:
        back = self.way_back(request)
        account = await self.app.require_account(request)
        await self.require_step_up(request, account, keys_web.with_next(MANAGE, back))
        return await self.totp_page(request, account)

    async def confirm_totp(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        back = self.way_back(request)
        account = await self.app.require_account(request, back=keys_web.with_next(MANAGE, back))
        await self.require_step_up(request, account, keys_web.with_next(MANAGE, back))
        try:
            codes = await self.factors.confirm_totp(account.id, self.app.form(request, "code"))
        except AccountError as e:
            return await self.totp_page(request, account, str(e), 400)
        # The code just given proves the factor: this session has it now.
        await self.note_factor(request, account, "otp")
        return self.app.render(
            request, "mfa/recovery_codes.html", codes=codes, first=True, next=back
        )

    async def note_factor(self, request: Request, account: Account, method: str) -> None:
        auth = await self.auth_of(request)
        now = self.factors.now()
        await self.factors.record_session(
            self.app.session_token(request),
            account.id,
            (auth.methods if auth else frozenset({METHOD_PASSWORD})) | {method},
            auth.password_time if auth else now,
            now,
            now + self.app.settings.accounts.session_lifetime,
        )

    async def remove(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back=MANAGE)
        await self.require_step_up(request, account, MANAGE)
        if not await self.factors.remove(account.id):
            raise HTTPError(404, N_("You have no authenticator app to remove."))
        return self.app.redirect(request, MANAGE + "?done=removed")

    async def recovery_codes(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back=MANAGE)
        await self.require_step_up(request, account, MANAGE)
        codes = await self.refusing(self.factors.new_recovery_codes(account.id))
        return self.app.render(request, "mfa/recovery_codes.html", codes=codes, first=False)

    async def revoke_browser(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back=MANAGE)
        if not await self.factors.revoke_browser(account.id, self.app.form(request, "browser")):
            raise HTTPError(404, N_("That browser is not one you trust."))
        return self.app.redirect(request, MANAGE + "?done=revoked")

    async def refusing(self, work: Awaitable[Any]) -> Any:
        # A request that cannot be met: one line, as a 400 page.
        try:
            return await work
        except AccountError as e:
            raise HTTPError(400, str(e)) from None

    def account_section(self) -> AccountSection:
        async def context(account: Account) -> dict[str, Any]:
            status = await self.factors.status(account.id)
            # Listed here too, with the sessions, each one revocable.
            browsers = [
                {
                    "ref": b.ref,
                    "created": day(b.created),
                    "expires": day(b.expires),
                    "address": b.client_address,
                }
                for b in status.trusted_browsers
            ]
            return {"mfa": status, "mfa_browsers": browsers}

        return AccountSection("mfa/account_mfa.html", context)


def install(
    app: WebApp, router: Router, factors: SecondFactors, reauth: ReauthProviders | None = None
) -> MfaWeb:
    """
    Register the second factors' pages; the result is the kernel's second
    step. C{reauth}: the upstream providers the step-up page offers to a
    person with no second factor.
    """
    loader = app.templates.loader
    assert loader is not None
    app.templates.loader = ChoiceLoader([loader, FileSystemLoader(str(TEMPLATES))])
    web = MfaWeb(app, factors, reauth)
    # Passkeys and security keys: the relying party is this node's public URL.
    keys = SecurityKeys(
        factors.storage,
        factors.settings,
        RelyingParty.from_base_url(app.settings.base_url, factors.settings.issuer),
        app.secret,
        clock=factors.clock,
    )
    keys_web.install(web, keys, router)
    routes: list[tuple[str, str, Callable[..., Awaitable[bytes]]]] = [
        ("GET", "/signin/code", web.code_form),
        ("POST", "/signin/code", web.code),
        ("GET", "/account/confirm", web.confirm_form),
        ("POST", "/account/confirm", web.confirm),
        ("GET", MANAGE, web.manage),
        ("POST", MANAGE + "/totp/begin", web.begin_totp),
        ("GET", MANAGE + "/totp", web.totp_form),
        ("POST", MANAGE + "/totp/confirm", web.confirm_totp),
        ("POST", MANAGE + "/remove", web.remove),
        ("POST", MANAGE + "/recovery-codes", web.recovery_codes),
        ("POST", MANAGE + "/browsers/revoke", web.revoke_browser),
        ("POST", MANAGE + "/continue", web.go_on),
    ]
    for method, path, handler in routes:
        router.add(method, path, handler)
    return web

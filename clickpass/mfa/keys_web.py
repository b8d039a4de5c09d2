"""
The pages of passkeys and security keys: adding and removing them, using
one as the second step after a password or to confirm it is the person
(step-up), and signing in with a passkey and no password.

Each ceremony is two requests: a POST for its options (JSON, with a
challenge given to this browser session), then the form carrying the
browser's answer. The browser's side is C{/static/webauthn.js}
(clickpass/web/static, served by the front like every static file), run
under the pages' Content-Security-Policy (no inline script). The
checks are L{clickpass.mfa.keys.SecurityKeys}'; nothing here touches the
tables.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlsplit

from openid.extensions.draft import pape5 as pape
from openid.message import Message

from twisted.web.server import Request

from clickpass.accounts.service import Account
from clickpass.i18n import N_, gettext, translate
from clickpass.mfa.ceremony import MAX_ANSWER, CeremonyRefused
from clickpass.mfa.keys import (
    CONFIRM,
    PASSKEY,
    SECOND_STEP,
    ChallengesThrottled,
    SecurityKeys,
    Where,
    synced,
)
from clickpass.mfa.service import (
    METHOD_USER_VERIFIED,
    SecondFactors,
    key_method,
)
from clickpass.web.app import SECURITY_HEADERS, WebApp, safe_next
from clickpass.web.routing import HTTPError, Router

# The browser session a passkey sign-in's challenge is given to (nobody is
# signed in yet, so no session cookie can bind it).
PASSKEY_COOKIE = b"cp_passkey"
MANAGE = "/account/mfa"


def with_next(path: str, back: str) -> str:
    """C{path} carrying the way back C{back} (a local path) as C{next}, if any."""
    if not back:
        return path
    return path + ("&" if "?" in path else "?") + "next=" + quote(back, safe="")


def physical_asked(back: str) -> bool:
    """
    Whether the way back C{back} (a local path) is an OpenID request whose
    site asks PAPE C{multi-factor-physical}: a sign-in on the way there
    needs a key bound to one device, since a synced passkey never meets it
    and would only send the person to confirm it is them again.
    Anything unreadable asks nothing.
    """
    parts = urlsplit(back)
    if parts.path != "/openid" or "pape" not in parts.query:
        return False
    try:
        message = Message.fromPostArgs(dict(parse_qsl(parts.query)))
        asked = pape.Request.fromOpenIDRequest(_Carrying(message))
    except Exception:  # python3-openid's parsers raise many kinds on bad input
        return False
    return asked is not None and pape.AUTH_MULTI_FACTOR_PHYSICAL in asked.preferred_auth_policies


class _Carrying:
    """What python3-openid's extension parsers read of a request: its message."""

    def __init__(self, message: Message) -> None:
        self.message = message


class FactorPages(Protocol):
    """The second factors' pages (L{clickpass.mfa.web.MfaWeb}) these pages finish on."""

    app: WebApp
    factors: SecondFactors

    def cookie(self, request: Request, name: bytes) -> str: ...

    async def is_fresh(self, request: Request, account: Account) -> bool: ...

    async def require_step_up(self, request: Request, account: Account, back: str) -> None: ...

    async def device_bound_asked(self, request: Request, account_id: int) -> bool: ...

    async def code_page(
        self,
        request: Request,
        account_id: int,
        next_url: str,
        error: str | None = None,
        status: int = 200,
    ) -> bytes: ...

    async def confirm_page(
        self, request: Request, account: Account, error: str | None = None, status: int = 200
    ) -> bytes: ...

    async def start_session(
        self,
        request: Request,
        account: Account,
        methods: frozenset[str],
        password_time: int,
        factor_time: int,
        method: str = "password",
    ) -> None: ...

    async def note_factor(self, request: Request, account: Account, method: str) -> None: ...

    def way_back(self, request: Request) -> str: ...


class KeyPages:
    """The handlers of the passkey and security key pages."""

    def __init__(self, web: FactorPages, keys: SecurityKeys) -> None:
        self.web = web
        self.app = web.app
        self.keys = keys

    def where(self, request: Request) -> Where:
        return Where(self.app.client_address(request), self.app.browser(request))

    def answer(self, request: Request) -> str:
        """The browser's answer (JSON text), allowed longer than other fields."""
        values = (request.args or {}).get(b"credential")
        raw: bytes = values[0] if values else b""
        if len(raw) > MAX_ANSWER:
            raise HTTPError(400, N_("The answer of your key is too long."))
        return raw.decode("utf-8", "replace")

    def json(self, request: Request, value: dict[str, Any], status: int = 200) -> bytes:
        request.setResponseCode(status)
        for name, header in SECURITY_HEADERS.items():
            request.setHeader(name, header)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(value).encode("utf-8")

    def refused(self, request: Request, refused: CeremonyRefused) -> bytes:
        """A ceremony's options refused, as JSON: 429 with Retry-After when throttled."""
        if isinstance(refused, ChallengesThrottled):
            request.setHeader(b"retry-after", str(refused.retry_after).encode("ascii"))
            return self.json(request, {"error": translate(refused.message)}, 429)
        return self.json(request, {"error": translate(refused.message)}, 400)

    # Adding and removing keys.

    def kind(self, request: Request) -> bool:
        """Whether a passkey (rather than a security key) is being added."""
        return self.app.form(request, "kind") != "key"

    async def new_form(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        back = with_next(
            MANAGE + "/keys/new?kind=" + ("passkey" if self.kind(request) else "key"),
            self.web.way_back(request),
        )
        await self.web.require_step_up(request, account, back)
        return self.new_page(request, self.kind(request))

    def new_page(
        self, request: Request, passkey: bool, error: str | None = None, name: str = ""
    ) -> bytes:
        request.setResponseCode(400 if error else 200)
        return self.app.render(
            request,
            "mfa/key_new.html",
            passkey=passkey,
            error=error,
            name=name,
            next=self.web.way_back(request),
        )

    async def options_for_new(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.current_account(request)
        if account is None or not await self.web.is_fresh(request, account):
            return self.json(
                request, {"error": gettext("Confirm it is you first: reload the page.")}, 403
            )
        try:
            options = await self.keys.registration_options(
                account.id,
                account.email,
                self.app.session_token(request),
                self.kind(request),
                self.app.client_address(request),
            )
        except CeremonyRefused as e:
            return self.refused(request, e)
        return self.json(request, options)

    async def add(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        back = self.web.way_back(request)
        account = await self.app.require_account(request, back=with_next(MANAGE, back))
        passkey = self.kind(request)
        await self.web.require_step_up(request, account, with_next(MANAGE, back))
        name = self.app.form(request, "name")
        had_codes = (await self.web.factors.status(account.id)).recovery_codes_left > 0
        try:
            added = await self.keys.register(
                account.id,
                self.app.session_token(request),
                self.answer(request),
                name,
                passkey,
                self.where(request),
            )
        except CeremonyRefused as e:
            return self.new_page(request, passkey, e.message, name)
        # The ceremony just made counts as this session's use of the key, as
        # a first app code does for the app: its challenge was fresh, given
        # to this session alone and spent; the browser bound its answer to
        # this origin and RP ID; the authenticator showed the person present
        # (and, for a passkey, verified them). A "none" attestation is signed
        # by nobody, but an assertion asked for now would prove no more: who
        # can forge this answer holds the key they forged it with. What is
        # claimed follows the key's own flags, as for any use (synced or not).
        kind = key_method(synced(added.backup_eligible, added.backed_up))
        await self.web.note_factor(request, account, kind)
        if not had_codes:
            # The first factor of the account: recovery codes for when it is lost.
            codes = await self.web.factors.new_recovery_codes(account.id)
            return self.app.render(
                request, "mfa/recovery_codes.html", codes=codes, first=True, key=True, next=back
            )
        # A way back carried through the set-up: on to the request waiting.
        return self.app.redirect(request, back or MANAGE + "?done=key-added")

    async def remove(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request, back=MANAGE)
        await self.web.require_step_up(request, account, MANAGE)
        removed = await self.keys.remove(
            account.id, self.app.form(request, "key"), self.where(request)
        )
        if removed is None:
            raise HTTPError(404, N_("That key is not one of yours."))
        return self.app.redirect(request, MANAGE + "?done=key-removed")

    # The second step after a password.

    async def second_step_options(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        token = self.web.cookie(request, b"cp_second_step")
        found = await self.web.factors.second_step(token)
        if found is None:
            return self.json(
                request,
                {"error": gettext("Your sign-in has expired. Sign in again from the start.")},
                400,
            )
        try:
            options = await self.keys.assertion_options(
                SECOND_STEP,
                token,
                found.account_id,
                self.app.client_address(request),
                device_bound=await self.web.device_bound_asked(request, found.account_id),
            )
        except CeremonyRefused as e:
            return self.refused(request, e)
        return self.json(request, options)

    async def second_step(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        next_url = safe_next(self.app.form(request, "next"))
        token = self.web.cookie(request, b"cp_second_step")
        found = await self.web.factors.second_step(token)
        account = await self.app.accounts.get(found.account_id) if found is not None else None
        if found is None or account is None or account.disabled:
            raise HTTPError(
                400, N_("Your sign-in took too long and has expired. Sign in again from the start.")
            )
        try:
            used = await self.keys.check(
                SECOND_STEP,
                token,
                self.answer(request),
                account.id,
                self.where(request),
                device_bound=await self.web.device_bound_asked(request, account.id),
            )
        except CeremonyRefused as e:
            return await self.web.code_page(request, account.id, next_url, e.message, 401)
        await self.web.factors.end_second_step(token)
        self.app.set_cookie(request, b"cp_second_step", "", 0)
        methods = frozenset({found.first_method, key_method(used.synced)})
        await self.web.start_session(
            request,
            account,
            methods,
            found.first_time,
            self.web.factors.now(),
            found.signin_method,
        )
        return self.app.redirect(request, next_url)

    # Signing in with a passkey and no password.

    def passkey_binding(self, request: Request, make: bool) -> str:
        token = self.web.cookie(request, PASSKEY_COOKIE)
        if 32 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum():
            return token
        if not make:
            return ""
        token = secrets.token_urlsafe(32)
        self.app.set_cookie(request, PASSKEY_COOKIE, token, self.keys.settings.webauthn_timeout)
        return token

    async def passkey_options(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        try:
            options = await self.keys.assertion_options(
                PASSKEY,
                self.passkey_binding(request, make=True),
                None,
                self.app.client_address(request),
            )
        except CeremonyRefused as e:
            return self.refused(request, e)
        return self.json(request, options)

    async def passkey_signin(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        next_url = safe_next(self.app.form(request, "next"))
        binding = self.passkey_binding(request, make=False)
        if not binding:
            raise HTTPError(400, N_("Your passkey sign-in has expired. Try again."))
        try:
            used = await self.keys.check(
                PASSKEY,
                binding,
                self.answer(request),
                None,
                self.where(request),
                # Whose key it is is known only from the answer: the check
                # refuses a synced passkey of a person who has a device-bound one.
                device_bound=physical_asked(next_url),
            )
        except CeremonyRefused as e:
            raise HTTPError(401, e.message) from None
        account = await self.app.accounts.get(used.account_id)
        if account is None or account.disabled:
            raise HTTPError(403, N_("This account is disabled. Ask the people who run Clickpass."))
        now = self.web.factors.now()
        await self.web.start_session(
            request,
            account,
            frozenset({key_method(used.synced), METHOD_USER_VERIFIED}),
            0,
            now,
            method="passkey",
        )
        self.app.set_cookie(request, PASSKEY_COOKIE, "", 0)
        return self.app.redirect(request, next_url)

    # Step-up with a key.

    async def confirm_options(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.current_account(request)
        if account is None:
            return self.json(request, {"error": gettext("Sign in first.")}, 403)
        try:
            options = await self.keys.assertion_options(
                CONFIRM,
                self.app.session_token(request),
                account.id,
                self.app.client_address(request),
                device_bound=await self.web.device_bound_asked(request, account.id),
            )
        except CeremonyRefused as e:
            return self.refused(request, e)
        return self.json(request, options)

    async def confirm(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account: Account = await self.app.require_account(request, back="/account/confirm")
        try:
            used = await self.keys.check(
                CONFIRM,
                self.app.session_token(request),
                self.answer(request),
                account.id,
                self.where(request),
                device_bound=await self.web.device_bound_asked(request, account.id),
            )
        except CeremonyRefused as e:
            return await self.web.confirm_page(request, account, e.message, 401)
        await self.web.note_factor(request, account, key_method(used.synced))
        return self.app.redirect(request, safe_next(self.app.form(request, "next"), MANAGE))


def install(web: FactorPages, keys: SecurityKeys, router: Router) -> KeyPages:
    """Register the passkey and security key pages."""
    pages = KeyPages(web, keys)
    router.add("GET", MANAGE + "/keys/new", pages.new_form)
    router.add("POST", MANAGE + "/keys/options", pages.options_for_new)
    router.add("POST", MANAGE + "/keys/add", pages.add)
    router.add("POST", MANAGE + "/keys/remove", pages.remove)
    router.add("POST", "/signin/key/options", pages.second_step_options)
    router.add("POST", "/signin/key", pages.second_step)
    router.add("POST", "/signin/passkey/options", pages.passkey_options)
    router.add("POST", "/signin/passkey", pages.passkey_signin)
    router.add("POST", "/account/confirm/key/options", pages.confirm_options)
    router.add("POST", "/account/confirm/key", pages.confirm)
    return pages

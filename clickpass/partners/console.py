"""
The partner console: signed-in people register partner sites, and the
admins of a site change its settings, create and revoke API keys (shown
once, stored hashed), see the webhook secret and recent deliveries,
invite other admins and remove admins (never the last one). An invited
person becomes an admin only by accepting the invitation, signed in with
the account that has the invited email. Until a site's admins prove they control its realm's host
(L{clickpass.partners.verification}), the site page asks for that first
and no API key can be created.

Every page checks that the signed-in person administers the site; a site
they do not administer is answered exactly like one that does not exist.
Every form that changes something answers with a redirect (POST, redirect,
GET), so reloading a page never repeats an action; what the action has to
say (a new API key, an invitation link, a notice or an error) travels to
that one next page in a short-lived cookie sealed with a key derived from
the node's secret and bound to the person's session, and is gone after it
(L{Flash}). Never show an API key or an invitation link after the page
that follows its creation, never keep one on the server, and never tell an
admin whether an email has an account.

The console speaks the person's language like every page: what an action
has to say is translated when it is said (the flash carries the sentence
in the language of the request that acted, the next page's too).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts.service import AccountError, check_email
from clickpass.i18n import N_, Text, gettext, translate
from clickpass.partners import fields, sites, verification
from clickpass.web.app import WebApp
from clickpass.web.routing import HTTPError, Router

SETTING_NAMES = (
    "name",
    "logo_url",
    "realm",
    "return_to_urls",
    "registration_url",
    "connect_url",
    "webhook_url",
)
log = Logger()
STATE_NAMES = {
    sites.PENDING: N_("pending"),
    sites.DELIVERED: N_("delivered"),
    sites.GIVEN_UP: N_("given up"),
}


FLASH_COOKIE = b"cp_console_flash"
FLASH_PATH = b"/partners"
# Long enough for a slow redirect, short enough that a key sealed in a
# cookie nobody followed does not linger in the browser.
FLASH_LIFETIME = 120
# What a flash may carry, and each value's type: anything else is dropped.
FLASH_FIELDS: dict[str, type] = {
    "site": str,
    "notice": str,
    "error": str,
    "new_key": str,
    "verify_failed": bool,
    "invitation": dict,
}


class FlashHost(Protocol):
    """What L{Flash} needs of the web application."""

    reactor: Any

    def derive_key(self, purpose: bytes) -> bytes: ...

    def session_token(self, request: Request) -> str: ...

    def is_secure(self, request: Request) -> bool: ...


class Flash:
    """
    What one console action says to the page shown after its redirect:
    sealed (AES-GCM) into a cookie for the console's paths, bound to the
    session token, read once and cleared by that page. The browser holds
    only ciphertext; a cookie from another session, a forged or a stale
    one reads as nothing.
    """

    def __init__(self, app: FlashHost) -> None:
        self.app = app
        self._aead = AESGCM(app.derive_key(b"partner console flash"))

    def _bound_to(self, request: Request) -> bytes:
        return b"console flash: " + self.app.session_token(request).encode("utf-8")

    def put(self, request: Request, **values: Any) -> None:
        body = json.dumps(
            {"at": int(self.app.reactor.seconds()), **values}, separators=(",", ":")
        ).encode("utf-8")
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, body, self._bound_to(request))
        self._cookie(request, base64.urlsafe_b64encode(sealed).rstrip(b"="), FLASH_LIFETIME)

    def take(self, request: Request) -> dict[str, Any]:
        raw = request.getCookie(FLASH_COOKIE)
        if not raw:
            return {}
        self._cookie(request, b"", 0)
        try:
            sealed = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
            body = self._aead.decrypt(sealed[:12], sealed[12:], self._bound_to(request))
            found = json.loads(body)
        except (binascii.Error, ValueError, InvalidTag):
            return {}
        if not isinstance(found, dict):
            return {}
        at = found.get("at")
        if not isinstance(at, int) or not 0 <= self.app.reactor.seconds() - at <= FLASH_LIFETIME:
            return {}
        return {
            name: value
            for name, value in found.items()
            if name in FLASH_FIELDS and isinstance(value, FLASH_FIELDS[name])
        }

    def _cookie(self, request: Request, value: bytes, max_age: int) -> None:
        request.addCookie(
            FLASH_COOKIE,
            value,
            path=FLASH_PATH,
            max_age=str(max_age).encode("ascii"),
            httpOnly=True,
            secure=self.app.is_secure(request),
            sameSite="lax",
        )


def _when(ts: int) -> str:
    if not ts:
        return gettext("never")
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


class SiteClients(Protocol):
    """
    A site's OpenID Connect clients as the console lists them (read-only):
    dicts of C{client_id}, C{client_name}, C{backchannel} (whether it takes
    logout tokens), and its back-channel logouts C{delivered}, C{pending},
    C{given_up}, C{last_error}. The OpenID Connect provider supplies it.
    """

    async def for_site(self, site_id: int) -> list[dict[str, Any]]: ...


class Console:
    def __init__(
        self,
        app: WebApp,
        verifier: verification.RealmVerifier | None = None,
        site_clients: SiteClients | None = None,
    ) -> None:
        self.app = app
        self.site_clients = site_clients
        self.verifier = verifier or verification.RealmVerifier(app.reactor, app.settings.openid)
        self.flash = Flash(app)

    def _now(self) -> int:
        return int(self.app.reactor.seconds())

    def _form_settings(self, request: Request) -> dict[str, Any]:
        form: dict[str, Any] = {name: self.app.form(request, name) for name in SETTING_NAMES}
        for name in ("requested_fields", "required_fields"):
            values = (request.args or {}).get(name.encode("ascii"), [])
            form[name] = [v.decode("utf-8", "replace")[:32] for v in values[:20]]
        return form

    def _render_form(
        self, request: Request, template: str, form: dict[str, Any], **context: Any
    ) -> bytes:
        return self.app.render(
            request,
            template,
            form=form,
            profile_fields=[(f.name, f.label) for f in fields.FIELDS.values()],
            **context,
        )

    @staticmethod
    def _site_form(site: sites.Site) -> dict[str, Any]:
        return {
            "name": site.name,
            "logo_url": site.logo_url,
            "realm": site.realm,
            "return_to_urls": "\n".join(site.return_to_urls),
            "registration_url": site.registration_url,
            "connect_url": site.connect_url,
            "webhook_url": site.webhook_url,
            "requested_fields": list(site.requested_fields),
            "required_fields": list(site.required_fields),
        }

    async def _site(self, request: Request, public_id: str) -> tuple[Any, sites.Site]:
        account = await self.app.require_account(request)
        site = await self.app.storage.run(sites.admin_site, public_id, account.id)
        if site is None:
            raise HTTPError(404, N_("There is no such site among the ones you administer."))
        return account, site

    def _done(self, request: Request, site: str, anchor: str = "", **said: Any) -> bytes:
        """Answer a console form: what it has to say goes to the next page only."""
        if said:
            self.flash.put(request, site=site, **said)
        return self.app.redirect(request, f"/partners/{site}" + (f"#{anchor}" if anchor else ""))

    async def index(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        said = self.flash.take(request)
        mine = await self.app.storage.run(sites.sites_for_admin, account.id)
        return self.app.render(
            request,
            "partner_console.html",
            account=account,
            sites=mine,
            notice=said.get("notice") if said.get("site") == "" else None,
        )

    async def new_form(self, request: Request) -> bytes:
        await self.app.require_account(request)
        empty = {"requested_fields": ["email", "nickname"], "required_fields": ["email"]}
        return self._render_form(request, "partner_site_new.html", empty, error=None)

    async def create(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.require_account(request)
        form = self._form_settings(request)
        try:
            settings = sites.check_settings(form)
            site = await self.app.storage.run(sites.create_site, settings, account.id, self._now())
        except sites.SiteError as e:
            request.setResponseCode(400)
            return self._render_form(request, "partner_site_new.html", form, error=e.message)
        return self.app.redirect(request, f"/partners/{site.public_id}")

    async def show(self, request: Request, site: str) -> bytes:
        said = self.flash.take(request)
        if said.get("site") != site:
            said = {}
        invitation = said.get("invitation")
        if invitation is not None and not all(
            isinstance(invitation.get(k), str) for k in ("email", "url", "expires")
        ):
            invitation = None
        return await self._page(
            request,
            site,
            error=said.get("error"),
            notice=said.get("notice"),
            new_key=said.get("new_key"),
            invitation=invitation,
            verify_failed=said.get("verify_failed", False),
        )

    async def _page(
        self,
        request: Request,
        site: str,
        error: str | None = None,
        form: dict[str, Any] | None = None,
        new_key: str | None = None,
        notice: str | None = None,
        invitation: dict[str, str] | None = None,
        verify_failed: bool = False,
    ) -> bytes:
        account, found = await self._site(request, site)

        def gather(tx: Any) -> tuple[Any, ...]:
            return (
                sites.keys_for_site(tx, found.id),
                sites.admins(tx, found.id),
                sites.recent_events(tx, found.id),
                sites.deletion_requests(tx, found.id, False),
                sites.verification_token(tx, found.id),
                sites.verification_problem(tx, found.id),
                sites.pending_invitations(tx, found.id, self._now()),
            )

        keys, admins, events, deletions, token, problem, invitations = await self.app.storage.run(
            gather
        )
        oidc_clients = (
            await self.site_clients.for_site(found.id) if self.site_clients is not None else []
        )
        return self._render_form(
            request,
            "partner_site.html",
            form or self._site_form(found),
            account=account,
            site=found,
            error=error,
            notice=notice,
            new_key=new_key,
            keys=[
                {
                    "id": k.id,
                    "prefix": k.prefix,
                    "label": k.label,
                    "created": _when(k.created),
                    "last_used": _when(k.last_used),
                    "revoked": _when(k.revoked) if k.revoked else "",
                }
                for k in keys
            ],
            admins=admins,
            invitations=[
                {"id": i.id, "email": i.email, "expires": _when(i.expires)} for i in invitations
            ],
            invitation=invitation,
            events=[
                {
                    "id": e.event_id,
                    "type": e.event_type,
                    "created": _when(e.created),
                    "state": STATE_NAMES.get(e.state, str(e.state)),
                    "attempts": e.attempts,
                    "last_error": e.last_error,
                }
                for e in events
            ],
            deletions=deletions,
            oidc_clients=oidc_clients,
            webhook_secret=sites.webhook_secret(
                self.app.secret, found.public_id, found.webhook_secret_version
            ),
            api_url=self.app.settings.base_url + "api/v1/",
            verification_token=token,
            verification_url=verification.verification_url(found.realm),
            verification_problem=verification.reread(problem),
            verify_failed=verify_failed and not found.verified,
        )

    async def update(self, request: Request, site: str) -> bytes:
        self.app.check_csrf(request)
        _account, found = await self._site(request, site)
        form = self._form_settings(request)
        try:
            settings = sites.check_settings(form)
            await self.app.storage.run(sites.update_site, found, settings, self._now())
        except sites.SiteError as e:
            request.setResponseCode(400)
            # The form comes back with what was typed: nothing was changed,
            # so submitting it again on reload repeats nothing.
            return await self._page(request, site, error=e.message, form=form)
        return self._done(request, site, notice=gettext("Settings saved."))

    async def verify(self, request: Request, site: str) -> bytes:
        """Fetch the realm's verification file now and record what was found."""
        self.app.check_csrf(request)
        _account, found = await self._site(request, site)
        token = await self.app.storage.run(sites.verification_token, found.id)
        problem = await self.verifier.check(found.realm, token)
        verified = await self.app.storage.run(
            sites.record_verification, found.id, token, problem, self._now()
        )
        if not verified:
            # The page says why in its verification section, once.
            return self._done(request, site, "verification", verify_failed=True)
        log.info("partner site {site} verified for {sector}", site=site, sector=found.sector)
        return self._done(
            request,
            site,
            notice=translate(
                N_(
                    "Verified: you control %(host)s. API keys, webhooks and sign-ins "
                    "with your site's registration and connect pages are now on."
                ),
                host=found.sector,
            ),
        )

    async def create_key(self, request: Request, site: str) -> bytes:
        self.app.check_csrf(request)
        account, found = await self._site(request, site)
        if not found.verified:
            return self._done(
                request,
                site,
                error=translate(
                    N_(
                        "Verify that you control %(host)s first: a site gets API keys "
                        "only once its realm is verified."
                    ),
                    host=found.sector,
                ),
            )
        label = self.app.form(request, "label")
        key = await self.app.storage.run(sites.create_key, found.id, account.id, label, self._now())
        # Shown on the next page only: the database keeps its hash, the
        # browser the sealed flash until that page clears it.
        return self._done(request, site, "new-key-heading", new_key=key)

    async def revoke_key(self, request: Request, site: str, key: str) -> bytes:
        self.app.check_csrf(request)
        _account, found = await self._site(request, site)
        if not key.isdigit():
            raise HTTPError(404, N_("There is no such key."))
        await self.app.storage.run(sites.revoke_key, found.id, int(key), self._now())
        return self._done(request, site, "keys")

    async def invite_admin(self, request: Request, site: str) -> bytes:
        """
        Invite an email to administer the site. The answer is the same
        whether or not a Clickpass account has that email: the invitation
        link, shown once, for the admin to pass on (Clickpass sends no mail).
        """
        self.app.check_csrf(request)
        account, found = await self._site(request, site)
        try:
            email = check_email(self.app.form(request, "email"))
        except AccountError as e:
            return self._done(
                request,
                site,
                error=translate(N_("Invitation not created: %(reason)s"), reason=translate(str(e))),
            )
        now = self._now()

        def invite(tx: Any) -> str | None:
            # The admins' emails are on this page already: saying that one
            # is an admin tells nothing new.
            if any(a.email == email for a in sites.admins(tx, found.id)):
                return None
            return sites.invite_admin(tx, found.id, email, account.id, now)

        token = await self.app.storage.run(invite)
        if token is None:
            return self._done(
                request, site, error=translate(N_("%(email)s is already an admin."), email=email)
            )
        log.info("partner site {site}: admin invitation created", site=site)
        # Shown on the next page only: the database keeps the token's hash.
        return self._done(
            request,
            site,
            "invitation",
            invitation={
                "email": email,
                "url": self.app.settings.base_url + "partners/invitations/" + token,
                "expires": _when(now + sites.INVITATION_LIFETIME),
            },
        )

    async def withdraw_invitation(self, request: Request, site: str, invitation: str) -> bytes:
        self.app.check_csrf(request)
        _account, found = await self._site(request, site)
        if not invitation.isdigit():
            raise HTTPError(404, N_("There is no such invitation."))
        await self.app.storage.run(sites.withdraw_invitation, found.id, int(invitation))
        return self._done(request, site, "admins")

    async def remove_admin(self, request: Request, site: str, admin: str) -> bytes:
        """Remove an admin (oneself included), unless they are the site's last."""
        self.app.check_csrf(request)
        account, found = await self._site(request, site)
        if not admin.isdigit():
            raise HTTPError(404, N_("There is no such admin of this site."))
        outcome = await self.app.storage.run(sites.remove_admin, found.id, int(admin), self._now())
        if outcome == "absent":
            raise HTTPError(404, N_("There is no such admin of this site."))
        if outcome == "last":
            return self._done(
                request,
                site,
                error=gettext(
                    "A site needs at least one admin: invite another before removing the last one."
                ),
            )
        log.info("partner site {site}: an admin was removed", site=site)
        if int(admin) == account.id:
            return self.app.redirect(request, "/partners")
        return self._done(request, site, "admins")

    async def _invitation(self, request: Request, token: str) -> tuple[Any, str, sites.Site]:
        account = await self.app.require_account(request, f"/partners/invitations/{token}")
        found = await self.app.storage.run(sites.invitation_by_token, token, self._now())
        if found is None:
            raise HTTPError(
                404,
                N_(
                    "This invitation cannot be used: it was accepted or withdrawn, or it expired. "
                    "Ask the site's admins for a new one."
                ),
            )
        invitation, site = found
        if invitation.email != account.email:
            raise HTTPError(
                403,
                N_(
                    "This invitation is for another email address: sign in with the Clickpass "
                    "account that has the address it was made for."
                ),
            )
        return account, token, site

    async def invitation_page(self, request: Request, token: str) -> bytes:
        """What the invited person sees: which site, and a button to accept."""
        account, token, site = await self._invitation(request, token)
        return self.app.render(
            request, "partner_invitation.html", account=account, site=site, token=token
        )

    async def accept_invitation(self, request: Request, token: str) -> bytes:
        self.app.check_csrf(request)
        account, token, _site = await self._invitation(request, token)
        outcome, site = await self.app.storage.run(
            sites.accept_invitation, token, account.id, account.email, self._now()
        )
        if outcome != "accepted" or site is None:
            raise HTTPError(
                404,
                N_(
                    "This invitation cannot be used: it was accepted or withdrawn, or it expired. "
                    "Ask the site's admins for a new one."
                ),
            )
        log.info("partner site {site}: invitation accepted", site=site.public_id)
        return self.app.redirect(request, f"/partners/{site.public_id}")

    async def second_factor(self, request: Request, site: str) -> bytes:
        self.app.check_csrf(request)
        _account, found = await self._site(request, site)
        required = self.app.form(request, "required") == "yes"
        await self.app.storage.run(sites.set_require_second_factor, found.id, required, self._now())
        said = (
            gettext("Signing in to this site now requires a second factor.")
            if required
            else gettext("Signing in to this site no longer requires a second factor.")
        )
        return self._done(request, site, "second-factor", notice=said)

    async def rotate_secret(self, request: Request, site: str) -> bytes:
        self.app.check_csrf(request)
        _account, found = await self._site(request, site)
        await self.app.storage.run(sites.rotate_webhook_secret, found.id, self._now())
        return self._done(
            request,
            site,
            notice=gettext(
                "The webhook secret was changed. Update your endpoint: from now on, "
                "webhooks are signed with the new one."
            ),
        )

    async def complete_deletion(self, request: Request, site: str, deletion: str) -> bytes:
        """Mark a person's deletion request done, as the partner API's C{complete} does."""
        self.app.check_csrf(request)
        _account, found = await self._site(request, site)
        done = await self.app.storage.run(
            sites.complete_deletion, found.id, deletion[:40], self._now()
        )
        if done is None:
            raise HTTPError(404, N_("There is no such deletion request for this site."))
        if done:
            log.info("partner site {site}: a deletion request was marked done", site=site)
        return self._done(
            request,
            site,
            "deletions",
            notice=translate(N_("Deletion request %(id)s marked done."), id=deletion),
        )

    async def delete_form(self, request: Request, site: str) -> bytes:
        """The second step of deleting a site: what goes, and the host to type."""
        account, found = await self._site(request, site)
        linked = await self.app.storage.run(sites.linked_people, found.id)
        return self.app.render(
            request,
            "partner_site_delete.html",
            account=account,
            site=found,
            linked=linked,
            error=None,
        )

    async def delete(self, request: Request, site: str) -> bytes:
        """Delete the site, once its admin has typed its host to confirm."""
        self.app.check_csrf(request)
        account, found = await self._site(request, site)
        typed = self.app.form(request, "confirm").strip().lower().rstrip(".")
        if typed != found.sector:
            request.setResponseCode(400)
            linked = await self.app.storage.run(sites.linked_people, found.id)
            return self.app.render(
                request,
                "partner_site_delete.html",
                account=account,
                site=found,
                linked=linked,
                error=Text(N_("Nothing was deleted: type %(host)s to confirm."), host=found.sector),
            )
        await self.app.storage.run(sites.delete_site, found.id)
        log.info("partner site {site} for {sector} deleted", site=site, sector=found.sector)
        self.flash.put(
            request,
            site="",
            notice=translate(
                N_("The site %(name)s (%(host)s) was deleted."), name=found.name, host=found.sector
            ),
        )
        return self.app.redirect(request, "/partners")


def install(app: WebApp, router: Router, site_clients: SiteClients | None = None) -> Console:
    console = Console(app, site_clients=site_clients)
    router.add("GET", "/partners", console.index)
    router.add("GET", "/partners/new", console.new_form)
    router.add("POST", "/partners/new", console.create)
    router.add("GET", "/partners/invitations/{token}", console.invitation_page)
    router.add("POST", "/partners/invitations/{token}", console.accept_invitation)
    router.add("GET", "/partners/{site}", console.show)
    router.add("POST", "/partners/{site}/settings", console.update)
    router.add("POST", "/partners/{site}/second-factor", console.second_factor)
    router.add("POST", "/partners/{site}/verify", console.verify)
    router.add("POST", "/partners/{site}/keys", console.create_key)
    router.add("POST", "/partners/{site}/keys/{key}/revoke", console.revoke_key)
    router.add("POST", "/partners/{site}/admins", console.invite_admin)
    router.add("POST", "/partners/{site}/admins/{admin}/remove", console.remove_admin)
    router.add(
        "POST", "/partners/{site}/invitations/{invitation}/withdraw", console.withdraw_invitation
    )
    router.add("POST", "/partners/{site}/webhook-secret", console.rotate_secret)
    router.add(
        "POST", "/partners/{site}/deletion-requests/{deletion}/complete", console.complete_deletion
    )
    router.add("GET", "/partners/{site}/delete", console.delete_form)
    router.add("POST", "/partners/{site}/delete", console.delete)
    return console

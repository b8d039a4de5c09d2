"""
The person's side of a partner site: the partner-branded choice between
"create a new account at PARTNER" (a form with the partner's fields,
pre-filled and validated) and "I already have an account at PARTNER"
(connect), the answer that carries the outcome to the partner, and the
account pages that list connected sites with disconnect.

The OpenID provider's partner hook (L{clickpass.openid.web.PartnerHook},
given to the provider by the application): a checkid request whose realm
belongs to a registered site comes here after the provider's own checks,
and it answers through the provider's L{Assertions}. A linked person goes straight through (also in
checkid_immediate); a new one sees the choice.

Never ask for, show or forward a partner's password: connect only sends
the person to the partner's connect URL with the signed assertion. Never
send a person anywhere outside the realm the request named.
"""

from __future__ import annotations

import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from openid.server.trustroot import TrustRoot

from twisted.logger import Logger
from twisted.web.server import Request

from clickpass.accounts import events
from clickpass.accounts.service import Account
from clickpass.i18n import N_, Text
from clickpass.openid import approvals
from clickpass.openid import extensions as openid_extensions
from clickpass.openid.hardening import for_log
from clickpass.openid.identifiers import BadRealm, SiteIdentifier, sector_of
from clickpass.openid.web import (
    NOT_READ,
    PLAIN_OPENID,
    Assertions,
    Checked,
    NotRead,
    PlainOpenID,
    openid_query_of,
)
from clickpass.partners import extension, fields, sites
from clickpass.web.app import WebApp, day, safe_next
from clickpass.web.pages import AccountSection
from clickpass.web.routing import HTTPError, Router

log = Logger()


def retarget(target: str, original: str, realm: str) -> str | None:
    """
    Where to send the assertion instead of the request's return_to: the
    site's registration or connect URL, carrying the original return_to's
    query (the partner's own state). L{None} when there is no such URL or
    it is outside the request's realm.
    """
    if not target:
        return None
    trust_root = TrustRoot.parse(realm)
    if trust_root is None or not trust_root.validateURL(target):
        return None
    parts = urlsplit(target)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    query += [
        (k, v)
        for k, v in parse_qsl(urlsplit(original).query, keep_blank_values=True)
        if k not in present and not k.startswith("openid.")
    ]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


class SecondFactorGate(Protocol):
    """Second factors (clickpass.mfa), for sites that require one of everyone."""

    async def second_factor_needed(
        self, request: Request, account: Account, back: str
    ) -> str | None:
        """
        Where the person gives (or first sets up) a second factor before
        coming back to C{back}; L{None} when this session had one.
        """
        ...


class PartnerFlow:
    """Request handlers of the partner flow, and the provider's hook."""

    def __init__(
        self, app: WebApp, assertions: Assertions, second_factors: SecondFactorGate | None = None
    ) -> None:
        self.app = app
        self.web = assertions
        self.second_factors = second_factors

    def _now(self) -> int:
        return int(self.app.reactor.seconds())

    def _today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self._now(), datetime.UTC).date()

    @staticmethod
    def _asked(site: sites.Site, wanted: openid_extensions.Requested) -> tuple[list[str], set[str]]:
        asked, required = extension.requested_fields(wanted)
        asked |= set(site.requested_fields)
        required |= set(site.required_fields)
        return [f for f in fields.ORDER if f in asked], required & asked

    # Branding of the sign-in and sign-up pages.

    async def branding(self, next_url: str) -> dict[str, str] | None:
        """
        The partner a person is signing in for, when C{next_url} is an OpenID
        request from a verified partner site: its name, logo and realm, for
        "to continue to PARTNER". L{None} for anything else.
        """
        realm, return_to = _realm_of_next(next_url)
        if not realm or not return_to:
            return None
        try:
            sector = sector_of(realm)
        except BadRealm:
            return None
        site = await self.app.storage.run(sites.site_by_sector, sector)
        # Only a request the flow would serve (verified site, registered
        # return_to) is branded: a made-up link cannot borrow a partner's name.
        if site is None or not site.verified or not site.allows_return_to(return_to):
            return None
        return {
            "name": site.name,
            "logo_url": site.logo_url if site.logo_url.startswith("https://") else "",
            "realm": site.realm,
        }

    # The provider's hook.

    def site_lookup(self, tx: Any, sector: str) -> sites.Site | None:
        """How the provider reads a sector's partner site ahead, in its own transaction."""
        return sites.site_by_sector(tx, sector)

    async def checkid(
        self,
        request: Request,
        openid_request: Any,
        query: dict[str, str],
        account: Account,
        checked: Checked,
        read_ahead: object = NOT_READ,
    ) -> bytes | PlainOpenID:
        """
        The answer for a registered site's request, or L{PlainOpenID} if the
        realm is no verified partner's. C{read_ahead}: the realm's partner
        site when the provider read it already (with L{site_lookup}, in its
        first transaction).
        """
        site_id, select, wanted = checked.site_id, checked.select, checked.wanted
        site: sites.Site | None
        if isinstance(read_ahead, NotRead):
            site = await self.app.storage.run(sites.site_by_sector, site_id.sector)
        else:
            site = read_ahead if isinstance(read_ahead, sites.Site) else None
        if site is None:
            return PLAIN_OPENID
        if not site.verified:
            # Anyone can register a host; until its owner proves it, the site
            # is an ordinary relying party (consent, no links), with a warning
            # that names its host: the name it was registered with is
            # whatever its registrant typed, and never appears on our pages.
            log.info("partner {site} not verified: plain OpenID", site=site.public_id)
            return PlainOpenID(unverified_partner=site.display_name)
        if not site.allows_return_to(str(openid_request.return_to)):
            if openid_request.immediate:
                return await self.web.answer(request, openid_request, False)
            return self._refuse_return_to(request, site, openid_request)
        if site.require_second_factor and self.second_factors is not None:
            back = "/openid?" + urlencode(sorted(query.items()))
            target = await self.second_factors.second_factor_needed(request, account, back)
            if target is not None:
                log.info("partner {site}: a second factor first", site=site.public_id)
                if openid_request.immediate:
                    return await self.web.answer(request, openid_request, False)
                return self.app.redirect(request, target)
        link = await self.app.storage.run(sites.get_link, site.id, account.id)
        if link is not None:
            return await self._login(
                request, openid_request, account, site, site_id, select, wanted
            )
        if openid_request.immediate:
            return await self.web.answer(request, openid_request, False)
        asked, required = self._asked(site, wanted)
        unverified = await self._verify_first(request, site, account, query, required)
        if unverified is not None:
            return unverified
        return await self._choice(
            request, site, account, query, asked, required, await self._prefill(account)
        )

    async def _verify_first(
        self,
        request: Request,
        site: sites.Site,
        account: Account,
        query: dict[str, str],
        required: set[str],
    ) -> bytes | None:
        """
        The page asking the person to verify their address first, when the
        site requires an email and the account has no verified one (an
        unverified address is never released); L{None} otherwise. The link
        they are sent brings them back to this same sign-in.
        """
        if "email" not in required or "email" in await self.web.held(account):
            return None
        log.info("partner sign-in at {site}: email required, not verified", site=site.public_id)
        return self.app.render(
            request,
            "partner_verify_first.html",
            site=site,
            continuation="/openid?" + urlencode(sorted(query.items())),
        )

    async def _login(
        self,
        request: Request,
        openid_request: Any,
        account: Account,
        site: sites.Site,
        site_id: SiteIdentifier,
        select: bool,
        wanted: openid_extensions.Requested,
    ) -> bytes:
        asked, _ = self._asked(site, wanted)
        held = await self.web.held(account)
        values = {f: held[f] for f in asked if f in held}
        await self.app.storage.run(sites.touch_link, site.id, account.id, self._now())
        log.debug("partner sign-in at {site}: returning person", site=site.public_id)
        return await self._assert(
            request, openid_request, site_id, select, "login", site, values, wanted
        )

    async def _assert(
        self,
        request: Request,
        openid_request: Any,
        site_id: SiteIdentifier,
        select: bool,
        outcome: str,
        site: sites.Site,
        values: dict[str, str],
        wanted: openid_extensions.Requested,
        return_to: str | None = None,
    ) -> bytes:
        """The positive assertion, carrying the partner extension for C{outcome}."""
        if site.require_second_factor and self.second_factors is not None:
            # Checked at checkid; checked again here, where every positive
            # answer to a partner site goes out.
            account = await self.app.current_account(request)
            if account is None or await self.second_factors.second_factor_needed(
                request, account, "/"
            ):
                return await self.web.answer(request, openid_request, False)
        return await self.web.answer(
            request,
            openid_request,
            True,
            site_id,
            select,
            None,
            None,
            return_to=return_to,
            decorate=extension.decorator(outcome, site.public_id, values, wanted),
        )

    async def refusal(self, request: Request, openid_request: Any, sector: str) -> bytes | None:
        """
        The refusal of a verified site's request for a return_to it did not
        register, before the person is asked to sign in (L{checkid} would
        refuse it after); L{None} for anything else. An unverified site's
        request is plain OpenID: relying-party discovery judges its return_to.
        """
        site = await self.app.storage.run(sites.site_by_sector, sector)
        if site is None or not site.verified:
            return None
        if site.allows_return_to(str(openid_request.return_to)):
            return None
        return self._refuse_return_to(request, site, openid_request)

    def _refuse_return_to(self, request: Request, site: sites.Site, openid_request: Any) -> bytes:
        log.info(
            "partner {site}: return_to {return_to} not registered; refused",
            site=site.public_id,
            return_to=for_log(openid_request.return_to),
        )
        return self._refuse(
            request,
            Text(
                N_(
                    "%(name)s asked to send you back to %(return_to)s, which is not one "
                    "of the addresses it registered with Clickpass. Clickpass refused, "
                    "to protect you. Tell the site."
                ),
                name=site.name,
                return_to=openid_request.return_to,
            ),
        )

    def _refuse(self, request: Request, message: str) -> bytes:
        request.setResponseCode(400)
        return self.app.render(request, "openid/refused.html", message=message, back_url=None)

    async def _prefill(self, account: Account) -> dict[str, str]:
        """The registration form's first values: the releasable ones over the account's."""
        values = fields.prefill(account)
        if values.get("email", "").endswith(openid_extensions.PLACEHOLDER_EMAIL_DOMAIN):
            del values["email"]
        held = await self.web.held(account)
        if held.get("nickname") == account.display_name:
            # Not the provider's own nickname: keep the form's shorter default.
            held.pop("nickname")
        values.update(held)
        return values

    async def _choice(
        self,
        request: Request,
        site: sites.Site,
        account: Account,
        query: dict[str, str],
        asked: list[str],
        required: set[str],
        values: dict[str, str],
        errors: dict[str, str] | None = None,
    ) -> bytes:
        payload, mac = self.web.form_payload(account.id, query)
        held = await self.web.held(account)
        return self.app.render(
            request,
            "partner_choice.html",
            site=site,
            payload=payload,
            mac=mac,
            form_fields=[
                {
                    "name": f,
                    "label": fields.FIELDS[f].label,
                    "input_type": fields.FIELDS[f].input_type,
                    "autocomplete": fields.FIELDS[f].autocomplete,
                    "hint": fields.FIELDS[f].hint,
                    "required": f in required,
                    "value": values.get(f, ""),
                    "error": (errors or {}).get(f, ""),
                }
                for f in asked
            ],
            connect_shares=[(fields.FIELDS[f].label, held[f]) for f in asked if f in held],
            errors=errors or {},
        )

    # The choice's answers.

    async def _restore(
        self, request: Request
    ) -> tuple[Account, Any, sites.Site, SiteIdentifier, bool, openid_extensions.Requested]:
        self.app.check_csrf(request)
        account = await self.app.current_account(request)
        if account is None:
            raise HTTPError(403, N_("You were signed out. Go back to the site and sign in again."))
        openid_request = await self.web.restore(request, account)
        checked = await self.web.check(request, openid_request, account)
        if isinstance(checked, bytes):
            raise _Page(checked)
        site_id, select, wanted = checked.site_id, checked.select, checked.wanted
        site = await self.app.storage.run(sites.site_by_sector, site_id.sector)
        if (
            site is None
            or not site.verified
            or not site.allows_return_to(str(openid_request.return_to))
        ):
            raise HTTPError(400, N_("This site is no longer set up for Clickpass. Tell the site."))
        return account, openid_request, site, site_id, select, wanted

    async def register(self, request: Request) -> bytes:
        try:
            account, openid_request, site, site_id, select, wanted = await self._restore(request)
        except _Page as page:
            return page.body
        asked, required = self._asked(site, wanted)
        query = openid_query_of(openid_request)
        unverified = await self._verify_first(request, site, account, query, required)
        if unverified is not None:
            return unverified
        given = {f: self.app.form(request, "field_" + f) for f in asked}
        if "email" in asked:
            # The address sent is the account's verified one, never what was typed.
            given["email"] = (await self.web.held(account)).get("email", "")
        values, errors = fields.check_form(asked, required, given, self._today())
        if errors:
            request.setResponseCode(400)
            return await self._choice(request, site, account, query, asked, required, given, errors)
        return await self._finish(
            request, openid_request, account, site, site_id, select, wanted, "register", values
        )

    async def connect(self, request: Request) -> bytes:
        try:
            account, openid_request, site, site_id, select, wanted = await self._restore(request)
        except _Page as page:
            return page.body
        asked, required = self._asked(site, wanted)
        query = openid_query_of(openid_request)
        unverified = await self._verify_first(request, site, account, query, required)
        if unverified is not None:
            return unverified
        held = await self.web.held(account)
        values = {f: held[f] for f in asked if f in held}
        return await self._finish(
            request, openid_request, account, site, site_id, select, wanted, "connect", values
        )

    async def cancel(self, request: Request) -> bytes:
        self.app.check_csrf(request)
        account = await self.app.current_account(request)
        if account is None:
            raise HTTPError(403, N_("You were signed out. Go back to the site and sign in again."))
        openid_request = await self.web.restore(request, account)
        log.info("partner sign-in cancelled by the person")
        return await self.web.answer(request, openid_request, False)

    async def _finish(
        self,
        request: Request,
        openid_request: Any,
        account: Account,
        site: sites.Site,
        site_id: SiteIdentifier,
        select: bool,
        wanted: openid_extensions.Requested,
        outcome: str,
        values: dict[str, str],
    ) -> bytes:
        now = self._now()
        realm = str(openid_request.trust_root)
        identifier = self.web.identifiers.url(site_id.opaque)
        created = await self.app.storage.run(
            sites.create_link, site, account.id, site_id.opaque, identifier, outcome, now
        )
        if not created:
            # Linked meanwhile (a second tab): this is an ordinary sign-in.
            outcome = "login"
        await self.app.storage.run(approvals.remember, account.id, realm, frozenset(values), now)
        target = site.registration_url if outcome == "register" else site.connect_url
        return_to = (
            retarget(target, str(openid_request.return_to), realm) if outcome != "login" else None
        )
        log.info(
            "partner {outcome} at {site}: releasing {fields}",
            outcome=outcome,
            site=site.public_id,
            fields=",".join(sorted(values)) or "nothing",
        )
        return await self._assert(
            request, openid_request, site_id, select, outcome, site, values, wanted, return_to
        )

    # The person's connected sites.

    async def connected(self, account: Account) -> list[dict[str, Any]]:
        """The sites C{account} is connected to, for the account pages."""
        found = await self.app.storage.run(sites.links_for_account, account.id)
        return [
            {
                "id": site.public_id,
                "name": site.display_name,
                "logo_url": site.logo_url if site.verified else "",
                "realm": site.realm,
                "outcome": link.outcome,
                "created": day(link.created),
                "last_signin": day(link.last_signin),
            }
            for site, link in found
        ]

    def account_section(self) -> AccountSection:
        """The connected sites on the account page."""

        async def context(account: Account) -> dict[str, Any]:
            return {"partner_sites": await self.connected(account)}

        return AccountSection("partner_account_sites.html", context)

    async def sites_page(self, request: Request) -> bytes:
        account = await self.app.require_account(request)
        return self.app.render(
            request,
            "partner_account_sites_page.html",
            account=account,
            partner_sites=await self.connected(account),
        )

    async def disconnect(self, request: Request) -> bytes:
        """Disconnect from a site; with C{forget}, also ask it to delete the person's data."""
        self.app.check_csrf(request)
        account = await self.app.require_account(request)
        public_id = self.app.form(request, "site")
        forget = self.app.form(request, "forget") == "yes"
        now = self._now()
        how = self.app.how(request)

        def change(tx: Any) -> str:
            site = sites.site_by_public_id(tx, public_id)
            link = sites.get_link(tx, site.id, account.id) if site is not None else None
            if site is None or link is None:
                return ""
            identifier = self.web.identifiers.url(link.opaque)
            if forget:
                sites.request_deletion(tx, site, link, identifier, now)
            else:
                sites.unlink(tx, site, link, identifier, "person", now)
            events.record(
                tx,
                account.id,
                "site_disconnected",
                now,
                client_address=how.client_address,
                browser=how.browser,
                detail=site.display_name + (" (asked to delete your data)" if forget else ""),
            )
            return site.name

        name = await self.app.storage.run(change)
        if not name:
            raise HTTPError(404, N_("You are not connected to that site."))
        log.info(
            "person disconnected from {site}{forget}",
            site=public_id,
            forget=" and asked for deletion" if forget else "",
        )
        return self.app.redirect(
            request, safe_next(self.app.form(request, "next"), "/account/sites")
        )


class _Page(Exception):
    """A finished page to send instead (the provider refused something)."""

    def __init__(self, body: bytes) -> None:
        super().__init__("page")
        self.body = body


def _realm_of_next(next_url: str) -> tuple[str, str]:
    """The realm and return_to an C{/openid?...} continuation names, else empty strings."""
    if not next_url.startswith("/openid?") or len(next_url) > 16 * 1024:
        return "", ""
    query = dict(parse_qsl(next_url.split("?", 1)[1], keep_blank_values=True))
    return_to = query.get("openid.return_to", "")
    realm = query.get("openid.realm") or query.get("openid.trust_root") or return_to
    return realm, return_to


def install(
    app: WebApp,
    router: Router,
    assertions: Assertions,
    second_factors: SecondFactorGate | None = None,
) -> PartnerFlow:
    """Register the person's side of partner sites; the caller hooks the flow into the provider."""
    flow = PartnerFlow(app, assertions, second_factors)
    router.add("POST", "/partner/register", flow.register)
    router.add("POST", "/partner/connect", flow.connect)
    router.add("POST", "/partner/cancel", flow.cancel)
    router.add("GET", "/account/sites", flow.sites_page)
    router.add("POST", "/account/sites/disconnect", flow.disconnect)
    return flow

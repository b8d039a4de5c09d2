"""
The OpenID provider's web glue: the endpoint (/openid), the consent
decision (/openid/decide), and discovery for the OP Identifier
(/openid/xrds) and for every claimed identifier (/id/<opaque>).

The flow of a checkid request, on the reactor thread:
decode -> who is signed in -> this site's identifier for them (database)
-> what the site asks for -> relying-party discovery (treq) -> remembered
approval (database) -> answer, sign (its association read and written in
the database) and encode.
A checkid_immediate that could only get setup_needed (a realm the person has
not approved) gets it before discovery: a fetch would tell the realm that its
visitor is signed in here.
A checkid_setup that would be refused whoever signs in (an unusable realm,
a return_to its partner site did not register or its realm does not
publish) is refused before the sign-in page: nobody types a password to
learn that a site is misconfigured.
A person who must act (sign in, consent) is sent to a page; the original
request travels in the URL or, on the consent form, in a field MACed with
a key derived from the master secret, so any worker can finish it.

python3-openid's parsing, its answers and its signatures are pure
computation on bounded input (L{MAX_QUERY_BYTES}) and run on the reactor
thread: handing them to a thread buys no parallelism (they hold the GIL)
and costs two thread switches each. Signing and check_authentication see
a store staged around them (L{Provider.sign}); only associate uses the
library's own store, which blocks on the database, and so runs in a
thread, never on the reactor.
Never redirect a browser to a return_to that failed verification: such
requests get an error page.

Two classes: L{Assertions}, what every sign-in flow needs to check a
request and answer it (the partner flow uses it too), and L{OpenIDWeb},
the provider's own endpoint and pages. The seams this module calls are its
own Protocols, implemented by whoever the application passes in:
L{ClaimsSource} (upstream sign-in's claims) and L{PartnerHook} (partner
sites' own flow). It must never import the features behind them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from jinja2 import ChoiceLoader, FileSystemLoader
from openid.message import IDENTIFIER_SELECT, OPENID_NS
from openid.server.server import (
    ENCODE_KVFORM,
    CheckAuthRequest,
    CheckIDRequest,
    EncodingError,
    MalformedReturnURL,
    MalformedTrustRoot,
    ProtocolError,
    UntrustedReturnURL,
    WebResponse,
)
from openid.urinorm import urinorm

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.server import Request

from clickpass import i18n
from clickpass.accounts.service import Account
from clickpass.i18n import N_, Text, part
from clickpass.openid import approvals, discovery, extensions
from clickpass.openid.hardening import for_log, harden_library, wildcard_too_broad
from clickpass.openid.identifiers import (
    KEY_PURPOSE,
    BadRealm,
    Identifiers,
    SiteIdentifier,
    recorded,
    sector_of,
)
from clickpass.openid.provider import Provider, negative_answer
from clickpass.openid.rp_discovery import RPVerifier, Verdict, parse_realm
from clickpass.openid.store import DatabaseOpenIDStore
from clickpass.storage.sql import Transaction
from clickpass.web.app import WebApp
from clickpass.web.routing import HTTPError, Router

TEMPLATES = Path(__file__).parent / "templates"
MAX_QUERY_BYTES = 64 * 1024
# Longest URL we send a browser to. The request it makes must fit the front's
# request head (32 KiB by default), and our answer's head its 64 KiB limit for a
# worker's response head (a longer one became a 502). A request can be up to
# MAX_QUERY_BYTES, and carrying it through sign-in quotes it twice.
MAX_REDIRECT_URL = 16 * 1024
TOO_LONG = N_(
    "The site's OpenID request is too long to carry on in a browser address. Tell the site."
)
MAX_PAYLOAD_BYTES = 96 * 1024
CONSENT_LIFETIME = 3600

T = TypeVar("T")

log = Logger()


class ClaimsSource(Protocol):
    """What an account's upstream sign-in provider said about it (clickpass.upstream)."""

    async def claims_for(self, account_id: int) -> dict[str, Any]: ...


class NotRead:
    """The partner site of a realm, not read ahead (as opposed to read and found missing)."""


NOT_READ = NotRead()


@dataclass(frozen=True)
class Checked:
    """
    What L{Assertions.check} found to hold for a checkid request: the site's
    identifier for the person, whether the site asked for directed identity,
    what it asks for, and how its return_to was verified.
    """

    site_id: SiteIdentifier
    select: bool
    wanted: extensions.Requested
    verdict: Verdict


@dataclass(frozen=True)
class PlainOpenID:
    """
    The partner hook's answer for a request it leaves to the provider: plain
    OpenID with consent. C{unverified_partner} names a partner site whose
    realm is not verified yet, for the consent page's warning.
    """

    unverified_partner: str | None = None


PLAIN_OPENID = PlainOpenID()


class PartnerHook(Protocol):
    """Partner sites' own flow (clickpass.partners.flow), after the provider's checks."""

    def site_lookup(self, tx: Transaction, sector: str) -> object:
        """The partner site of C{sector}, read in the provider's first transaction."""
        ...

    async def checkid(
        self,
        request: Request,
        openid_request: Any,
        query: dict[str, str],
        account: Account,
        checked: Checked,
        read_ahead: object = NOT_READ,
    ) -> bytes | PlainOpenID:
        """The page or answer for a partner site's request, or L{PlainOpenID}."""
        ...

    async def refusal(self, request: Request, openid_request: Any, sector: str) -> bytes | None:
        """
        The page refusing a request that the partner site of C{sector} would
        refuse whoever signs in (a return_to it did not register), shown
        before anyone is asked to sign in; L{None} when it would not.
        """
        ...


class SignInStrength(Protocol):
    """
    How strongly the person is signed in (clickpass.mfa, for PAPE): judged
    before a checkid is answered, and told in the positive answer.
    """

    async def needs_step_up(self, request: Request, openid_request: Any, account: Account) -> bool:
        """Whether the site asks for a stronger or fresher sign-in than this session's."""
        ...

    def step_up_url(self, back: str, openid_request: Any = None) -> str:
        """
        Where the person signs in more strongly (as C{openid_request} asks,
        when given), then comes back to C{back}.
        """
        ...

    async def decorator(
        self, request: Request, openid_request: Any
    ) -> Callable[[Any], None] | None:
        """What a positive answer says about how the person signed in, if anything."""
        ...


def build_assertions(
    app: WebApp, claims: ClaimsSource | None, strength: SignInStrength | None = None
) -> Assertions:
    """The provider's checks and answers, on the application's storage and secret."""
    settings = app.settings
    # Before the provider exists, so before any request in this worker.
    harden_library()
    provider = Provider(
        DatabaseOpenIDStore(app.storage),
        discovery.endpoint_url(settings.base_url),
        settings.served_over_tls,
        settings.openid.association_lifetime,
    )
    identifiers = Identifiers(
        app.storage, app.derive_key(KEY_PURPOSE), settings.base_url, clock=app.reactor
    )
    verifier = RPVerifier(app.reactor, settings.openid)
    return Assertions(app, provider, identifiers, verifier, claims, strength)


def install(
    app: WebApp, router: Router, assertions: Assertions, partners: PartnerHook | None
) -> OpenIDWeb:
    """Register the provider's routes on C{router}, with its templates."""
    loader = app.templates.loader
    assert loader is not None
    app.templates.loader = ChoiceLoader([loader, FileSystemLoader(str(TEMPLATES))])
    web = OpenIDWeb(app, assertions, partners)
    router.add("GET", "/openid", web.endpoint)
    router.add("POST", "/openid", web.endpoint)
    router.add("POST", "/openid/decide", web.decide)
    router.add("GET", "/openid/xrds", web.op_xrds)
    router.add("GET", "/id/{opaque}", web.identity_page)
    router.add("GET", "/id/{opaque}/xrds", web.identity_xrds)
    return web


def openid_query(request: Request) -> dict[str, str]:
    """The openid.* arguments of a request (query and form), as text."""
    query: dict[str, str] = {}
    total = 0
    for key, values in (request.args or {}).items():
        if not values or not key.startswith(b"openid."):
            continue
        total += len(key) + len(values[0])
        if total > MAX_QUERY_BYTES:
            raise HTTPError(413, N_("The OpenID request is too large."))
        try:
            query[key.decode("utf-8")] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, N_("The OpenID request is not valid UTF-8.")) from None
    return query


class Assertions:
    """
    What every sign-in flow does with a checkid request: check it, carry it
    through a form, know what can be released, answer and sign it. The
    provider's endpoint and the partner flow (clickpass.partners.flow) both
    use it.
    """

    def __init__(
        self,
        app: WebApp,
        provider: Provider,
        identifiers: Identifiers,
        verifier: RPVerifier,
        claims: ClaimsSource | None = None,
        strength: SignInStrength | None = None,
    ) -> None:
        self.app = app
        self.provider = provider
        self.identifiers = identifiers
        self.verifier = verifier
        # Upstream sign-in's claims; None: only the account's own values.
        self.claims = claims
        # Second factors' judgement of the sign-in (PAPE); None: nothing said.
        self.strength = strength
        self.base_url = app.settings.base_url
        self._consent_key = app.derive_key(b"openid consent form")

    # Plumbing.

    def thread(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        reactor = self.app.reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    def now(self) -> int:
        return int(self.app.reactor.seconds())

    def send(self, request: Request, response: WebResponse) -> bytes:
        if len(response.headers.get("location", "")) > MAX_REDIRECT_URL:
            # OpenID 2 answers that long as a form already; OpenID 1 has only
            # redirects.
            log.info("openid answer not sent: its redirect is too long")
            return self.refuse(request, 400, TOO_LONG)
        request.setResponseCode(response.code)
        request.setHeader(b"cache-control", b"no-store")
        for name, value in response.headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("utf-8"))
        if response.code in (301, 302, 303):
            return b""
        body = response.body.encode("utf-8") if isinstance(response.body, str) else response.body
        if body.lstrip().startswith(b"<"):
            # The library's self-submitting form (responses too long for a URL).
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"x-frame-options", b"DENY")
            request.setHeader(
                b"content-security-policy",
                b"default-src 'none'; script-src 'unsafe-inline'; form-action http: https:; "
                b"frame-ancestors 'none'",
            )
        else:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return bytes(body)

    async def held(self, account: Account) -> dict[str, str]:
        """
        What can be released about C{account}: its upstream provider's claims
        (the most recently used one; an unverified email is never among
        them) over the account's own values.
        """
        claims: dict[str, Any] = {}
        if self.claims is not None:
            try:
                claims = await self.claims.claims_for(account.id)
            except Exception:
                # Without the claims the account's own values still serve.
                log.failure("upstream claims for account {account} unreadable", account=account.id)
        return extensions.values_for(account, claims)

    async def released(self, wanted: frozenset[str], account: Account) -> dict[str, str]:
        """The values released for C{wanted} (see L{held}), by field name."""
        if not wanted:
            return {}
        held = await self.held(account)
        return {f: held[f] for f in sorted(wanted) if f in held}

    def refuse(
        self, request: Request, status: int, message: str, back_url: str | None = None
    ) -> bytes:
        request.setResponseCode(status)
        return self.app.render(request, "openid/refused.html", message=message, back_url=back_url)

    def refuse_unpublished(self, request: Request, openid_request: Any, verdict: Verdict) -> bytes:
        """The page refusing a return_to that the realm's published list does not hold."""
        realm = str(openid_request.trust_root)
        log.info(
            "openid request refused: return_to {return_to} not published by {realm}",
            return_to=for_log(openid_request.return_to),
            realm=for_log(realm),
        )
        return self.refuse(
            request,
            400,
            Text(
                N_(
                    "The site asked to send you back to %(return_to)s, but %(realm)s "
                    "does not confirm that address (%(reason)s). Clickpass refused."
                ),
                return_to=openid_request.return_to,
                realm=realm,
                reason=part(verdict.reason),
            ),
        )

    async def check(
        self,
        request: Request,
        openid_request: Any,
        account: Account,
        look: FirstLook | None = None,
    ) -> Checked | bytes:
        """
        Everything that must hold before a positive answer, for both the
        first look and the consent decision: the site's identifier, the
        identity asked for, the return_to's verification. Returns the page
        to send instead when something does not hold.
        """
        realm = str(openid_request.trust_root)
        cancel_url = openid_request.getCancelURL() if not openid_request.immediate else None
        now = self.now()
        try:
            if look is not None:
                site_id = await self.identifiers.for_site_seen(
                    account.id, account.uid, realm, now, look.identifier
                )
            else:
                site_id = await self.identifiers.for_site(account.id, account.uid, realm, now)
        except BadRealm as e:
            return self.refuse(
                request,
                400,
                Text(N_("The site's realm cannot be used: %(reason)s."), reason=part(str(e))),
            )
        own = self.identifiers.url(site_id.opaque)
        # OpenID 1 has no directed identity (no claimed_id to answer with; the
        # library raises if given one): there the OP Identifier, or
        # identifier_select, is just an identity that is not this person's.
        select = openid_request.message.isOpenID2() and (
            bool(openid_request.idSelect()) or _same_url(openid_request.identity, self.base_url)
        )
        if not select and (
            not _same_url(openid_request.identity, own)
            or self._claims_another(openid_request.claimed_id, own)
        ):
            if openid_request.immediate:
                return await self.answer(request, openid_request, allow=False)
            return self.refuse(
                request,
                403,
                Text(
                    N_(
                        "The site asked Clickpass to confirm an identity that is not yours "
                        "at this site. You are signed in as %(email)s; sign out and sign in "
                        "as the right person, or go back to the site."
                    ),
                    email=account.email,
                ),
                cancel_url,
            )
        verdict: Verdict = await self.verifier.verify(realm, str(openid_request.return_to))
        if verdict.refused:
            return self.refuse_unpublished(request, openid_request, verdict)
        wanted = extensions.requested(openid_request)
        if wanted.problem:
            # The sign-in goes on without it; this says why the site got nothing.
            log.info(
                "openid request from {realm}: {problem}; ignored",
                realm=for_log(realm),
                problem=for_log(wanted.problem),
            )
        return Checked(site_id, select, wanted, verdict)

    def _claims_another(self, claimed_id: str | None, own: str) -> bool:
        """
        Whether C{claimed_id} is on this provider but is not C{own}: the
        library would sign it into the assertion beside the person's
        identity. A claimed_id elsewhere (delegation from the person's own
        URL) is the relying party's to verify by discovery.
        """
        if not claimed_id or claimed_id == own:
            return False
        try:
            claimed = urinorm(claimed_id)
        except ValueError:
            return True
        return bool(claimed != urinorm(own) and claimed.startswith(urinorm(self.base_url)))

    def form_payload(self, account_id: int, query: dict[str, str]) -> tuple[str, str]:
        """The request as a form field, and its MAC (bound to the person)."""
        data = json.dumps({"q": query, "t": self.now()}, sort_keys=True).encode("utf-8")
        payload = base64.urlsafe_b64encode(data).decode("ascii")
        return payload, self._mac(account_id, payload)

    def _mac(self, account_id: int, payload: str) -> str:
        message = f"{account_id}\n{payload}".encode()
        return hmac.new(self._consent_key, message, hashlib.sha256).hexdigest()

    async def restore(self, request: Request, account: Account) -> Any:
        """
        The checkid request a form carried (fields C{payload} and C{mac}),
        checked to be this person's, unchanged and recent; decoded again.
        """
        payload = _raw_field(request, "payload", MAX_PAYLOAD_BYTES)
        mac = self.app.form(request, "mac")
        if not hmac.compare_digest(self._mac(account.id, payload), mac):
            raise HTTPError(
                400,
                N_(
                    "This sign-in form was changed or is not yours. Go back to the site and "
                    "sign in again."
                ),
            )
        try:
            data = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
            issued = int(data["t"])
            query = {str(k): str(v) for k, v in data["q"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise HTTPError(400, N_("This sign-in form cannot be read.")) from None
        if self.now() - issued > CONSENT_LIFETIME:
            raise HTTPError(
                400, N_("This sign-in form has expired. Go back to the site and sign in again.")
            )
        try:
            openid_request = self.provider.decode(query)
        except ProtocolError:
            raise HTTPError(400, N_("This sign-in request can no longer be used.")) from None
        if not isinstance(openid_request, CheckIDRequest) or openid_request.immediate:
            raise HTTPError(400, N_("This sign-in request can no longer be used."))
        return openid_request

    async def answer(
        self,
        request: Request,
        openid_request: Any,
        allow: bool,
        site_id: SiteIdentifier | None = None,
        select: bool = False,
        wanted: extensions.Requested | None = None,
        released: dict[str, str] | None = None,
        return_to: str | None = None,
        decorate: Callable[[Any], None] | None = None,
    ) -> bytes:
        if allow:
            if self.strength is not None:
                decorate = _both(decorate, await self.strength.decorator(request, openid_request))
            identity = self.identifiers.url(site_id.opaque) if site_id is not None else None
            answer = _positive(
                openid_request, identity, select, wanted, released, return_to, decorate
            )
        else:
            answer = negative_answer(openid_request)
        try:
            if answer.needsSigning():
                # Every positive answer, and OpenID 1's negative checkid_immediate.
                return self.send(request, await self.provider.sign(answer))
            # OpenID 2's cancel and setup_needed are not signed.
            return self.send(request, self.provider.encode(answer))
        except EncodingError as e:
            # A value the request brought (an extension's) that key-value form
            # cannot hold (a newline): the library refuses to sign it.
            log.info("openid answer not sent: {error}", error=for_log(e.explanation))
            return self.refuse(
                request,
                400,
                N_("The site's OpenID request holds a value that cannot be signed. Tell the site."),
            )


class OpenIDWeb:
    """The provider's request handlers: the endpoint, consent and discovery."""

    def __init__(
        self, app: WebApp, assertions: Assertions, partners: PartnerHook | None = None
    ) -> None:
        self.app = app
        self.assertions = assertions
        self.identifiers = assertions.identifiers
        self.base_url = assertions.base_url
        # Partner sites' own flow; None: plain consent for all.
        self.partners = partners

    # The endpoint.

    async def endpoint(self, request: Request) -> bytes:
        query = openid_query(request)
        if "openid.mode" not in query:
            discovery.op_discovery(request, self.base_url)
            return self.app.render(
                request,
                "openid/endpoint.html",
                openid_head=discovery.op_head_html(self.base_url),
                endpoint=discovery.endpoint_url(self.base_url),
            )
        if query.get("openid.mode") in ("checkid_setup", "checkid_immediate"):
            # The OpenID User Interface extension's language: the pages of
            # this sign-in, from the sign-in page on, follow it.
            self.app.follow_partner_language(request, i18n.wishes(ui_language(query)))
        try:
            openid_request = self.assertions.provider.decode(query)
        except UntrustedReturnURL as e:
            log.info(
                "openid request refused: return_to {return_to} outside realm {realm}",
                return_to=for_log(e.return_to),
                realm=for_log(e.trust_root),
            )
            return self.assertions.refuse(
                request,
                400,
                Text(
                    N_(
                        "The site asked to send you back to %(return_to)s, which is outside "
                        "its own realm %(realm)s. Clickpass refused, to protect you. Tell "
                        "the site."
                    ),
                    return_to=e.return_to,
                    realm=e.trust_root,
                ),
            )
        except (MalformedReturnURL, MalformedTrustRoot):
            return self.assertions.refuse(
                request,
                400,
                N_("The site sent a malformed return address or realm. Tell the site."),
            )
        except ProtocolError as e:
            return await self._protocol_error(request, e)
        except Exception:
            # The library raising something else on odd input is its bug, not
            # the person's: log it once, answer one line.
            log.failure("python3-openid could not decode a request")
            return self.assertions.refuse(
                request, 400, N_("This is not an OpenID request Clickpass can use.")
            )
        if isinstance(openid_request, CheckIDRequest):
            # The request as decoded and normalised (its realm and return_to),
            # to carry on through sign-in and the consent form.
            return await self._checkid(request, openid_request, openid_query_of(openid_request))
        if isinstance(openid_request, CheckAuthRequest):
            response = await self.assertions.provider.check_authentication(openid_request)
        else:
            response = await self.assertions.thread(
                self.assertions.provider.associate, openid_request
            )
        log.debug("openid {mode}: answered {code}", mode=openid_request.mode, code=response.code)
        return self.assertions.send(request, response)

    async def _protocol_error(self, request: Request, error: ProtocolError) -> bytes:
        if error.whichEncoding() == ENCODE_KVFORM and request.method == b"POST":
            # A relying party's direct request (always a POST): the spec's
            # key-value answer. An error is never signed: encoding it touches
            # no store.
            return self.assertions.send(request, self.assertions.provider.encode(error))
        # A browser's request is shown to the person in words, never
        # redirected to its (unverified) return_to: that would make us an open
        # redirector. The library's own text is for the log.
        log.info("openid request refused: {reason}", reason=for_log(" ".join(str(error).split())))
        return self.assertions.refuse(request, 400, explain_protocol_error(error))

    async def _refuse_malformed(
        self, request: Request, openid_request: Any, realm: str
    ) -> bytes | None:
        """The answer to a checkid request Clickpass cannot use (realm, return_to, identity)."""
        trust_root = parse_realm(realm)
        if trust_root is None or (
            trust_root.wildcard and wildcard_too_broad(trust_root.host.lstrip("."))
        ):
            return self.assertions.refuse(
                request,
                400,
                Text(N_("The site's realm %(realm)s is too broad to sign in to."), realm=realm),
            )
        if not openid_request.return_to:
            return self.assertions.refuse(
                request,
                400,
                N_(
                    "The site's OpenID request has no return address, so there is no way back "
                    "to the site. Tell the site."
                ),
            )
        if not openid_request.identity:
            # OpenID 2 allows a request for no identifier (extensions only);
            # Clickpass signs people in, so it has nothing to answer one.
            if openid_request.immediate:
                return await self.assertions.answer(request, openid_request, allow=False)
            return self.assertions.refuse(
                request,
                400,
                N_(
                    "The site's OpenID request asks for no identifier; Clickpass only signs "
                    "people in. Tell the site."
                ),
                openid_request.getCancelURL(),
            )
        return None

    async def _checkid(self, request: Request, openid_request: Any, query: dict[str, str]) -> bytes:
        realm = str(openid_request.trust_root)
        malformed = await self._refuse_malformed(request, openid_request, realm)
        if malformed is not None:
            return malformed
        account, look = await self._first_look(request, realm)
        if account is None:
            if openid_request.immediate:
                return await self.assertions.answer(request, openid_request, allow=False)
            refused = await self._refused_whoever_signs_in(request, openid_request)
            if refused is not None:
                return refused
            signin = self.app.signin_url("/openid?" + urlencode(query))
            if len(signin) > MAX_REDIRECT_URL:
                return self.assertions.refuse(request, 400, TOO_LONG)
            return self.app.redirect(request, signin)
        stepped = await self._step_up(request, openid_request, query, account)
        if stepped is not None:
            return stepped
        if openid_request.immediate and not await self._may_answer_at_once(
            openid_request, account, look
        ):
            # Before relying-party discovery: a fetch of the realm would tell
            # a per-visitor realm that its visitor is signed in here.
            return await self.assertions.answer(request, openid_request, allow=False)
        checked = await self.assertions.check(request, openid_request, account, look)
        if isinstance(checked, bytes):
            return checked
        plain = PLAIN_OPENID
        if self.partners is not None:
            site = look.partner_site if look is not None else NOT_READ
            handled = await self.partners.checkid(
                request, openid_request, query, account, checked, site
            )
            if not isinstance(handled, PlainOpenID):
                return handled
            plain = handled
        site_id, select, wanted = checked.site_id, checked.select, checked.wanted
        released = await self.assertions.released(wanted.fields, account)
        approval = (
            look.approval
            if look is not None
            else await self.app.storage.run(approvals.read, account.id, realm)
        )
        if approval is not None and approval.answers(frozenset(released)):
            # Only what the person allowed: fields they declined stay unsent.
            released = approval.shared(released)
            now = self.assertions.now()
            if approval.stale(now):
                await self.app.storage.run(approvals.touch, account.id, realm, now)
            # Per-request events are debug: workers log info and up unless
            # started with --access-log, and every line costs the front a relay.
            log.debug("openid sign-in at {realm}: remembered approval", realm=for_log(realm))
            return await self.assertions.answer(
                request, openid_request, True, site_id, select, wanted, released
            )
        if openid_request.immediate:
            return await self.assertions.answer(request, openid_request, allow=False)
        return self._consent_page(request, openid_request, query, account, checked, released, plain)

    async def _step_up(
        self, request: Request, openid_request: Any, query: dict[str, str], account: Account
    ) -> bytes | None:
        """
        The answer when the site asks for a stronger or fresher sign-in than
        the person's (PAPE): sign in more strongly and come back, or, for
        checkid_immediate, setup_needed. L{None}: go on.
        """
        strength = self.assertions.strength
        if strength is None or not await strength.needs_step_up(request, openid_request, account):
            return None
        if openid_request.immediate:
            return await self.assertions.answer(request, openid_request, allow=False)
        refused = await self._refused_whoever_signs_in(request, openid_request)
        if refused is not None:
            return refused
        target = strength.step_up_url("/openid?" + urlencode(query), openid_request)
        if len(target) > MAX_REDIRECT_URL:
            return self.assertions.refuse(request, 400, TOO_LONG)
        return self.app.redirect(request, target)

    async def _refused_whoever_signs_in(
        self, request: Request, openid_request: Any
    ) -> bytes | None:
        """
        The refusal a checkid_setup would get after the person signs in,
        given before they are asked for a password: a realm Clickpass cannot
        use, a return_to the realm's partner site did not register, or one
        its published list (relying-party discovery) does not hold. A person
        must not type a password only to learn that the site is
        misconfigured. L{None}: nothing known to refuse. (Discovery is cached
        for a few minutes in each worker, so the check after sign-in seldom
        fetches again. checkid_immediate never comes here: it gets
        setup_needed without a fetch.)
        """
        realm = str(openid_request.trust_root)
        try:
            sector = sector_of(realm)
        except BadRealm as e:
            return self.assertions.refuse(
                request,
                400,
                Text(N_("The site's realm cannot be used: %(reason)s."), reason=part(str(e))),
            )
        if self.partners is not None:
            refused = await self.partners.refusal(request, openid_request, sector)
            if refused is not None:
                return refused
        verdict = await self.assertions.verifier.verify(realm, str(openid_request.return_to))
        if verdict.refused:
            return self.assertions.refuse_unpublished(request, openid_request, verdict)
        return None

    async def _may_answer_at_once(
        self, openid_request: Any, account: Account, look: FirstLook | None
    ) -> bool:
        """
        Whether a checkid_immediate can get a positive answer, judged
        without fetching anything: the person approved the realm for what it
        asks, or the realm is a verified partner site's (whose flow decides).
        Otherwise the answer is setup_needed, whatever discovery would say.
        """
        if look is None:
            return True  # no usable realm: L{Assertions.check} refuses it
        if look.partner_site is not None and look.partner_site.verified:
            return True
        if look.approval is None:
            return False
        wanted = extensions.requested(openid_request)
        # What is released is part of what is asked for: an approval of all
        # that was asked for needs no look at the person's values (the usual
        # repeated sign-in reads nothing more here).
        return look.approval.answers(wanted.fields) or look.approval.answers(
            frozenset(await self.assertions.released(wanted.fields, account))
        )

    async def _first_look(
        self, request: Request, realm: str
    ) -> tuple[Account | None, FirstLook | None]:
        """
        Who is signed in and, for a signed-in person, what the rest of the
        checkid reads first: one transaction (L{FirstLook}). Without a usable
        realm there is nothing to read ahead (L{Assertions.check} refuses it).
        """
        try:
            sector = sector_of(realm)
        except BadRealm:
            return await self.app.current_account(request), None
        lookup = self.partners.site_lookup if self.partners is not None else None
        account, look = await self.app.current_account_with(
            request, _read_first_look, sector, realm, lookup
        )
        return account, look

    def _consent_page(
        self,
        request: Request,
        openid_request: Any,
        query: dict[str, str],
        account: Account,
        checked: Checked,
        released: dict[str, str],
        plain: PlainOpenID,
    ) -> bytes:
        payload, mac = self.assertions.form_payload(account.id, query)
        verdict = checked.verdict
        required = extensions.required(checked.wanted)
        return self.app.render(
            request,
            "openid/consent.html",
            realm=openid_request.trust_root,
            site=site_name(str(openid_request.trust_root)),
            return_to=without_query(str(openid_request.return_to)),
            verified=verdict.outcome == "verified",
            verdict_reason=verdict.reason,
            unverified_partner=plain.unverified_partner,
            identifier=self.identifiers.url(checked.site_id.opaque),
            # Each field a checkbox: what the site requires ticked, what it
            # only asks for left unticked (not sent unless the person ticks it).
            fields=[
                ConsentField(f, extensions.FIELD_LABELS[f], v, f in required)
                for f, v in released.items()
            ],
            payload=payload,
            mac=mac,
        )

    async def decide(self, request: Request) -> bytes:
        """The consent form's answer: allow (and remember) or cancel."""
        self.app.check_csrf(request)
        account = await self.app.current_account(request)
        if account is None:
            raise HTTPError(403, N_("You were signed out. Go back to the site and sign in again."))
        openid_request = await self.assertions.restore(request, account)
        realm = str(openid_request.trust_root)
        if self.app.form(request, "decision") != "allow":
            log.info("openid sign-in at {realm}: the person cancelled", realm=for_log(realm))
            return await self.assertions.answer(request, openid_request, allow=False)
        checked = await self.assertions.check(request, openid_request, account)
        if isinstance(checked, bytes):
            return checked
        if self.partners is not None:
            # A partner site's request belongs in the partner flow, not here.
            query = openid_query_of(openid_request)
            handled = await self.partners.checkid(request, openid_request, query, account, checked)
            if not isinstance(handled, PlainOpenID):
                return handled
        site_id, select, wanted = checked.site_id, checked.select, checked.wanted
        offered = await self.assertions.released(wanted.fields, account)
        released = offered
        if self.app.form(request, "choosing") == "yes":
            # The fields the person left ticked; the others are not sent. A
            # form without the choice (rendered by the previous release during
            # a rolling upgrade) allowed all it listed.
            chosen = {v.decode("utf-8", "replace") for v in (request.args or {}).get(b"share", [])}
            released = {f: v for f, v in offered.items() if f in chosen}
        always_ask = self.app.form(request, "always_ask") == "yes"
        await self.app.storage.run(
            approvals.remember,
            account.id,
            realm,
            frozenset(released),
            self.assertions.now(),
            frozenset(offered) - frozenset(released),
            always_ask,
        )
        log.info(
            "openid sign-in at {realm}: approved, releasing {fields}",
            realm=for_log(realm),
            fields=",".join(released) or "nothing",
        )
        return await self.assertions.answer(
            request, openid_request, True, site_id, select, wanted, released
        )

    # Discovery.

    async def op_xrds(self, request: Request) -> bytes:
        return discovery.serve_xrds(request, discovery.op_xrds(self.base_url))

    async def identity_page(self, request: Request, opaque: str) -> bytes:
        found = await self.identifiers.resolve(opaque)
        if found is None:
            raise HTTPError(404, N_("There is no such identifier."))
        identifier = self.identifiers.url(opaque)
        request.setHeader(
            b"x-xrds-location",
            discovery.identifier_xrds_url(self.base_url, opaque).encode("utf-8"),
        )
        request.setHeader(b"vary", b"Accept")
        if discovery.wants_xrds(request):
            return discovery.serve_xrds(
                request, discovery.identifier_xrds(self.base_url, identifier)
            )
        return self.app.render(
            request,
            "openid/identity.html",
            identifier=identifier,
            openid_head=discovery.identifier_head_html(self.base_url, identifier, opaque),
        )

    async def identity_xrds(self, request: Request, opaque: str) -> bytes:
        found = await self.identifiers.resolve(opaque)
        if found is None:
            raise HTTPError(404, N_("There is no such identifier."))
        return discovery.serve_xrds(
            request, discovery.identifier_xrds(self.base_url, self.identifiers.url(opaque))
        )


TELL_THE_SITE = N_(
    "The site sent a sign-in request that Clickpass cannot use: %(why)s Go back to the site and "
    "try again; if it happens again, tell the site: the problem is in its request, not in "
    "anything you did."
)


def explain_protocol_error(error: ProtocolError) -> Text:
    """
    What went wrong with a request python3-openid could not decode, in words
    a person understands (the library's text names fields and modes).
    """
    text = str(error).lower()
    mode = error.openid_message.getArg(OPENID_NS, "mode") if error.openid_message else None
    if "alias" in text:
        why = N_("its parts are labelled inconsistently.")
    elif "namespace" in text:
        why = N_("it asks in a version of OpenID that Clickpass does not know.")
    elif "no mode" in text or "unrecognized openid mode" in text:
        why = N_("it is not a kind of OpenID request that Clickpass knows.")
    elif mode in ("associate", "check_authentication"):
        why = N_(
            "this address is for the site's own server to talk to Clickpass, not for a "
            "browser, so there is nothing to sign in to here."
        )
    elif "return_to" in text or "realm" in text or "trust_root" in text:
        why = N_("it does not say where to send you back after signing in.")
    elif "identity" in text or "claimed_id" in text:
        why = N_("it does not say clearly whom to sign in.")
    else:
        why = N_("it is not complete or not well formed.")
    return Text(TELL_THE_SITE, why=part(why))


@dataclass(frozen=True)
class ConsentField:
    """One thing the consent page offers to share: its name, label, value, and whether required."""

    name: str
    label: str
    value: str
    required: bool


def site_name(realm: str) -> str:
    """
    What the consent page calls the site of C{realm}: its host name (a
    wildcard realm's domain), or the realm itself when it has none.
    """
    try:
        host = urlsplit(realm).hostname
    except ValueError:
        host = None
    return host.removeprefix("*.") if host else realm


def without_query(url: str) -> str:
    """C{url} without its query and fragment, as the consent page shows a return address."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?")[0].split("#")[0]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass(frozen=True)
class FirstLook:
    """
    What a signed-in person's checkid reads first, in the transaction that
    finds their session: this site's recorded identifier for them, the
    partner site of the realm's sector (when partners are installed), and
    their approval of the realm.
    """

    identifier: tuple[str, int] | None
    partner_site: Any
    approval: approvals.Approval | None


def _read_first_look(
    tx: Transaction,
    account: Account,
    sector: str,
    realm: str,
    partner_lookup: Callable[[Transaction, str], Any] | None,
) -> FirstLook:
    return FirstLook(
        recorded(tx, account.id, sector),
        partner_lookup(tx, sector) if partner_lookup is not None else None,
        approvals.read(tx, account.id, realm),
    )


def openid_query_of(openid_request: Any) -> dict[str, str]:
    """The openid.* arguments of a decoded request, as they came."""
    args = openid_request.message.toPostArgs()
    return {str(k): str(v) for k, v in args.items() if str(k).startswith("openid.")}


def _same_url(a: str | None, b: str) -> bool:
    if not a:
        return False
    try:
        return bool(urinorm(a) == urinorm(b))
    except ValueError:
        return False


UI_EXTENSION = "http://specs.openid.net/extensions/ui/1.0"


def ui_language(query: dict[str, str]) -> str | None:
    """
    The C{lang} of the OpenID User Interface extension in a request, under
    whatever alias the site declared for it (C{openid.ns.ui} usually).
    """
    for key, value in query.items():
        if key.startswith("openid.ns.") and value == UI_EXTENSION:
            return query.get("openid." + key[len("openid.ns.") :] + ".lang")
    return None


def _raw_field(request: Request, name: str, limit: int) -> str:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        raise HTTPError(400, Text(N_("The form is missing its %(name)r field."), name=name))
    if len(values[0]) > limit:
        raise HTTPError(413, Text(N_("The field %(name)r is too long."), name=name))
    try:
        return str(values[0].decode("ascii"))
    except UnicodeDecodeError:
        raise HTTPError(400, Text(N_("The field %(name)r is not valid."), name=name)) from None


def _both(
    first: Callable[[Any], None] | None, second: Callable[[Any], None] | None
) -> Callable[[Any], None] | None:
    """One decorator doing C{first} then C{second} (either may be L{None})."""
    if first is None or second is None:
        return first or second

    def both(response: Any) -> None:
        first(response)
        second(response)

    return both


def _positive(
    openid_request: Any,
    identity: str | None,
    select: bool,
    wanted: extensions.Requested | None,
    released: dict[str, str] | None,
    return_to: str | None = None,
    decorate: Callable[[Any], None] | None = None,
) -> Any:
    """
    A positive answer, with its extensions, not yet signed. C{return_to}
    sends it elsewhere in the realm (a partner's registration or connect
    URL; the caller checked it); C{decorate} adds more to it.
    """
    if return_to is not None:
        openid_request.return_to = return_to
    if select:
        # A request naming our OP Identifier itself is directed identity too.
        openid_request.identity = IDENTIFIER_SELECT
        openid_request.claimed_id = IDENTIFIER_SELECT
        response = openid_request.answer(True, identity=identity, claimed_id=identity)
    else:
        response = openid_request.answer(True)
    if wanted is not None:
        extensions.add_to_response(response, wanted, released or {})
    if decorate is not None:
        decorate(response)
    return response

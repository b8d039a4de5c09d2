"""
The example partner site's web application (see the package docstring).

python3-openid's consumer blocks (it fetches the provider's discovery
documents), so it runs in the reactor's thread pool, never on the
reactor thread.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import html
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from openid.consumer import consumer
from openid.extensions import sreg
from openid.store.memstore import MemoryStore

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

CLICKPASS_NS = "http://clickpass.com/ns/partner/1.0"
SESSION_COOKIE = b"partner_session"
SIGNATURE_HEADER = b"clickpass-signature"
TIMESTAMP_HEADER = b"clickpass-timestamp"
EVENT_ID_HEADER = b"clickpass-event-id"

log = Logger()


@dataclass
class User:
    username: str
    password: str
    email: str = ""
    fullname: str = ""
    identifier: str = ""
    created_by: str = "local"


@dataclass
class State:
    """Everything the example keeps (in memory)."""

    users: dict[str, User] = field(default_factory=dict)
    identifiers: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    webhook_events: list[dict[str, Any]] = field(default_factory=list)
    seen_event_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def page(title: str, body: str, provider: str = "") -> bytes:
    head = ""
    if provider:
        head = f'<link rel="stylesheet" href="{html.escape(provider)}static/clickpass-button.css">'
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title>{head}</head><body>"
        f"<header><a href='/'>Example Partner</a></header><main>{body}</main></body></html>"
    ).encode()


class PartnerSite(Resource):
    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        public_url: str,
        provider: str,
        webhook_secret: str,
        name: str = "Example Partner",
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.public_url = public_url if public_url.endswith("/") else public_url + "/"
        self.provider = provider if provider.endswith("/") else provider + "/"
        self.webhook_secret = webhook_secret
        self.name = name
        self.verification_token = ""
        self.state = State()
        self.store = MemoryStore()

    # Plumbing.

    def _thread(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def session(self, request: Request) -> dict[str, Any]:
        token = (request.getCookie(SESSION_COOKIE) or b"").decode("ascii", "replace")
        found = self.state.sessions.get(token)
        if found is None:
            token = secrets.token_urlsafe(16)
            found = {}
            self.state.sessions[token] = found
            request.addCookie(
                SESSION_COOKIE, token.encode(), path=b"/", httpOnly=True, sameSite="lax"
            )
        return found

    def url(self, path: str) -> str:
        return self.public_url + path.lstrip("/")

    def current_url(self, request: Request) -> str:
        return self.public_url.rstrip("/") + request.uri.decode("utf-8")

    def arg(self, request: Request, name: str) -> str:
        values = (request.args or {}).get(name.encode(), [b""])
        return str(values[0].decode("utf-8", "replace"))

    def redirect(self, request: Request, url: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", url.encode())
        return b""

    def html(self, request: Request, title: str, body: str, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return page(title, body, self.provider)

    def signed_in(self, request: Request) -> User | None:
        name = self.session(request).get("user")
        return self.state.users.get(str(name)) if name else None

    # Dispatch.

    def render(self, request: Request) -> int | bytes:
        path = request.path.decode("utf-8", "replace")
        method = request.method.decode()
        routes: dict[tuple[str, str], Callable[[Request], Any]] = {
            ("GET", "/"): self.home,
            ("GET", "/xrds"): self.xrds,
            ("GET", "/login/clickpass"): self.login,
            ("GET", "/return"): self.openid_return,
            ("GET", "/register"): self.openid_return,
            ("GET", "/connect"): self.openid_return,
            ("POST", "/connect"): self.connect_signin,
            ("POST", "/signin"): self.local_signin,
            ("POST", "/signout"): self.signout,
            ("POST", "/webhooks/clickpass"): self.webhook,
            ("GET", "/webhooks/events"): self.webhook_events,
            ("GET", "/.well-known/clickpass-verification.txt"): self.verification,
        }
        handler = routes.get((method, path))
        if handler is None:
            request.setResponseCode(404)
            return b"not found\n"
        result = handler(request)
        if not isinstance(result, Deferred):
            return bytes(result)

        def finish(body: bytes) -> None:
            if not request.finished:
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            log.failure("partner site error", failure)
            if not request.finished:
                request.setResponseCode(500)
                request.write(b"error\n")
                request.finish()

        result.addCallbacks(finish, failed)
        return NOT_DONE_YET

    # Pages.

    def home(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode()
        if "application/xrds+xml" in accept:
            return self.xrds(request)
        request.setHeader(b"x-xrds-location", self.url("xrds").encode())
        user = self.signed_in(request)
        notice = html.escape(self.session(request).pop("notice", ""))
        notice_html = f"<p id='notice'>{notice}</p>" if notice else ""
        if user is not None:
            body = (
                f"{notice_html}<h1>Example Partner</h1>"
                "<p id='welcome'>Signed in as <strong id='current-user'>"
                f"{html.escape(user.username)}</strong> ({html.escape(user.email)})</p>"
                "<form method='post' action='/signout'>"
                "<button id='signout'>Sign out</button></form>"
            )
        else:
            body = (
                f"{notice_html}<h1>Example Partner</h1>"
                "<p><a href='/login/clickpass' id='clickpass-login' data-clickpass-button "
                "data-clickpass-next>Sign in with Clickpass</a></p>"
                f"<script src='{html.escape(self.provider)}static/clickpass-button.js' async>"
                "</script>"
                "<h2>Or sign in with your Example Partner password</h2>"
                "<form method='post' action='/signin'>"
                "<label>Username <input name='username'></label> "
                "<label>Password <input name='password' type='password'></label> "
                "<button>Sign in</button></form>"
            )
        return self.html(request, "Example Partner", body)

    def xrds(self, request: Request) -> bytes:
        uris = "".join(
            f"<Service><Type>http://specs.openid.net/auth/2.0/return_to</Type>"
            f"<URI>{html.escape(self.url(p))}</URI></Service>"
            for p in ("return", "register", "connect")
        )
        request.setHeader(b"content-type", b"application/xrds+xml")
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<xrds:XRDS xmlns:xrds="xri://$xrds" xmlns="xri://$xrd*($v*2.0)"><XRD>'
            f"{uris}</XRD></xrds:XRDS>\n"
        ).encode()

    def login(self, request: Request) -> Deferred[bytes]:
        session = self.session(request)
        immediate = self.arg(request, "immediate") == "1"
        next_url = self.arg(request, "next")
        if next_url.startswith("/") and not next_url.startswith("//"):
            session["next"] = next_url
        oid_session = session.setdefault("openid", {})

        def begin() -> str:
            c = consumer.Consumer(oid_session, self.store)
            auth = c.begin(self.provider)
            auth.addExtension(sreg.SRegRequest(optional=["email", "nickname", "fullname"]))
            url: str = auth.redirectURL(self.public_url, self.url("return"), immediate=immediate)
            return url

        return self._thread(begin).addCallback(lambda url: self.redirect(request, url))

    def openid_return(self, request: Request) -> Deferred[bytes]:
        session = self.session(request)
        oid_session = session.setdefault("openid", {})
        query = {
            k.decode(): v[0].decode("utf-8", "replace") for k, v in (request.args or {}).items()
        }
        current = self.current_url(request)

        def complete() -> Any:
            return consumer.Consumer(oid_session, self.store).complete(query, current)

        return self._thread(complete).addCallback(lambda r: self._completed(request, r))

    def _completed(self, request: Request, response: Any) -> bytes:
        session = self.session(request)
        if response.status == consumer.SETUP_NEEDED:
            return self.redirect(
                request, "/login/clickpass?" + urlencode({"next": session.get("next", "/")})
            )
        if response.status == consumer.CANCEL:
            session["notice"] = "You cancelled signing in with Clickpass."
            return self.redirect(request, "/")
        if response.status != consumer.SUCCESS:
            message = getattr(response, "message", "") or response.status
            return self.html(
                request, "Sign-in failed", f"<p id='error'>{html.escape(str(message))}</p>", 400
            )
        identifier = str(response.identity_url)
        extra = response.extensionResponse(CLICKPASS_NS, True) or {}
        outcome = extra.get("outcome", "")
        profile = sreg.SRegResponse.fromSuccessResponse(response) or {}
        known = self.state.identifiers.get(identifier)
        if known is not None:
            session["user"] = known
            return self.redirect(request, session.pop("next", "/"))
        if outcome == "register":
            user = self._create_user(dict(profile.items()) if profile else {}, identifier)
            session["user"] = user.username
            session["notice"] = f"Welcome, {user.username}: your account was created."
            return self.redirect(request, session.pop("next", "/"))
        # connect, or a login we do not know (an earlier connect was not finished).
        session["pending_identifier"] = identifier
        return self._connect_form(request, "")

    def _connect_form(self, request: Request, error: str, status: int = 200) -> bytes:
        error_html = f"<p id='error' role='alert'>{html.escape(error)}</p>" if error else ""
        return self.html(
            request,
            "Connect your account",
            "<h1>Connect your Example Partner account</h1>"
            "<p>Sign in with your Example Partner password once; from then on Clickpass "
            f"signs you in.</p>{error_html}"
            "<form method='post' action='/connect'>"
            "<label>Username <input name='username' id='username'></label> "
            "<label>Password <input name='password' id='password' type='password'></label> "
            "<button id='connect-signin'>Sign in and connect</button></form>",
            status,
        )

    def _create_user(self, profile: dict[str, str], identifier: str) -> User:
        base = (profile.get("nickname") or profile.get("email", "user").split("@")[0]).strip()
        base = "".join(c for c in base if c.isalnum() or c in "-_.")[:32] or "user"
        with self.state.lock:
            username = base
            n = 1
            while username in self.state.users:
                n += 1
                username = f"{base}{n}"
            user = User(
                username,
                secrets.token_urlsafe(12),
                profile.get("email", ""),
                profile.get("fullname", ""),
                identifier,
                "clickpass",
            )
            self.state.users[username] = user
            self.state.identifiers[identifier] = username
        return user

    def connect_signin(self, request: Request) -> bytes:
        session = self.session(request)
        identifier = session.get("pending_identifier")
        if not identifier:
            return self.html(
                request, "Connect", "<p id='error'>Start again from Clickpass.</p>", 400
            )
        user = self.state.users.get(self.arg(request, "username"))
        if user is None or not hmac.compare_digest(user.password, self.arg(request, "password")):
            return self._connect_form(request, "Wrong username or password.", 401)
        with self.state.lock:
            if user.identifier:
                self.state.identifiers.pop(user.identifier, None)
            user.identifier = identifier
            self.state.identifiers[identifier] = user.username
        session.pop("pending_identifier", None)
        session["user"] = user.username
        session["notice"] = "Your account is now connected to Clickpass."
        return self.redirect(request, session.pop("next", "/"))

    def local_signin(self, request: Request) -> bytes:
        user = self.state.users.get(self.arg(request, "username"))
        if user is None or not hmac.compare_digest(user.password, self.arg(request, "password")):
            return self.html(
                request, "Sign in", "<p id='error'>Wrong username or password.</p>", 401
            )
        self.session(request)["user"] = user.username
        return self.redirect(request, "/")

    def signout(self, request: Request) -> bytes:
        self.session(request).pop("user", None)
        return self.redirect(request, "/")

    # Webhooks.

    def webhook(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read(256 * 1024)
        timestamp = (request.getHeader(TIMESTAMP_HEADER) or b"").decode()
        given = (request.getHeader(SIGNATURE_HEADER) or b"").decode()
        if self.webhook_secret:
            expected = (
                "sha256="
                + hmac.new(
                    self.webhook_secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
                ).hexdigest()
            )
            fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
            if not fresh or not hmac.compare_digest(expected, given):
                request.setResponseCode(401)
                return b"bad signature\n"
        try:
            event = json.loads(body)
        except ValueError:
            request.setResponseCode(400)
            return b"bad json\n"
        with self.state.lock:
            # At least once: the same event may come twice; its id says so.
            if event.get("id") not in self.state.seen_event_ids:
                self.state.seen_event_ids.add(event.get("id"))
                self.state.webhook_events.append(event)
                if event.get("type") in ("user.unlinked", "user.deleted"):
                    identifier = event.get("data", {}).get("identifier", "")
                    username = self.state.identifiers.pop(identifier, None)
                    if username in self.state.users:
                        self.state.users[username].identifier = ""
        request.setHeader(b"content-type", b"application/json")
        return b'{"ok": true}\n'

    def verification(self, request: Request) -> bytes:
        """The realm-ownership token from the Clickpass partner console, if given."""
        token = self.verification_token
        if not token:
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{token}\n".encode()

    def webhook_events(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        with self.state.lock:
            return json.dumps(self.state.webhook_events).encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.partner_site")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--public-url", default="", help="default: http://HOST:PORT/")
    parser.add_argument("--provider", default="http://127.0.0.1:8080/", help="Clickpass URL")
    parser.add_argument("--webhook-secret", default="", help="whsec_... from the console")
    parser.add_argument(
        "--user", action="append", default=[], help="seed an account NAME:PASSWORD[:EMAIL]"
    )
    parser.add_argument("--name", default="Example Partner")
    parser.add_argument(
        "--verification-token",
        default="",
        help="clickpass-verify-... from the console, served at /.well-known/",
    )
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    public_url = args.public_url or f"http://{args.host}:{args.port}/"
    site = PartnerSite(reactor, public_url, args.provider, args.webhook_secret, args.name)
    site.verification_token = args.verification_token
    for spec in args.user:
        name, _, rest = spec.partition(":")
        password, _, email = rest.partition(":")
        site.state.users[name] = User(name, password, email)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    from twisted.internet.endpoints import TCP4ServerEndpoint

    TCP4ServerEndpoint(reactor, args.port, interface=args.host).listen(Site(site))
    log.info("example partner site ready at {url}", url=public_url)
    # What to enter in the partner console (docs/partner-guide.md, the local trial).
    log.info(
        "register it in the Clickpass partner console ({provider}partners) with realm {url}, "
        "return_to {url}return?*, registration URL {url}register, connect URL {url}connect, "
        "webhook URL {url}webhooks/clickpass",
        provider=site.provider,
        url=public_url,
    )
    if not args.verification_token:
        log.warn("no --verification-token: the console's Verify cannot succeed for this realm")
    if not args.webhook_secret:
        log.warn("no --webhook-secret: webhooks are accepted without checking their signature")
    reactor.run()

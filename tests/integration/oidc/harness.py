"""
The OpenID Connect provider's test harness: a node with partner sites and
clients, and a person whose browser signs in and consents, so a test (or
a relying-party library) gets the redirect back with its code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests

from clickpass import config as configmod
from clickpass.openid.identifiers import sector_of
from clickpass.partners import sites
from clickpass.storage.offline import open_direct
from clickpass.storage.sql import Transaction
from tests.support.browser import Browser, csrf_token
from tests.support.node import NodeProcess

PASSWORD = "correct horse battery"
HIDDEN = re.compile(r'name="(payload|mac)" value="([^"]*)"')
# The consent page's ticked boxes: what a browser sends unless the person unticks them.
SHARE = re.compile(r'name="share" value="([^"]*)" checked')


def pkce_pair() -> tuple[str, str]:
    """A code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


@dataclass
class Client:
    client_id: str
    secret: str
    redirect_uri: str
    site: str
    public: bool


class Provider:
    """A running node, and what the tests make in it."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.url = node.url
        self.issuer = node.url.rstrip("/")
        self._admin: int | None = None

    def run(self, fn: Any, *args: Any) -> Any:
        """Run C{fn(tx, *args)} in the node's database, as an operator's tool would."""
        assert self.node.config is not None
        storage = open_direct(configmod.load(self.node.config))
        try:
            return storage.run_blocking(fn, *args)
        finally:
            storage.close()

    def admin(self) -> int:
        if self._admin is None:
            email = f"admin-{secrets.token_hex(4)}@example.com"
            self.node.ctl("user", "add", email, "--password-stdin", input=PASSWORD + "\n")
            self._admin = int(
                self.run(lambda tx: tx.scalar("SELECT id FROM accounts WHERE email = ?", email))
            )
        return self._admin

    def site(self, realm: str) -> sites.Site:
        """A partner site whose realm is C{realm} (the one already on its host, if any)."""
        settings = sites.SiteSettings(
            name="Test Partner", logo_url="", realm=realm, return_to_urls=(realm,),
            registration_url="", connect_url="", requested_fields=(), required_fields=(),
            webhook_url="",
        )  # fmt: skip
        admin = self.admin()

        def create(tx: Transaction) -> sites.Site:
            # One site per host: a second registration would replace the first.
            found = sites.site_by_sector(tx, sector_of(realm))
            if found is not None:
                return found
            return sites.create_site(tx, settings, admin, int(time.time()))

        made: sites.Site = self.run(create)
        return made

    def verified_site_with_key(self, realm: str) -> tuple[sites.Site, str]:
        """A partner site with a verified realm, and an API key of it."""
        site = self.site(realm)
        admin = self.admin()

        def verify_and_key(tx: Transaction) -> str:
            now = int(time.time())
            tx.execute(
                "UPDATE partner_verifications SET verified = ? WHERE site_id = ?", now, site.id
            )
            return sites.create_key(tx, site.id, admin, "oidc registration", now)

        key: str = self.run(verify_and_key)
        return site, key

    def client(
        self,
        redirect_uri: str,
        public: bool = False,
        alg: str = "RS256",
        site: str | None = None,
        more_uris: tuple[str, ...] = (),
        jwks: dict[str, Any] | None = None,
        post_logout_uris: tuple[str, ...] = (),
        backchannel_logout_uri: str = "",
    ) -> Client:
        """A client registered with clickpass-ctl (a new site for it unless given one)."""
        if site is None:
            parts = urlsplit(redirect_uri)
            site = self.site(f"{parts.scheme}://{parts.netloc}/").public_id
        args = ["--json", "oidc", "clients", "add", site, "--alg", alg]
        for uri in (redirect_uri, *more_uris):
            args += ["--redirect-uri", uri]
        if public:
            args.append("--public")
        for uri in post_logout_uris:
            args += ["--post-logout-uri", uri]
        if backchannel_logout_uri:
            args += ["--backchannel-logout-uri", backchannel_logout_uri]
        if jwks is not None:
            path = self.node.workdir / f"jwks-{secrets.token_hex(4)}.json"
            path.write_text(json.dumps(jwks))
            args += ["--jwks", str(path)]
        made = json.loads(self.node.ctl(*args).stdout)
        return Client(made["client_id"], made["client_secret"], redirect_uri, site, public)

    def jwks(self) -> dict[str, Any]:
        document: dict[str, Any] = requests.get(self.url + "oidc/jwks", timeout=30).json()
        return document

    def authorize_url(self, client: Client, **params: str) -> str:
        query = {
            "client_id": client.client_id,
            "redirect_uri": client.redirect_uri,
            "response_type": "code",
            "scope": "openid",
            **params,
        }
        return self.url + "oidc/authorize?" + urlencode(query)

    def token(self, client: Client | None, auth: str = "basic", **params: str) -> requests.Response:
        """POST to the token endpoint as C{client} (client_secret_basic/post or none)."""
        return self.post("oidc/token", client, auth, **params)

    def post(
        self, path: str, client: Client | None, auth: str = "basic", **params: str
    ) -> requests.Response:
        headers = {}
        if client is not None and auth == "basic" and not client.public:
            raw = f"{client.client_id}:{client.secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        elif client is not None and auth == "post" and not client.public:
            params = {"client_id": client.client_id, "client_secret": client.secret, **params}
        elif client is not None:
            params = {"client_id": client.client_id, **params}
        return requests.post(self.url + path, data=params, headers=headers, timeout=30)


class Person:
    """Someone with a browser and a Clickpass account."""

    def __init__(self, provider: Provider, verify: bool = True) -> None:
        self.provider = provider
        self.email = f"p{secrets.token_hex(4)}@example.com"
        self.browser = Browser(provider.url)
        self.signed_up = False
        # Whether the person confirms the mailed link after signing up.
        self.verify = verify

    def open(self, url: str) -> requests.Response:
        return self.browser.session.get(url, allow_redirects=False, timeout=30)

    def sign_in_from(self, response: requests.Response) -> requests.Response:
        """At a redirect to the sign-in page: sign up (or in), land on the next page."""
        location = response.headers["location"]
        assert location.startswith("/signin?"), location
        next_url = query_of(location)["next"]
        fields = {"email": self.email, "password": PASSWORD, "next": next_url}
        if not self.signed_up:
            # Sign-up signs nobody in: it confirms the mailed link, then signs in.
            self.signed_up = True
            done = self.browser.sign_up(self.email, PASSWORD, verify=self.verify)
            assert done.ok, done.text[:2000]
        return self.browser.submit("/signin", "/signin", fields, allow_redirects=False)

    def consent(
        self,
        page: requests.Response,
        decision: str = "allow",
        share: Iterable[str] | None = None,
        always_ask: bool = False,
    ) -> requests.Response:
        """
        Answer a consent page as a browser would: the boxes ticked are
        C{share} (every box the page ticked, when L{None}); return the
        provider's response (not followed).
        """
        assert page.status_code == 200, page.text
        fields: dict[str, Any] = {
            name: html.unescape(value) for name, value in HIDDEN.findall(page.text)
        }
        assert set(fields) == {"payload", "mac"}, page.text
        assert 'name="choosing" value="yes"' in page.text, page.text
        fields["choosing"] = "yes"
        fields["csrf_token"] = csrf_token(page.text)
        fields["decision"] = decision
        fields["share"] = list(SHARE.findall(page.text) if share is None else share)
        if always_ask:
            fields["always_ask"] = "yes"
        return self.browser.session.post(
            self.provider.url + "oidc/decide", data=fields, allow_redirects=False, timeout=30
        )

    def authorize(
        self,
        url: str,
        decision: str = "allow",
        share: Iterable[str] | None = None,
        always_ask: bool = False,
    ) -> str:
        """Open an authorization URL, sign in and consent as asked; return where it sends back."""
        response = self.open(url)
        for _ in range(5):
            if response.status_code in (302, 303) and response.headers["location"].startswith(
                "/signin?"
            ):
                response = self.sign_in_from(response)
                continue
            if response.status_code == 303 and response.headers["location"].startswith("/oidc/"):
                response = self.open(self.provider.url + response.headers["location"][1:])
                continue
            if response.status_code == 200 and 'action="/oidc/decide"' in response.text:
                response = self.consent(response, decision, share, always_ask)
                continue
            break
        assert response.status_code == 302, (response.status_code, response.text[:2000])
        return str(response.headers["location"])

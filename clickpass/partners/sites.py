"""
Partner sites and everything the database keeps about them: their
settings, admins and admin invitations, API keys (only hashes), the people
linked to them, the webhook outbox and deletion requests (and, when a site
is deleted, its OpenID Connect clients' rows).

Transactions for the storage's pool (C{storage.run(fn, *args)}) plus the
pure checks of a site's settings. A link change and the webhook event
that announces it are written in one transaction, so an event is never
lost or invented. Nothing here renders pages or sends anything: the web
layer and the delivery service do.

Never store an API key, an admin invitation's token or a webhook secret in
clear: keys and tokens are stored as SHA-256 hashes, webhook secrets are
derived from the master secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from openid.server.trustroot import TrustRoot

from clickpass.i18n import N_, Text, part
from clickpass.openid.hardening import BadURL, normalised_url, wildcard_too_broad
from clickpass.openid.identifiers import BadRealm, sector_of
from clickpass.partners import fields, verification
from clickpass.storage.sql import Transaction

OUTCOMES = ("register", "connect", "login")
EVENT_TYPES = ("user.linked", "user.unlinked", "user.deleted")
KEY_PREFIX = "cpk_"
WEBHOOK_SECRET_PURPOSE = b"partner webhook secret"
MAX_RETURN_TOS = 20
MAX_URL = 2048
# A registered return_to ending in this accepts any query string on its path.
ANY_QUERY = "?*"
# Characters refused in every setting: C0/C1 controls (NUL included), lone
# surrogates (they cannot be stored as UTF-8), and the bidirectional
# overrides and isolates that make a name read differently from its bytes.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# Event states in the outbox.
PENDING, DELIVERED, GIVEN_UP = 0, 1, 2


class SiteError(ValueError):
    """
    A site's settings cannot be used; the message is one sentence for the
    admin, marked for translation (a L{Text}, which C{str()} of the error
    keeps: the console translates it, the partner API shows it as written).
    """

    def __str__(self) -> str:
        message = self.args[0] if self.args else ""
        return message if isinstance(message, str) else super().__str__()

    @property
    def message(self) -> str:
        return str(self)


# What each setting is called in a message about it (C{what}).
SETTING_LABELS = {
    "name": N_("name"),
    "logo URL": N_("logo URL"),
    "realm": N_("realm"),
    "return_to URL": N_("return_to URL"),
    "registration URL": N_("registration URL"),
    "connect URL": N_("connect URL"),
    "webhook URL": N_("webhook URL"),
    "profile field list": N_("profile field list"),
    "profile field name": N_("profile field name"),
}


def _label(what: str) -> Text:
    """A setting's name in a message: translated where shown, or as given (an API field)."""
    return part(SETTING_LABELS.get(what, what))


def _why(error: Exception) -> Text:
    """An error's message as a parameter of another message, translated with it."""
    message = error.args[0] if error.args else ""
    return part(message if isinstance(message, str) else str(message))


@dataclass(frozen=True)
class SiteSettings:
    """What an admin sets for a site (validated)."""

    name: str
    logo_url: str
    realm: str
    return_to_urls: tuple[str, ...]
    registration_url: str
    connect_url: str
    requested_fields: tuple[str, ...]
    required_fields: tuple[str, ...]
    webhook_url: str


@dataclass(frozen=True)
class Site(SiteSettings):
    id: int
    public_id: str
    sector: str
    webhook_secret_version: int
    created: int
    updated: int
    # Realm ownership (clickpass.partners.verification): when it was proven
    # (0: not yet), and the token to publish.
    verified: int = 0
    verification_token: str = ""
    # Whether everyone signing in to this site must give a second factor.
    require_second_factor: bool = False

    def allows_return_to(self, return_to: str) -> bool:
        return return_to_allowed(self.return_to_urls, return_to)

    @property
    def display_name(self) -> str:
        """
        What pages show people for this site: its name once its realm is
        verified, else its host, since anyone may type any name for a host
        they do not own.
        """
        return self.name if self.verified else self.sector

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.public_id,
            "name": self.name,
            "logo_url": self.logo_url,
            "realm": self.realm,
            "return_to_urls": list(self.return_to_urls),
            "registration_url": self.registration_url,
            "connect_url": self.connect_url,
            "requested_fields": list(self.requested_fields),
            "required_fields": list(self.required_fields),
            "webhook_url": self.webhook_url,
            "created": self.created,
            "updated": self.updated,
            "verified": bool(self.verified),
            "require_second_factor": self.require_second_factor,
        }


@dataclass(frozen=True)
class Link:
    site_id: int
    account_id: int
    opaque: str
    outcome: str
    created: int
    last_signin: int


def _url_key(url: str) -> tuple[str, str, int, str | None, str | None, str] | None:
    """
    What two return_to URLs must share to match: scheme and host (as URL
    parsing lowercases them), port (the scheme's default written or not),
    user information, and the path exactly as written ("" is "/").
    L{None} for anything that is not an http(s) URL with a host.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    default = 443 if scheme == "https" else 80
    return (
        scheme,
        parts.hostname,
        port or default,
        parts.username,
        parts.password,
        parts.path or "/",
    )


def return_to_allowed(registered: Iterable[str], return_to: str) -> bool:
    """
    Whether C{return_to} is one of the C{registered} URLs: the same scheme,
    host, port and path (no prefix: C{/return} does not allow
    C{/return/more}), no fragment, and the same query string, unless the
    registered URL ends in C{?*}, which allows any query (or none) on that
    path.
    """
    if "#" in return_to:
        return False
    key = _url_key(return_to)
    if key is None:
        return False
    query = urlsplit(return_to).query
    for entry in registered:
        any_query = entry.endswith(ANY_QUERY)
        base = entry[: -len(ANY_QUERY)] if any_query else entry
        if _url_key(base) != key:
            continue
        if any_query or urlsplit(base).query == query:
            return True
    return False


def plain_text(value: str, what: str) -> str:
    """C{value}, or L{SiteError} when it holds a control character (NUL included)."""
    for c in value:
        if c in _BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Cs"):
            raise SiteError(
                Text(
                    N_("The %(what)s must not contain control characters (%(char)s)."),
                    what=_label(what),
                    char=ascii(c),
                )
            )
    return value


def _http_url(value: str, what: str) -> str:
    value = value.strip()
    if len(value) > MAX_URL:
        raise SiteError(Text(N_("The %(what)s is too long."), what=_label(what)))
    plain_text(value, what)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsed here so that a bad port is refused now
    except ValueError:
        raise SiteError(
            Text(N_("The %(what)s %(value)r is not a URL."), what=_label(what), value=value)
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SiteError(
            Text(N_("The %(what)s must be an http:// or https:// URL."), what=_label(what))
        )
    if parts.fragment:
        raise SiteError(Text(N_("The %(what)s must not have a #fragment."), what=_label(what)))
    if ":" in parts.hostname:
        # Webhook delivery connects to a host name or an IPv4 address only,
        # and the OpenID provider's realm checks read no address literal like
        # [2001:db8::1]: such a URL could never be used.
        raise SiteError(
            Text(
                N_(
                    "The %(what)s cannot use an IPv6 address literal: give a host name "
                    "(or an IPv4 address)."
                ),
                what=_label(what),
            )
        )
    # Stored in the one form the OpenID provider compares against (host
    # percent-decoded, IDNA, lowercase): otherwise a realm written as
    # %76ictim.com would be registered as one host and matched as another.
    try:
        return normalised_url(value)
    except BadURL as e:
        raise SiteError(
            Text(
                N_("The %(what)s %(value)r cannot be used: %(reason)s."),
                what=_label(what),
                value=value,
                reason=_why(e),
            )
        ) from None


def check_settings(form: Mapping[str, Any]) -> SiteSettings:
    """
    Validate what an admin (console form or API) gives for a site. Raise
    L{SiteError} naming the first thing that is wrong.
    """
    name = plain_text(str(form.get("name", "")).strip(), "name")
    if not name or len(name) > 100:
        raise SiteError(N_("Give the site a name of 1 to 100 characters."))
    logo_url = str(form.get("logo_url", "")).strip()
    if logo_url:
        logo_url = _http_url(logo_url, "logo URL")
    realm = _http_url(str(form.get("realm", "")), "realm")
    trust_root = _usable_realm(realm)
    return_tos = _return_tos(form.get("return_to_urls", ""), trust_root, realm)
    registration_url = str(form.get("registration_url", "")).strip()
    if registration_url:
        registration_url = _inside(trust_root, realm, registration_url, "registration URL")
    connect_url = str(form.get("connect_url", "")).strip()
    if connect_url:
        connect_url = _inside(trust_root, realm, connect_url, "connect URL")
    try:
        requested = fields.parse_list(_names(form.get("requested_fields", ())))
        required = fields.parse_list(_names(form.get("required_fields", ())))
    except ValueError as e:
        raise SiteError(
            Text(N_("The profile fields cannot be used: %(reason)s."), reason=_why(e))
        ) from None
    requested = fields.parse_list(set(requested) | set(required))
    webhook_url = str(form.get("webhook_url", "")).strip()
    if webhook_url:
        webhook_url = _http_url(webhook_url, "webhook URL")
    return SiteSettings(
        name,
        logo_url,
        realm,
        return_tos,
        registration_url,
        connect_url,
        requested,
        required,
        webhook_url,
    )


def _usable_realm(realm: str) -> TrustRoot:
    """
    C{realm} parsed, or L{SiteError} when it is no OpenID realm, a wildcard
    too broad, or one no per-site identifier's sector can be taken from.
    """
    trust_root = TrustRoot.parse(realm)
    if trust_root is None or (
        trust_root.wildcard
        and (not trust_root.isSane() or wildcard_too_broad(trust_root.host.lstrip(".")))
    ):
        raise SiteError(Text(N_("The realm %(realm)s is not a usable OpenID realm."), realm=realm))
    try:
        sector_of(realm)
    except BadRealm as e:
        raise SiteError(Text(N_("The realm cannot be used: %(reason)s."), reason=_why(e))) from None
    return trust_root


def _inside(trust_root: TrustRoot, realm: str, url: str, what: str) -> str:
    """C{url} (the site's C{what}) checked, or L{SiteError} if outside C{realm}."""
    url = _http_url(url, what)
    if not trust_root.validateURL(url):
        raise SiteError(
            Text(
                N_("The %(what)s %(url)s is outside the realm %(realm)s."),
                what=_label(what),
                url=url,
                realm=realm,
            )
        )
    return url


def _return_tos(raw: Any, trust_root: TrustRoot, realm: str) -> tuple[str, ...]:
    """
    The site's return_to URLs (a list, or a string of them separated by
    white space), each inside the realm, an exact one or a base with C{?*}
    for any query; duplicates dropped, 1 to C{MAX_RETURN_TOS}.
    """
    if isinstance(raw, str):
        raw = raw.split()
    if not isinstance(raw, list | tuple):
        raise SiteError(N_("The return_to URLs must be a list."))

    def return_to(url: str) -> str:
        url = url.strip()
        if url.endswith(ANY_QUERY):
            base = _inside(trust_root, realm, url[: -len(ANY_QUERY)], "return_to URL")
            if "?" in base:
                raise SiteError(
                    Text(
                        N_(
                            "The return_to URL %(url)s has a query before ?*: register either "
                            "one exact query or ?* for any query."
                        ),
                        url=url,
                    )
                )
            return base + ANY_QUERY
        return _inside(trust_root, realm, url, "return_to URL")

    return_tos = tuple(dict.fromkeys(return_to(str(u)) for u in raw))
    if not return_tos:
        raise SiteError(N_("List at least one return_to URL (where people come back to)."))
    if len(return_tos) > MAX_RETURN_TOS:
        raise SiteError(Text(N_("List at most %(count)d return_to URLs."), count=MAX_RETURN_TOS))
    return return_tos


def _names(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return plain_text(value, "profile field list")
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_text(str(v), "profile field name") for v in value]
    raise SiteError(N_("The profile fields must be a list of names."))


def webhook_secret(master_secret: bytes, public_id: str, version: int) -> str:
    """The key a site's webhooks are signed with; shown to its admins."""
    key = hmac.new(master_secret, b"clickpass key: " + WEBHOOK_SECRET_PURPOSE, hashlib.sha256)
    mac = hmac.new(key.digest(), f"{public_id}:{version}".encode(), hashlib.sha256)
    return "whsec_" + mac.hexdigest()


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# Sites.

_SITE_COLUMNS = (
    "s.id, s.public_id, s.name, s.logo_url, s.realm, s.sector, s.return_to_urls, "
    "s.registration_url, s.connect_url, s.requested_fields, s.required_fields, s.webhook_url, "
    "s.webhook_secret_version, s.created, s.updated, v.verified, v.token, "
    "s.require_second_factor"
)
_SITE_FROM = "partner_sites s LEFT JOIN partner_verifications v ON v.site_id = s.id"


def _site(row: tuple[Any, ...] | None) -> Site | None:
    if row is None:
        return None
    return Site(
        name=str(row[2]),
        logo_url=str(row[3]),
        realm=str(row[4]),
        return_to_urls=tuple(str(row[6]).split()),
        registration_url=str(row[7]),
        connect_url=str(row[8]),
        requested_fields=tuple(f for f in str(row[9]).split(",") if f),
        required_fields=tuple(f for f in str(row[10]).split(",") if f),
        webhook_url=str(row[11]),
        id=int(row[0]),
        public_id=str(row[1]),
        sector=str(row[5]),
        webhook_secret_version=int(row[12]),
        created=int(row[13]),
        updated=int(row[14]),
        verified=int(row[15] or 0),
        verification_token=str(row[16] or ""),
        require_second_factor=bool(row[17]),
    )


def create_site(tx: Transaction, settings: SiteSettings, admin_id: int, now: int) -> Site:
    """Register a site with C{admin_id} as its first admin; L{SiteError} if its realm is taken."""
    sector = sector_of(settings.realm)
    existing = site_by_sector(tx, sector)
    if existing is not None:
        if existing.verified or _has_links(tx, existing.id):
            raise SiteError(
                Text(
                    N_(
                        "Another site is already registered for %(host)s. Ask its admins to "
                        "add you."
                    ),
                    host=sector,
                )
            )
        # An unverified registration does not hold the host: it has no keys
        # in use, no webhooks and no people, and whoever verifies first keeps it.
        _delete_site(tx, existing.id)
    public_id = "site_" + secrets.token_hex(8)
    tx.execute(
        "INSERT INTO partner_sites (public_id, name, logo_url, realm, sector, return_to_urls, "
        "registration_url, connect_url, requested_fields, required_fields, webhook_url, "
        "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        public_id,
        settings.name,
        settings.logo_url,
        settings.realm,
        sector,
        "\n".join(settings.return_to_urls),
        settings.registration_url,
        settings.connect_url,
        ",".join(settings.requested_fields),
        ",".join(settings.required_fields),
        settings.webhook_url,
        now,
        now,
    )
    site_id = tx.scalar("SELECT id FROM partner_sites WHERE public_id = ?", public_id)
    tx.execute(
        "INSERT INTO partner_verifications (site_id, token) VALUES (?, ?)",
        site_id,
        verification.new_token(),
    )
    tx.execute(
        "INSERT INTO partner_admins (site_id, account_id, created) VALUES (?, ?, ?)",
        site_id,
        admin_id,
        now,
    )
    site = site_by_id(tx, int(site_id))
    assert site is not None
    return site


def update_site(tx: Transaction, site: Site, settings: SiteSettings, now: int) -> Site:
    """Change a site's settings. Its realm's host (its sector) cannot change."""
    if sector_of(settings.realm) != site.sector:
        raise SiteError(
            Text(
                N_(
                    "The realm must stay on %(host)s: identifiers belong to that host. "
                    "Register a new site for another host."
                ),
                host=site.sector,
            )
        )
    tx.execute(
        "UPDATE partner_sites SET name = ?, logo_url = ?, realm = ?, return_to_urls = ?, "
        "registration_url = ?, connect_url = ?, requested_fields = ?, required_fields = ?, "
        "webhook_url = ?, updated = ? WHERE id = ?",
        settings.name,
        settings.logo_url,
        settings.realm,
        "\n".join(settings.return_to_urls),
        settings.registration_url,
        settings.connect_url,
        ",".join(settings.requested_fields),
        ",".join(settings.required_fields),
        settings.webhook_url,
        now,
        site.id,
    )
    updated = site_by_id(tx, site.id)
    assert updated is not None
    return updated


def set_require_second_factor(tx: Transaction, site_id: int, required: bool, now: int) -> None:
    """Whether everyone signing in to the site must give a second factor."""
    tx.execute(
        "UPDATE partner_sites SET require_second_factor = ?, updated = ? WHERE id = ?",
        int(required),
        now,
        site_id,
    )


def rotate_webhook_secret(tx: Transaction, site_id: int, now: int) -> None:
    tx.execute(
        "UPDATE partner_sites SET webhook_secret_version = webhook_secret_version + 1, "
        "updated = ? WHERE id = ?",
        now,
        site_id,
    )


def site_by_id(tx: Transaction, site_id: int) -> Site | None:
    return _site(tx.fetchone(f"SELECT {_SITE_COLUMNS} FROM {_SITE_FROM} WHERE s.id = ?", site_id))


def site_by_public_id(tx: Transaction, public_id: str) -> Site | None:
    return _site(
        tx.fetchone(f"SELECT {_SITE_COLUMNS} FROM {_SITE_FROM} WHERE s.public_id = ?", public_id)
    )


def site_by_sector(tx: Transaction, sector: str) -> Site | None:
    return _site(
        tx.fetchone(f"SELECT {_SITE_COLUMNS} FROM {_SITE_FROM} WHERE s.sector = ?", sector)
    )


def _has_links(tx: Transaction, site_id: int) -> bool:
    return tx.scalar("SELECT 1 FROM partner_links WHERE site_id = ? LIMIT 1", site_id) is not None


# The site's OpenID Connect clients, as a subquery. The rows are deleted
# here, not through clickpass.oidc.clients: the OpenID Connect provider
# builds on partner sites (it imports this module), never the other way.
_SITE_CLIENTS = "SELECT client_id FROM oidc_clients WHERE site_id = ?"
_SITE_GRANTS = f"SELECT grant_id FROM oidc_grants WHERE client_id IN ({_SITE_CLIENTS})"


def _delete_oidc_clients(tx: Transaction, site_id: int) -> None:
    """
    Remove the site's OpenID Connect clients and everything issued to them:
    their grants with those grants' codes and tokens (so no token of theirs
    is accepted again), the private_key_jwt assertions seen, the sessions
    they signed into and the back-channel logouts still owed to them (there
    is nobody left to tell).
    """
    for table in ("oidc_tokens", "oidc_codes"):
        tx.execute(f"DELETE FROM {table} WHERE grant_id IN ({_SITE_GRANTS})", site_id)
    for table in ("oidc_grants", "oidc_session_clients", "oidc_client_assertions", "oidc_logouts"):
        tx.execute(f"DELETE FROM {table} WHERE client_id IN ({_SITE_CLIENTS})", site_id)
    tx.execute("DELETE FROM oidc_clients WHERE site_id = ?", site_id)


def _delete_site(tx: Transaction, site_id: int) -> None:
    """Remove a site that nobody is linked to, and everything kept for it."""
    _delete_oidc_clients(tx, site_id)
    for table in (
        "partner_events",
        "partner_deletion_requests",
        "partner_api_keys",
        "partner_admins",
        "partner_invitations",
        "partner_verifications",
    ):
        tx.execute(f"DELETE FROM {table} WHERE site_id = ?", site_id)
    tx.execute("DELETE FROM partner_sites WHERE id = ?", site_id)


def linked_people(tx: Transaction, site_id: int) -> int:
    """How many people have an account at the site linked to Clickpass."""
    return int(tx.scalar("SELECT COUNT(*) FROM partner_links WHERE site_id = ?", site_id) or 0)


def delete_site(tx: Transaction, site_id: int) -> None:
    """
    Delete a site at its admins' request, in one transaction: its links to
    people go with it (their accounts stay, and their account pages no
    longer list the site), its OpenID Connect clients with their grants,
    codes, tokens and sessions, then its keys, events, requests, admins and
    registration.

    Approvals are keyed by realm alone, so which ones the site's existence
    made is read from who used it. The people linked to it gave theirs on
    the partner flow's page, and the people its clients hold grants for gave
    theirs on the OpenID Connect consent page: those approvals of the site's
    host go, as ending one link forgets them (L{unlink}), so nobody is
    signed in to whoever uses the host next without being asked. Anyone
    else's approval of a realm on the host stays: it was given on the
    OpenID 2.0 consent page while the realm was a plain relying party
    (before the site was registered, or while it was unverified), which is
    what the realm is again once the site is gone; the person can forget it
    on their account page. Per-site identifiers stay too: a person's
    identifier at a host never changes.
    """
    site = site_by_id(tx, site_id)
    if site is None:
        return
    accounts = {
        int(account_id)
        for (account_id,) in tx.fetchall(
            "SELECT account_id FROM partner_links WHERE site_id = ? UNION "
            f"SELECT account_id FROM oidc_grants WHERE client_id IN ({_SITE_CLIENTS})",
            site_id,
            site_id,
        )
    }
    for account_id in sorted(accounts):
        _forget_approvals(tx, account_id, site.sector)
    tx.execute("DELETE FROM partner_links WHERE site_id = ?", site_id)
    _delete_site(tx, site_id)


# Realm ownership.


def verification_token(tx: Transaction, site_id: int) -> str:
    """The site's verification token, made now for a site registered before there were any."""
    token = tx.scalar("SELECT token FROM partner_verifications WHERE site_id = ?", site_id)
    if token is None:
        token = verification.new_token()
        tx.execute(
            tx.dialect.insert_ignore()
            + " INTO partner_verifications (site_id, token) VALUES (?, ?)",
            site_id,
            token,
        )
        token = tx.scalar("SELECT token FROM partner_verifications WHERE site_id = ?", site_id)
    return str(token)


def record_verification(
    tx: Transaction, site_id: int, token: str, problem: str | None, now: int
) -> bool:
    """
    Note the outcome of a check of C{token}; true when the site is now
    verified. A check of a token that is no longer the site's changes nothing.
    """
    if problem is None:
        changed = tx.execute(
            "UPDATE partner_verifications SET verified = ?, checked = ?, problem = '' "
            "WHERE site_id = ? AND token = ?",
            now,
            now,
            site_id,
            token,
        )
    else:
        changed = tx.execute(
            "UPDATE partner_verifications SET checked = ?, problem = ? "
            "WHERE site_id = ? AND token = ?",
            now,
            problem[:255],
            site_id,
            token,
        )
    return bool(changed) and problem is None


def verification_problem(tx: Transaction, site_id: int) -> str:
    """Why the last check failed ('' if it did not, or there was none)."""
    value = tx.scalar("SELECT problem FROM partner_verifications WHERE site_id = ?", site_id)
    return str(value or "")


# Admins.


def is_admin(tx: Transaction, site_id: int, account_id: int) -> bool:
    return (
        tx.scalar(
            "SELECT 1 FROM partner_admins WHERE site_id = ? AND account_id = ?",
            site_id,
            account_id,
        )
        is not None
    )


def admin_site(tx: Transaction, public_id: str, account_id: int) -> Site | None:
    """The site C{public_id} if C{account_id} administers it (otherwise L{None}, as if absent)."""
    site = site_by_public_id(tx, public_id)
    if site is None or not is_admin(tx, site.id, account_id):
        return None
    return site


def sites_for_admin(tx: Transaction, account_id: int) -> list[Site]:
    rows = tx.fetchall(
        f"SELECT {_SITE_COLUMNS} FROM {_SITE_FROM} JOIN partner_admins a ON a.site_id = s.id "
        "WHERE a.account_id = ? ORDER BY s.name, s.id",
        account_id,
    )
    return [s for s in (_site(r) for r in rows) if s is not None]


@dataclass(frozen=True)
class Admin:
    account_id: int
    email: str


def admins(tx: Transaction, site_id: int) -> list[Admin]:
    rows = tx.fetchall(
        "SELECT a.id, a.email FROM partner_admins p JOIN accounts a ON a.id = p.account_id "
        "WHERE p.site_id = ? ORDER BY a.email",
        site_id,
    )
    return [Admin(int(r[0]), str(r[1])) for r in rows]


def remove_admin(tx: Transaction, site_id: int, account_id: int, now: int) -> str:
    """
    End C{account_id}'s admin rights on the site: "removed", "absent" (not
    an admin of it), or "last" (refused: a site always keeps one admin).
    """
    # Take the site's row lock first, so that two admins removing each other
    # at the same moment are counted one after the other, never both as two.
    tx.execute("UPDATE partner_sites SET updated = ? WHERE id = ?", now, site_id)
    locking = " FOR UPDATE" if tx.dialect.name == "mysql" else ""
    current = {
        int(r[0])
        for r in tx.fetchall(
            "SELECT account_id FROM partner_admins WHERE site_id = ?" + locking, site_id
        )
    }
    if account_id not in current:
        return "absent"
    if len(current) == 1:
        return "last"
    tx.execute(
        "DELETE FROM partner_admins WHERE site_id = ? AND account_id = ?", site_id, account_id
    )
    return "removed"


# Admin invitations: an admin invites an email address; the person who
# holds that address's Clickpass account accepts with the invitation's
# token. Nothing here says whether an account has the address.

INVITATION_PREFIX = "cpi_"
INVITATION_LIFETIME = 7 * 24 * 3600


@dataclass(frozen=True)
class Invitation:
    id: int
    site_id: int
    email: str
    invited_by: int
    created: int
    expires: int


_INVITATION_COLUMNS = "id, site_id, email, invited_by, created, expires"


def _invitation(row: tuple[Any, ...] | None) -> Invitation | None:
    if row is None:
        return None
    return Invitation(int(row[0]), int(row[1]), str(row[2]), int(row[3]), int(row[4]), int(row[5]))


def invite_admin(tx: Transaction, site_id: int, email: str, invited_by: int, now: int) -> str:
    """
    Invite C{email} (already normalised) to administer the site and return
    the invitation's token: only its hash is kept, so this is the one
    chance to pass it on. A new invitation for the same email replaces
    the old one, whose token stops working.
    """
    tx.execute(
        "DELETE FROM partner_invitations WHERE site_id = ? AND (email = ? OR expires <= ?)",
        site_id,
        email,
        now,
    )
    token = INVITATION_PREFIX + secrets.token_urlsafe(32)
    tx.execute(
        "INSERT INTO partner_invitations (site_id, token_hash, email, invited_by, created, "
        "expires) VALUES (?, ?, ?, ?, ?, ?)",
        site_id,
        key_hash(token),
        email,
        invited_by,
        now,
        now + INVITATION_LIFETIME,
    )
    return token


def pending_invitations(tx: Transaction, site_id: int, now: int) -> list[Invitation]:
    rows = tx.fetchall(
        f"SELECT {_INVITATION_COLUMNS} FROM partner_invitations "
        "WHERE site_id = ? AND expires > ? ORDER BY email",
        site_id,
        now,
    )
    return [i for i in (_invitation(r) for r in rows) if i is not None]


def withdraw_invitation(tx: Transaction, site_id: int, invitation_id: int) -> bool:
    return (
        tx.execute(
            "DELETE FROM partner_invitations WHERE id = ? AND site_id = ?",
            invitation_id,
            site_id,
        )
        > 0
    )


def invitation_by_token(tx: Transaction, token: str, now: int) -> tuple[Invitation, Site] | None:
    """The live invitation with C{token}, and its site; L{None} if used, withdrawn or expired."""
    if not token.startswith(INVITATION_PREFIX) or len(token) > 100:
        return None
    invitation = _invitation(
        tx.fetchone(
            f"SELECT {_INVITATION_COLUMNS} FROM partner_invitations "
            "WHERE token_hash = ? AND expires > ?",
            key_hash(token),
            now,
        )
    )
    site = site_by_id(tx, invitation.site_id) if invitation is not None else None
    if invitation is None or site is None:
        return None
    return invitation, site


def accept_invitation(
    tx: Transaction, token: str, account_id: int, account_email: str, now: int
) -> tuple[str, Site | None]:
    """
    Use an invitation: ("accepted", site) once, for the account whose
    email it names; ("other_account", site) for anyone else, leaving it
    for its addressee; ("invalid", None) when it is used, withdrawn or
    expired.
    """
    found = invitation_by_token(tx, token, now)
    if found is None:
        return "invalid", None
    invitation, site = found
    if invitation.email != account_email.strip().lower():
        return "other_account", site
    # Deleting first makes the token single-use even when two requests
    # accept it at once: only the one that deleted the row goes on.
    if not tx.execute("DELETE FROM partner_invitations WHERE id = ?", invitation.id):
        return "invalid", None
    tx.execute(
        tx.dialect.insert_ignore()
        + " INTO partner_admins (site_id, account_id, created) VALUES (?, ?, ?)",
        site.id,
        account_id,
        now,
    )
    return "accepted", site


# API keys.


@dataclass(frozen=True)
class ApiKey:
    id: int
    prefix: str
    label: str
    created: int
    last_used: int
    revoked: int


def create_key(tx: Transaction, site_id: int, account_id: int, label: str, now: int) -> str:
    """Create an API key and return it; only its hash is kept, so this is the one chance."""
    body = secrets.token_urlsafe(32)
    key = f"{KEY_PREFIX}{body}"
    tx.execute(
        "INSERT INTO partner_api_keys (site_id, key_hash, prefix, label, created, created_by) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        site_id,
        key_hash(key),
        key[:12],
        label.strip()[:100],
        now,
        account_id,
    )
    return key


def keys_for_site(tx: Transaction, site_id: int) -> list[ApiKey]:
    rows = tx.fetchall(
        "SELECT id, prefix, label, created, last_used, revoked FROM partner_api_keys "
        "WHERE site_id = ? ORDER BY id",
        site_id,
    )
    return [ApiKey(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]


def revoke_key(tx: Transaction, site_id: int, key_id: int, now: int) -> bool:
    return (
        tx.execute(
            "UPDATE partner_api_keys SET revoked = ? WHERE id = ? AND site_id = ? AND revoked = 0",
            now,
            key_id,
            site_id,
        )
        > 0
    )


def site_for_key(tx: Transaction, hashed: str, now: int) -> Site | None:
    """The site an API key (by hash) belongs to, if the key is live; notes its use."""
    row = tx.fetchone(
        "SELECT id, site_id, last_used FROM partner_api_keys WHERE key_hash = ? AND revoked = 0",
        hashed,
    )
    if row is None:
        return None
    if int(row[2]) < now - 60:
        tx.execute("UPDATE partner_api_keys SET last_used = ? WHERE id = ?", now, row[0])
    return site_by_id(tx, int(row[1]))


# Links between people and sites.

_LINK_COLUMNS = "site_id, account_id, opaque, outcome, created, last_signin"


def _link(row: tuple[Any, ...] | None) -> Link | None:
    if row is None:
        return None
    return Link(int(row[0]), int(row[1]), str(row[2]), str(row[3]), int(row[4]), int(row[5]))


def get_link(tx: Transaction, site_id: int, account_id: int) -> Link | None:
    return _link(
        tx.fetchone(
            f"SELECT {_LINK_COLUMNS} FROM partner_links WHERE site_id = ? AND account_id = ?",
            site_id,
            account_id,
        )
    )


def link_by_opaque(tx: Transaction, site_id: int, opaque: str) -> Link | None:
    return _link(
        tx.fetchone(
            f"SELECT {_LINK_COLUMNS} FROM partner_links WHERE site_id = ? AND opaque = ?",
            site_id,
            opaque,
        )
    )


def create_link(
    tx: Transaction,
    site: Site,
    account_id: int,
    opaque: str,
    identifier: str,
    outcome: str,
    now: int,
) -> bool:
    """Link a person to a site (and announce it); false when they already were."""
    assert outcome in ("register", "connect")
    inserted = tx.execute(
        tx.dialect.insert_ignore() + " INTO partner_links "
        "(site_id, account_id, opaque, outcome, created, last_signin) VALUES (?, ?, ?, ?, ?, ?)",
        site.id,
        account_id,
        opaque,
        outcome,
        now,
        now,
    )
    if inserted:
        enqueue_event(
            tx, site, opaque, "user.linked", {"identifier": identifier, "outcome": outcome}, now
        )
    return inserted > 0


def touch_link(tx: Transaction, site_id: int, account_id: int, now: int) -> None:
    tx.execute(
        "UPDATE partner_links SET last_signin = ? WHERE site_id = ? AND account_id = ?",
        now,
        site_id,
        account_id,
    )


def unlink(tx: Transaction, site: Site, link: Link, identifier: str, by: str, now: int) -> bool:
    """
    End a link (and announce it): the site's remembered approval goes too,
    so the next visit asks again. C{by} is "person" or "partner".
    """
    removed = tx.execute(
        "DELETE FROM partner_links WHERE site_id = ? AND account_id = ?",
        site.id,
        link.account_id,
    )
    if not removed:
        return False
    _forget_approvals(tx, link.account_id, site.sector)
    enqueue_event(tx, site, link.opaque, "user.unlinked", {"identifier": identifier, "by": by}, now)
    return True


def _forget_approvals(tx: Transaction, account_id: int, sector: str) -> None:
    rows = tx.fetchall("SELECT realm FROM approvals WHERE account_id = ?", account_id)
    for (realm,) in rows:
        try:
            same = sector_of(str(realm)) == sector
        except BadRealm:
            same = False
        if same:
            tx.execute(
                "DELETE FROM approvals WHERE account_id = ? AND realm = ?", account_id, realm
            )


def request_deletion(
    tx: Transaction, site: Site, link: Link, identifier: str, now: int
) -> str | None:
    """
    The person asks the site to delete what it holds about them: the link
    ends, and the site gets a deletion request and a C{user.deleted} event.
    Returns the request's id (L{None} if the link was already gone).
    """
    if not unlink(tx, site, link, identifier, "person", now):
        return None
    request_id = "del_" + secrets.token_hex(8)
    tx.execute(
        "INSERT INTO partner_deletion_requests (public_id, site_id, subject, requested) "
        "VALUES (?, ?, ?, ?)",
        request_id,
        site.id,
        link.opaque,
        now,
    )
    enqueue_event(
        tx,
        site,
        link.opaque,
        "user.deleted",
        {"identifier": identifier, "deletion_request": request_id},
        now,
    )
    return request_id


def links_for_account(tx: Transaction, account_id: int) -> list[tuple[Site, Link]]:
    rows = tx.fetchall(
        f"SELECT {_LINK_COLUMNS} FROM partner_links WHERE account_id = ? ORDER BY created",
        account_id,
    )
    found: list[tuple[Site, Link]] = []
    for row in rows:
        link = _link(row)
        assert link is not None
        site = site_by_id(tx, link.site_id)
        if site is not None:
            found.append((site, link))
    return found


def list_links(tx: Transaction, site_id: int, after: str, limit: int) -> list[Link]:
    """A page of a site's links, ordered by opaque identifier, after C{after}."""
    rows = tx.fetchall(
        f"SELECT {_LINK_COLUMNS} FROM partner_links WHERE site_id = ? AND opaque > ? "
        "ORDER BY opaque LIMIT ?",
        site_id,
        after,
        limit,
    )
    return [link for link in (_link(r) for r in rows) if link is not None]


# Deletion requests.


@dataclass(frozen=True)
class DeletionRequest:
    public_id: str
    subject: str
    requested: int
    completed: int


def deletion_requests(
    tx: Transaction, site_id: int, include_completed: bool
) -> list[DeletionRequest]:
    rows = tx.fetchall(
        "SELECT public_id, subject, requested, completed FROM partner_deletion_requests "
        "WHERE site_id = ?" + ("" if include_completed else " AND completed = 0") + " ORDER BY id",
        site_id,
    )
    return [DeletionRequest(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]


def complete_deletion(tx: Transaction, site_id: int, public_id: str, now: int) -> bool | None:
    """Mark a request done: true, false if it already was, L{None} if it is not this site's."""
    row = tx.fetchone(
        "SELECT completed FROM partner_deletion_requests WHERE site_id = ? AND public_id = ?",
        site_id,
        public_id,
    )
    if row is None:
        return None
    if int(row[0]):
        return False
    tx.execute(
        "UPDATE partner_deletion_requests SET completed = ? WHERE site_id = ? AND public_id = ?",
        now,
        site_id,
        public_id,
    )
    return True


# The webhook outbox.


def enqueue_event(
    tx: Transaction, site: Site, subject: str, event_type: str, data: dict[str, Any], now: int
) -> str | None:
    """
    Put an event in the outbox, in the caller's transaction. Sites without
    a webhook URL get none. The body is fixed now, so every retry sends
    the same bytes under the same idempotency id.
    """
    assert event_type in EVENT_TYPES
    if not site.webhook_url:
        return None
    event_id = "evt_" + secrets.token_hex(16)
    body = json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "created": now,
            "site": site.public_id,
            "data": data,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    tx.execute(
        "INSERT INTO partner_events (event_id, site_id, subject, event_type, body, created, "
        "next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
        event_id,
        site.id,
        subject,
        event_type,
        body,
        now,
        now,
    )
    return event_id


@dataclass(frozen=True)
class EventSummary:
    event_id: str
    event_type: str
    created: int
    state: int
    attempts: int
    last_error: str


def recent_events(tx: Transaction, site_id: int, limit: int = 20) -> list[EventSummary]:
    rows = tx.fetchall(
        "SELECT event_id, event_type, created, state, attempts, last_error FROM partner_events "
        "WHERE site_id = ? ORDER BY id DESC LIMIT ?",
        site_id,
        limit,
    )
    return [
        EventSummary(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), str(r[5])) for r in rows
    ]

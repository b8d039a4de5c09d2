"""
Per-site identifiers: every (person, site) pair gets its own opaque
identifier URL under C{/id/}, so two sites can never correlate a person.

The opaque part is a keyed HMAC of the account's internal uid and the
site's sector (the normalised realm host), with a key derived from the
master secret. It is persisted in C{site_identifiers} so that C{/id/<opaque>}
resolves; because it is deterministic, a lost row is rebuilt to the same
value at the person's next sign-in at that site.

This module must never expose the account's uid, id or email in an
identifier, and never derive one identifier for two sectors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

from twisted.internet.interfaces import IReactorTime

from clickpass.i18n import N_, Text
from clickpass.storage.sql import Storage, Transaction, run_through_failover

KEY_PURPOSE = b"openid per-site identifier"
OPAQUE_PATTERN = re.compile(r"^[a-z2-7]{32}$")


class BadRealm(ValueError):
    """
    The realm has no host we can make a sector of; the message (marked for
    translation, a L{Text}) completes a sentence for a person.
    """

    def __str__(self) -> str:
        message = self.args[0] if self.args else ""
        return message if isinstance(message, str) else super().__str__()


def sector_of(realm: str) -> str:
    """
    The sector of a realm: its host, lowercase, without a leading C{*.}
    wildcard or trailing dot, in IDNA (punycode) form. Scheme, port and path
    do not matter: C{https://*.Example.com:8443/a} and C{http://example.com/}
    are one site.
    """
    try:
        host = urlsplit(realm.strip()).hostname
    except ValueError:
        raise BadRealm(Text(N_("%(realm)r is not a URL"), realm=realm)) from None
    if not host:
        raise BadRealm(Text(N_("%(realm)r has no host"), realm=realm))
    host = host.lower().rstrip(".")
    while host.startswith("*."):
        host = host[2:]
    if not host or "*" in host:
        raise BadRealm(Text(N_("%(realm)r has no usable host"), realm=realm))
    if host.isascii():
        # Already an ASCII (or punycode) name or an address literal.
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii").lower()
    except (UnicodeError, idna.IDNAError):
        raise BadRealm(
            Text(N_("%(realm)r has a host that is not a valid domain name"), realm=realm)
        ) from None


def derive_opaque(key: bytes, uid: str, sector: str) -> str:
    """The opaque identifier of account C{uid} at C{sector}: 32 base32 characters."""
    mac = hmac.new(key, uid.encode("utf-8") + b"\x00" + sector.encode("utf-8"), hashlib.sha256)
    return base64.b32encode(mac.digest()[:20]).decode("ascii").lower()


def identifier_url(base_url: str, opaque: str) -> str:
    return base_url + "id/" + opaque


def opaque_from_url(base_url: str, url: str) -> str | None:
    """The opaque part of one of our identifier URLs, or L{None}."""
    prefix = base_url + "id/"
    if not url.startswith(prefix):
        return None
    opaque = url[len(prefix) :]
    return opaque if OPAQUE_PATTERN.match(opaque) else None


@dataclass(frozen=True)
class SiteIdentifier:
    opaque: str
    account_id: int
    sector: str


# C{last_used} is kept to this resolution: a sign-in writes it only when the
# stored value is older, so a person signing in again and again costs reads.
LAST_USED_RESOLUTION = 3600


def last_use_due(last_used: int, now: int) -> bool:
    """Whether a use now must be written (the stored one is L{LAST_USED_RESOLUTION} old)."""
    return last_used <= now - LAST_USED_RESOLUTION


def recorded(tx: Transaction, account_id: int, sector: str) -> tuple[str, int] | None:
    """The recorded identifier of an account at a sector, and its C{last_used}."""
    row = tx.fetchone(
        "SELECT opaque, last_used FROM site_identifiers WHERE account_id = ? AND sector = ?",
        account_id,
        sector,
    )
    return (str(row[0]), int(row[1])) if row is not None else None


def _ensure(tx: Transaction, opaque: str, account_id: int, sector: str, now: int) -> SiteIdentifier:
    # The INSERT comes first: on MariaDB the transaction's snapshot is taken
    # at its first read, which must see a row another worker just inserted.
    tx.execute(
        tx.dialect.insert_ignore() + " INTO site_identifiers "
        "(opaque, account_id, sector, created, last_used) VALUES (?, ?, ?, ?, ?)",
        opaque,
        account_id,
        sector,
        now,
        now,
    )
    last_used = _checked(recorded(tx, account_id, sector), opaque, account_id, sector)
    if last_use_due(last_used, now):
        tx.execute(
            "UPDATE site_identifiers SET last_used = ? WHERE opaque = ?",
            now,
            opaque,
        )
    return SiteIdentifier(opaque, account_id, sector)


def _checked(found: tuple[str, int] | None, opaque: str, account_id: int, sector: str) -> int:
    """The recorded row's C{last_used}, once it holds C{opaque}."""
    if found is None or found[0] != opaque:
        # Either the opaque value belongs to another (account, sector) pair,
        # which a 160-bit HMAC makes practically impossible, or the row for
        # this pair holds a different value: the master secret changed.
        raise IdentifierConflict(
            f"site identifier for account {account_id} at {sector} does not match the "
            "derived value; was the master secret changed?"
        )
    return found[1]


def _lookup(tx: Transaction, opaque: str) -> SiteIdentifier | None:
    row = tx.fetchone(
        "SELECT s.opaque, s.account_id, s.sector FROM site_identifiers s "
        "JOIN accounts a ON a.id = s.account_id WHERE s.opaque = ?",
        opaque,
    )
    if row is None:
        return None
    return SiteIdentifier(str(row[0]), int(row[1]), str(row[2]))


class IdentifierConflict(Exception):
    """A stored identifier disagrees with the derived one."""


class Identifiers:
    """Derives, persists and resolves per-site identifiers."""

    def __init__(
        self, storage: Storage, key: bytes, base_url: str, clock: IReactorTime | None = None
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._key = key
        self.base_url = base_url

    def opaque(self, uid: str, sector: str) -> str:
        return derive_opaque(self._key, uid, sector)

    def url(self, opaque: str) -> str:
        return identifier_url(self.base_url, opaque)

    async def for_site(self, account_id: int, uid: str, realm: str, now: int) -> SiteIdentifier:
        """
        The identifier of an account at the site of C{realm}, recorded (or
        re-recorded after a loss) in the database. Raises L{BadRealm}.
        """
        found = await self._storage.run(recorded, account_id, sector_of(realm))
        return await self.for_site_seen(account_id, uid, realm, now, found)

    async def for_site_seen(
        self, account_id: int, uid: str, realm: str, now: int, found: tuple[str, int] | None
    ) -> SiteIdentifier:
        """
        L{for_site}, given what L{recorded} read for the site's sector (in
        the caller's transaction). The usual case, a site the person signed
        in to within L{LAST_USED_RESOLUTION}, needs nothing more; anything
        else writes.
        """
        sector = sector_of(realm)
        opaque = self.opaque(uid, sector)
        if found is not None and not last_use_due(found[1], now):
            _checked(found, opaque, account_id, sector)
            return SiteIdentifier(opaque, account_id, sector)
        if self._clock is None:
            result: SiteIdentifier = await self._storage.run(
                _ensure, opaque, account_id, sector, now
            )
            return result
        # Deterministic and recorded with INSERT IGNORE: idempotent by key, so
        # a write whose outcome a database failover hid simply runs again.
        return await run_through_failover(
            self._clock, self._storage, _ensure, opaque, account_id, sector, now, idempotent=True
        )

    async def resolve(self, opaque: str) -> SiteIdentifier | None:
        """The recorded identifier for C{opaque}, or L{None}."""
        if not OPAQUE_PATTERN.match(opaque):
            return None
        result: SiteIdentifier | None = await self._storage.run(_lookup, opaque)
        return result

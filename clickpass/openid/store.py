"""
An OpenID store (associations and nonces) in the shared database, so that an
association made by one worker or node verifies on any other.

L{DatabaseOpenIDStore}'s methods are python3-openid's synchronous interface
and are called by the library from worker threads. Each one goes through
L{Storage.run_blocking}, which hands the query to the storage's pool and
waits: they must never be called on the reactor thread (that would
deadlock). Nothing here may import C{openid.store.sqlstore}, which fails to
import without psycopg2.

Signing an assertion, or checking one for a stateless relying party, needs
at most two association reads and a few writes, known in advance. So the
provider does both on the reactor thread instead, against a L{StagedStore}:
the reads are made before (L{DatabaseOpenIDStore.read}), and the writes
after, in one transaction (L{DatabaseOpenIDStore.apply}, or
L{DatabaseOpenIDStore.apply_and_claim} with the nonce claim of a check),
before the answer is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from openid.association import Association
from openid.store.interface import OpenIDStore
from openid.store.nonce import SKEW

from clickpass.storage.sql import Storage, Transaction

_ASSOC_COLUMNS = "handle, secret, issued, lifetime, assoc_type"


def _association(row: tuple[Any, ...]) -> Association:
    handle, secret, issued, lifetime, assoc_type = row
    return Association(str(handle), bytes(secret), int(issued), int(lifetime), str(assoc_type))


def _store_association(tx: Transaction, server_url: str, assoc: Association) -> None:
    # One upsert: delete-then-insert took gap locks on MariaDB, and two
    # stateless assertions signed at once deadlocked on them.
    tx.execute(
        tx.dialect.upsert(
            "openid_associations",
            ("server_url", "handle", "secret", "issued", "lifetime", "assoc_type", "expires"),
            key=("server_url", "handle"),
        ),
        server_url,
        assoc.handle,
        bytes(assoc.secret),
        int(assoc.issued),
        int(assoc.lifetime),
        assoc.assoc_type,
        int(assoc.issued) + int(assoc.lifetime),
    )


def _get_association(
    tx: Transaction, server_url: str, handle: str | None, now: int
) -> Association | None:
    if handle is None:
        row = tx.fetchone(
            f"SELECT {_ASSOC_COLUMNS} FROM openid_associations "
            "WHERE server_url = ? AND expires > ? ORDER BY issued DESC LIMIT 1",
            server_url,
            now,
        )
    else:
        row = tx.fetchone(
            f"SELECT {_ASSOC_COLUMNS} FROM openid_associations WHERE server_url = ? AND handle = ?",
            server_url,
            handle,
        )
    return _association(row) if row is not None else None


def _remove_association(tx: Transaction, server_url: str, handle: str) -> bool:
    return (
        tx.execute(
            "DELETE FROM openid_associations WHERE server_url = ? AND handle = ?",
            server_url,
            handle,
        )
        > 0
    )


def _use_nonce(tx: Transaction, server_url: str, timestamp: int, salt: str) -> bool:
    inserted = tx.execute(
        tx.dialect.insert_ignore()
        + " INTO openid_nonces (server_url, timestamp, salt) VALUES (?, ?, ?)",
        server_url,
        timestamp,
        salt,
    )
    return inserted > 0


def _cleanup_nonces(tx: Transaction, oldest: int) -> int:
    return tx.execute("DELETE FROM openid_nonces WHERE timestamp < ?", oldest)


def _cleanup_associations(tx: Transaction, now: int) -> int:
    return tx.execute("DELETE FROM openid_associations WHERE expires <= ?", now)


Write = tuple[str, str, Association | str]


def _apply(tx: Transaction, writes: list[Write]) -> None:
    for op, server_url, what in writes:
        if op == "store":
            assert isinstance(what, Association)
            _store_association(tx, server_url, what)
        else:
            assert isinstance(what, str)
            _remove_association(tx, server_url, what)


def _read(
    tx: Transaction, keys: list[tuple[str, str]], now: int
) -> dict[tuple[str, str], Association]:
    found = {key: _get_association(tx, *key, now) for key in keys}
    return {key: assoc for key, assoc in found.items() if assoc is not None}


def _apply_and_claim(
    tx: Transaction, writes: list[Write], nonce: tuple[str, int, str], retire: tuple[str, str]
) -> bool:
    _apply(tx, writes)
    if not _use_nonce(tx, *nonce):
        return False
    _remove_association(tx, *retire)
    return True


class StagedStore(OpenIDStore):
    """
    The store that python3-openid's C{Signatory} sees while it signs or
    verifies on the reactor thread: it answers from the associations read
    beforehand (L{DatabaseOpenIDStore.read}) and records the writes, for
    L{DatabaseOpenIDStore.apply}. Nonces are refused: they are claimed in
    the writing transaction (L{DatabaseOpenIDStore.apply_and_claim}).
    """

    def __init__(self, known: dict[tuple[str, str], Association] | None = None) -> None:
        self._known = dict(known or {})
        self.writes: list[Write] = []

    def getAssociation(self, server_url: str, handle: str | None = None) -> Association | None:
        if handle is None:
            return None
        return self._known.get((server_url, handle))

    def storeAssociation(self, server_url: str, association: Association) -> None:
        self._known[(server_url, association.handle)] = association
        self.writes.append(("store", server_url, association))

    def removeAssociation(self, server_url: str, handle: str) -> bool:
        removed = self._known.pop((server_url, handle), None) is not None
        self.writes.append(("remove", server_url, handle))
        return removed

    def useNonce(self, server_url: str, timestamp: int, salt: str) -> bool:
        raise NotImplementedError("a staged store does not check nonces")


class DatabaseOpenIDStore(OpenIDStore):
    """
    python3-openid's C{OpenIDStore} on our L{Storage}. Its library methods
    block: call them only from a thread that is not the reactor's. L{read},
    L{apply} and L{apply_and_claim} are for the reactor thread.
    """

    # Column limits of the schema; longer values are refused, not truncated,
    # so two different keys can never collide.
    MAX_URL = 255
    MAX_HANDLE = 255
    MAX_SALT = 64

    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    def _fits(self, server_url: str, handle: str | None) -> bool:
        if len(server_url) > self.MAX_URL:
            return False
        return handle is None or len(handle) <= self.MAX_HANDLE

    def _nonce_usable(self, server_url: str, timestamp: int, salt: str) -> bool:
        """A nonce within the allowed clock skew, whose key fits the columns."""
        if abs(int(timestamp) - self._now()) > SKEW:
            return False
        return len(salt) <= self.MAX_SALT and self._fits(server_url, None)

    async def read(self, *keys: tuple[str, str]) -> StagedStore:
        """
        From the reactor thread: a L{StagedStore} holding the associations
        of C{keys} (server URL and handle) that exist, read in one transaction.
        """
        wanted = [key for key in keys if self._fits(*key)]
        if not wanted:
            return StagedStore()
        found: dict[tuple[str, str], Association] = await self._storage.run(
            _read, wanted, self._now()
        )
        return StagedStore(found)

    def _checked_writes(self, staged: StagedStore) -> list[Write]:
        for _op, server_url, what in staged.writes:
            handle = what.handle if isinstance(what, Association) else what
            if not self._fits(server_url, handle):
                raise ValueError("association key too long for the store")
        return list(staged.writes)

    async def apply(self, staged: StagedStore) -> None:
        """From the reactor thread: make C{staged}'s writes, in one transaction."""
        writes = self._checked_writes(staged)
        if writes:
            await self._storage.run(_apply, writes)

    async def apply_and_claim(
        self,
        staged: StagedStore,
        nonce_url: str,
        timestamp: int,
        salt: str,
        retire: tuple[str, str],
    ) -> bool:
        """
        From the reactor thread, in one transaction: make C{staged}'s writes,
        claim the nonce (as L{useNonce}), and when the claim succeeds,
        remove the association C{retire}. True if the nonce was claimed.
        """
        if not (self._nonce_usable(nonce_url, timestamp, salt) and self._fits(*retire)):
            await self.apply(staged)
            return False
        claimed: bool = await self._storage.run(
            _apply_and_claim,
            self._checked_writes(staged),
            (nonce_url, int(timestamp), salt),
            retire,
        )
        return claimed

    def storeAssociation(self, server_url: str, association: Association) -> None:
        if not self._fits(server_url, association.handle):
            raise ValueError("association key too long for the store")
        self._storage.run_blocking(_store_association, server_url, association)

    def getAssociation(self, server_url: str, handle: str | None = None) -> Association | None:
        if not self._fits(server_url, handle):
            return None
        assoc: Association | None = self._storage.run_blocking(
            _get_association, server_url, handle, self._now()
        )
        # By handle, an expired association is still returned: the library's
        # Signatory needs its type to replace it, and checks expiry itself.
        return assoc

    def removeAssociation(self, server_url: str, handle: str) -> bool:
        if not self._fits(server_url, handle):
            return False
        removed: bool = self._storage.run_blocking(_remove_association, server_url, handle)
        return removed

    def useNonce(self, server_url: str, timestamp: int, salt: str) -> bool:
        """
        True the first time a (server, timestamp, salt) is seen within the
        allowed clock skew; false for a replay or a stale timestamp.
        """
        if not self._nonce_usable(server_url, timestamp, salt):
            return False
        used: bool = self._storage.run_blocking(_use_nonce, server_url, int(timestamp), salt)
        return used

    def cleanupNonces(self) -> int:
        count: int = self._storage.run_blocking(_cleanup_nonces, self._now() - SKEW)
        return count

    def cleanupAssociations(self) -> int:
        count: int = self._storage.run_blocking(_cleanup_associations, self._now())
        return count


async def cleanup(storage: Storage, now: int) -> tuple[int, int]:
    """
    From the reactor thread: delete stale nonces and expired associations;
    return how many of each.
    """
    nonces: int = await storage.run(_cleanup_nonces, now - SKEW)
    assocs: int = await storage.run(_cleanup_associations, now)
    return nonces, assocs

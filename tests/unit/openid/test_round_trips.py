"""
How many times a sign-in goes to the database: a signed-in person's
checkid_immediate at a site they approved reads everything it needs in one
transaction with their session, and writes only what OpenID itself needs
(a stateless relying party's private association), on both backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import treq
from twisted.internet.defer import Deferred

from clickpass import config as configmod
from clickpass.application import build_site
from clickpass.openid import approvals
from clickpass.storage.sql import AdbapiStorage
from tests.support.deferreds import async_test

REALM = "http://127.0.0.1:9/"
PASSWORD = "correct horse battery"
SELECT = "http://specs.openid.net/auth/2.0/identifier_select"


class CountingStorage:
    """The storage, counting the transactions it is given."""

    def __init__(self, storage: AdbapiStorage) -> None:
        self._storage = storage
        self.dialect = storage.dialect
        self.transactions: list[str] = []

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        self.transactions.append(getattr(fn, "__name__", repr(fn)))
        return self._storage.run(fn, *args)

    def run_blocking(self, fn: Any, *args: Any) -> Any:
        self.transactions.append(getattr(fn, "__name__", repr(fn)))
        return self._storage.run_blocking(fn, *args)

    def describe(self) -> str:
        return self._storage.describe()

    def close(self) -> None:
        self._storage.close()


def _checkid_immediate() -> str:
    return "/openid?" + urlencode(
        {
            "openid.ns": "http://specs.openid.net/auth/2.0",
            "openid.mode": "checkid_immediate",
            "openid.claimed_id": SELECT,
            "openid.identity": SELECT,
            "openid.return_to": REALM + "return",
            "openid.realm": REALM,
        }
    )


@async_test
async def test_a_repeated_sign_in_is_one_read_and_the_association(
    tmp_path: Path, storage_backend: AdbapiStorage, reactor: Any
) -> None:
    """Three sign-ins in a row: what each one runs on the database, in order."""
    settings = configmod.parse({"node": {"data_dir": str(tmp_path)}})
    storage = CountingStorage(storage_backend)
    site = build_site(reactor, settings, storage, b"s" * 32)
    app = site.app
    account = await app.accounts.sign_up("ann@example.org", PASSWORD)
    token = await app.accounts.start_session(account, "192.0.2.1")
    now = int(reactor.seconds())
    await storage.run(approvals.remember, account.id, REALM, frozenset(), now)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}{_checkid_immediate()}"
    cookie: dict[bytes | str, bytes | str] = {"Cookie": f"cp_session={token}"}
    try:
        seen = []
        for _ in range(3):
            del storage.transactions[:]
            response = await treq.get(url, headers=cookie, allow_redirects=False)
            await response.content()
            assert response.code == 302
            location = response.headers.getRawHeaders("location")[0]
            assert "openid.mode=id_res" in location
            seen.append(list(storage.transactions))
    finally:
        await port.stopListening()
    # The first sign-in at the site records its identifier (a write);
    # after that: the session with everything read ahead, then the
    # stateless relying party's private association.
    assert seen[1] == seen[2] == ["_session_account_with", "_apply"], seen
    assert seen[0] == ["_session_account_with", "_ensure", "_apply"], seen

"""
The OpenID store's writes under concurrent load, on both backends: many
signed assertions at once, from two workers' connection pools, each storing
the fresh stateless association it signs with. No caller sees a database
error (on MariaDB, InnoDB deadlocks and lock waits are the storage layer's
business) and every association is kept.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

import pytest
from openid.association import Association

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import ILogObserver, globalLogPublisher

from clickpass.openid.provider import ClickpassSignatory
from clickpass.openid.store import DatabaseOpenIDStore, StagedStore
from clickpass.storage import migrations
from tests.support.deferreds import async_test
from tests.support.storage import DatabaseTarget

pytestmark = pytest.mark.integration

NOW = 1_700_000_000
# What the bench's 16 connections through 2 workers make: up to 8
# transactions at once from each worker's pool.
WORKERS = 2
SIGNATURES = 600


def _stateless_association() -> Association:
    return Association.fromExpiresIn(
        120, "{HMAC-SHA256}" + secrets.token_hex(16), secrets.token_bytes(32), "HMAC-SHA256"
    )


@async_test
async def test_concurrent_stateless_signatures_never_fail(
    database_target: DatabaseTarget,
) -> None:
    """
    600 stateless associations stored at once through two pools of 8
    connections all succeed, and all are kept, without any transaction
    having to run again. Storing each one as
    delete-then-insert made InnoDB deadlocks (gap locks on the
    association's key) that reached the provider as answers of 500.
    """
    pools = [database_target.open() for _ in range(WORKERS)]
    await migrations.migrate(pools[0], NOW)
    stores = [DatabaseOpenIDStore(pool) for pool in pools]
    dumb = ClickpassSignatory._dumb_key
    associations = [_stateless_association() for _ in range(SIGNATURES)]

    async def sign(store: DatabaseOpenIDStore, association: Association) -> None:
        staged = StagedStore()
        staged.storeAssociation(dumb, association)
        await store.apply(staged)

    logged: list[dict[str, Any]] = []
    observer = cast(ILogObserver, logged.append)
    globalLogPublisher.addObserver(observer)
    try:
        results: list[tuple[bool, Any]] = await DeferredList(
            [
                Deferred.fromCoroutine(sign(stores[i % WORKERS], association))
                for i, association in enumerate(associations)
            ],
            consumeErrors=True,
        )
    finally:
        globalLogPublisher.removeObserver(observer)
    failures = [str(r.value) for ok, r in results if not ok]
    assert failures == []
    kept = await pools[0].run(
        lambda tx: tx.scalar("SELECT COUNT(*) FROM openid_associations WHERE server_url = ?", dumb)
    )
    assert kept == SIGNATURES
    # Nor were they saved by running transactions again: an upsert of a
    # new key takes no gap lock, so there was no conflict to retry.
    retried = [e for e in logged if e.get("conflict")]
    assert retried == []

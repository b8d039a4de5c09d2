"""
Back-channel logout on a migrated in-memory SQLite database, a fake clock
and a fake receiver: ended sessions become logouts once, logout tokens
carry what Back-Channel Logout 1.0 asks (verified with joserfc), a down
receiver is retried with backoff, two nodes deliver a logout once, and
what a removed client was owed is forgotten.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any, cast
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from clickpass.oidc import backchannel, clients
from clickpass.partners.settings import PartnersSettings
from clickpass.storage import migrations
from clickpass.storage.sql import Dialect, DirectStorage, OutcomeUnknown, Transaction
from tests.support.logged_errors import ErrorCollector
from tests.support.storage import CommitCut, WritesRefused
from tests.unit.partners.conftest import NOW, make_site

ISSUER = "https://clickpass.example"
RECEIVER = "https://partner.example/backchannel"


class KeySigner:
    """Signs as the provider's keys do (RS256, C{kid} and C{typ} in the header)."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwks = {"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}

    async def sign(
        self, claims: Mapping[str, Any], alg: str = "RS256", typ: str | None = None
    ) -> str:
        headers = {"kid": "k1", **({"typ": typ} if typ else {})}
        return jwt.encode(dict(claims), self.private, algorithm=alg, headers=headers)


class Receiver:
    """A client's back-channel logout URI: refuses until C{up_at} (clock time), then 200."""

    def __init__(self, clock: Clock, up_at: float = 0.0) -> None:
        self.clock = clock
        self.up_at = up_at
        self.attempts: list[float] = []
        self.tokens: list[str] = []
        self.hold: Deferred[int] | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        assert url == RECEIVER
        assert headers["Content-Type"] == "application/x-www-form-urlencoded"
        self.attempts.append(self.clock.seconds())
        if self.hold is not None:
            status = await self.hold
            self.tokens.append(parse_qs(body.decode())["logout_token"][0])
            return status
        if self.clock.seconds() < self.up_at:
            raise ConnectionRefusedError("connection refused")
        (token,) = parse_qs(body.decode(), strict_parsing=True)["logout_token"]
        self.tokens.append(token)
        return 200


@pytest.fixture
def storage() -> Iterator[DirectStorage]:
    storage = DirectStorage(sqlite3.connect(":memory:"), Dialect("sqlite"), "sqlite :memory:")
    for migration in migrations.MIGRATIONS:
        storage.run_blocking(migrations._apply, migration, NOW)
    try:
        yield storage
    finally:
        storage.close()


def make_client(storage: DirectStorage, backchannel_uri: str = RECEIVER) -> clients.Client:
    site = make_site(storage)
    settings = clients.check_settings(
        ["https://partner.example/cb"], backchannel_logout_uri=backchannel_uri
    )
    client, _ = storage.run_blocking(clients.create_client, site.public_id, settings, NOW)
    assert client.backchannel_logout_uri == backchannel_uri
    return client


def start_session(tx: Transaction, token_hash: str, expires: int = NOW + 3600) -> None:
    tx.execute(
        "INSERT INTO sessions (token_hash, account_id, created, expires) VALUES (?, 1, ?, ?)",
        token_hash,
        NOW,
        expires,
    )


def end_session(tx: Transaction, token_hash: str) -> None:
    tx.execute("DELETE FROM sessions WHERE token_hash = ?", token_hash)


def service(
    clock: Clock, storage: Any, receiver: Receiver, signer: KeySigner, **settings: Any
) -> backchannel.BackchannelDelivery:
    values = {
        "webhook_poll_interval": 1.0,
        "webhook_backoff_initial": 5.0,
        "webhook_backoff_max": 60.0,
        "webhook_give_up_after": 3600,
        **settings,
    }
    return backchannel.BackchannelDelivery(
        clock, storage, PartnersSettings(**values), signer, ISSUER, receiver.post
    )


def states(storage: DirectStorage) -> list[tuple[int, int]]:
    rows = storage.run_blocking(
        lambda tx: tx.fetchall("SELECT state, attempts FROM oidc_logouts ORDER BY id")
    )
    return [(int(r[0]), int(r[1])) for r in rows]


def test_the_session_id_is_stable_per_session_and_hides_the_token() -> None:
    """One session has one sid for every client; another session another; not the hash."""
    key = b"k" * 32
    sid = backchannel.session_sid(key, "a" * 64)
    assert sid == backchannel.session_sid(key, "a" * 64)
    assert sid != backchannel.session_sid(key, "b" * 64)
    assert sid != backchannel.session_sid(b"j" * 32, "a" * 64)
    assert len(sid) == 32 and sid not in "a" * 64


def test_an_ended_session_is_queued_once(storage: DirectStorage) -> None:
    """A live session queues nothing; once its row is gone, one logout per client, once."""
    client = make_client(storage)
    storage.run_blocking(start_session, "s1")
    for _ in range(2):  # two codes in one session: one record
        storage.run_blocking(
            backchannel.record_session, "s1", client.client_id, "sid1", "sub1", NOW
        )
    assert storage.run_blocking(backchannel.queue_ended_sessions, NOW + 1) == 0
    storage.run_blocking(end_session, "s1")
    assert storage.run_blocking(backchannel.queue_ended_sessions, NOW + 2) == 1
    # A second node looking right after finds nothing left to queue.
    assert storage.run_blocking(backchannel.queue_ended_sessions, NOW + 2) == 0
    assert states(storage) == [(backchannel.PENDING, 0)]


def test_an_expired_session_is_queued(storage: DirectStorage) -> None:
    """A session past its expiry ends even before housekeeping deletes its row."""
    client = make_client(storage)
    storage.run_blocking(start_session, "s1", NOW + 10)
    storage.run_blocking(backchannel.record_session, "s1", client.client_id, "sid1", "sub1", NOW)
    assert storage.run_blocking(backchannel.queue_ended_sessions, NOW + 9) == 0
    assert storage.run_blocking(backchannel.queue_ended_sessions, NOW + 10) == 1


def test_the_logout_token_says_what_the_spec_asks(storage: DirectStorage) -> None:
    """iss, aud, iat, exp, jti, the event, sub and sid; typ logout+jwt; never a nonce."""
    client = make_client(storage)
    clock, signer = Clock(), KeySigner()
    clock.advance(NOW)
    receiver = Receiver(clock)
    storage.run_blocking(start_session, "s1")
    storage.run_blocking(backchannel.record_session, "s1", client.client_id, "sid1", "sub1", NOW)
    storage.run_blocking(end_session, "s1")
    delivery = service(clock, storage, receiver, signer)
    assert delivery.run_once().result == 1
    (token,) = receiver.tokens
    keys = KeySet.import_key_set(cast(Any, signer.jwks))
    found = jose_jwt.decode(token, keys, algorithms=["RS256"])
    assert found.header == {"alg": "RS256", "kid": "k1", "typ": "logout+jwt"}
    claims = found.claims
    assert claims["iss"] == ISSUER and claims["aud"] == client.client_id
    assert claims["sub"] == "sub1" and claims["sid"] == "sid1"
    assert claims["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
    assert claims["iat"] == NOW and claims["exp"] == NOW + backchannel.LOGOUT_TOKEN_LIFETIME
    assert len(claims["jti"]) >= 16 and "nonce" not in claims
    assert states(storage) == [(backchannel.DELIVERED, 1)]
    # Delivered once: the next round sends nothing.
    assert delivery.run_once().result == 0


def test_a_down_receiver_is_retried_with_backoff(storage: DirectStorage) -> None:
    """Refused at 0, 5 and 15 s (5, 10 s waits); delivered at 35 s, with a fresh jti."""
    client = make_client(storage)
    clock, signer = Clock(), KeySigner()
    clock.advance(NOW)
    receiver = Receiver(clock, up_at=NOW + 30)
    storage.run_blocking(start_session, "s1")
    storage.run_blocking(backchannel.record_session, "s1", client.client_id, "sid1", "sub1", NOW)
    storage.run_blocking(end_session, "s1")
    delivery = service(clock, storage, receiver, signer)
    delivery.startService()
    clock.advance(0)
    for _ in range(40):
        clock.advance(1)
    delivery.stopService()
    assert [t - NOW for t in receiver.attempts] == [0, 5, 15, 35]
    assert states(storage) == [(backchannel.DELIVERED, 4)]
    assert len(receiver.tokens) == 1


def test_a_receiver_down_past_the_give_up_age_is_given_up(storage: DirectStorage) -> None:
    """After the give-up age the logout is given up and never sent again."""
    client = make_client(storage)
    clock, signer = Clock(), KeySigner()
    clock.advance(NOW)
    receiver = Receiver(clock, up_at=NOW + 10_000)
    storage.run_blocking(start_session, "s1")
    storage.run_blocking(backchannel.record_session, "s1", client.client_id, "sid1", "sub1", NOW)
    storage.run_blocking(end_session, "s1")
    delivery = service(clock, storage, receiver, signer, webhook_give_up_after=60)
    delivery.startService()
    for _ in range(300):
        clock.advance(1)
    delivery.stopService()
    assert states(storage)[0][0] == backchannel.GIVEN_UP
    tried = len(receiver.attempts)
    assert tried >= 3 and receiver.tokens == []
    records = storage.run_blocking(backchannel.recent_logouts, client.client_id)
    assert records[0].state == "given up" and "refused" in records[0].last_error


def test_two_nodes_deliver_a_logout_once(storage: DirectStorage) -> None:
    """While one node's attempt is under way, the other node's round finds it leased."""
    client = make_client(storage)
    clock, signer = Clock(), KeySigner()
    clock.advance(NOW)
    receiver = Receiver(clock)
    receiver.hold = Deferred()
    storage.run_blocking(start_session, "s1")
    storage.run_blocking(backchannel.record_session, "s1", client.client_id, "sid1", "sub1", NOW)
    storage.run_blocking(end_session, "s1")
    first = service(clock, storage, receiver, signer)
    second = service(clock, storage, receiver, signer)
    running = first.run_once()
    assert len(receiver.attempts) == 1
    assert second.run_once().result == 0
    receiver.hold.callback(200)
    assert running.result == 1
    assert second.run_once().result == 0
    assert len(receiver.attempts) == 1 and states(storage) == [(backchannel.DELIVERED, 1)]


def queue_one_logout(storage: DirectStorage) -> None:
    client = make_client(storage)
    storage.run_blocking(start_session, "s1")
    storage.run_blocking(backchannel.record_session, "s1", client.client_id, "sid1", "sub1", NOW)
    storage.run_blocking(end_session, "s1")
    storage.run_blocking(backchannel.queue_ended_sessions, NOW)


def test_a_delivery_recorded_only_after_failover_wait_is_sent_once(
    storage: DirectStorage,
) -> None:
    """
    The receiver acknowledged the logout, then no writable primary answers
    for 20 s (twice failover_wait): the node keeps trying to record it
    while it holds the lease and the receiver gets it once.
    """
    queue_one_logout(storage)
    clock, signer = Clock(), KeySigner()
    clock.advance(NOW)
    db = WritesRefused(storage, clock)

    class FailingOver(Receiver):
        async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
            status = await super().post(url, body, headers)
            db.refuse()
            return status

    receiver = FailingOver(clock)
    delivery = service(clock, db, receiver, signer, webhook_timeout=20.0)
    delivery.startService()
    for _ in range(20):
        clock.advance(1)
    assert len(receiver.tokens) == 1 and delivery.unmarked and db.refused >= 2
    db.recover()
    for _ in range(60):
        clock.advance(1)
    delivery.stopService()
    assert len(receiver.attempts) == 1 and not delivery.unmarked
    assert states(storage) == [(backchannel.DELIVERED, 1)]


def test_a_claim_whose_commit_was_cut_holds_nothing_up(
    storage: DirectStorage, logged_errors: ErrorCollector
) -> None:
    """
    A claim applied but answered with a lost connection (that round
    fails) leaves the logout leased to the node: its next round takes it
    again at once instead of waiting out the lease (35 s); another node
    passes it by; sent once.
    """
    queue_one_logout(storage)
    clock, signer = Clock(), KeySigner()
    clock.advance(NOW)
    cut = CommitCut(storage, backchannel.claim)
    receiver, other = Receiver(clock), Receiver(clock)
    first = service(clock, cut, receiver, signer)
    second = service(clock, storage, other, signer)
    first.startService()
    clock.advance(0)
    assert cut.cut == 1 and receiver.attempts == []
    owner = storage.run_blocking(lambda tx: tx.scalar("SELECT lease_owner FROM oidc_logouts"))
    assert owner == first.owner != second.owner
    assert second.run_once().result == 0
    for _ in range(3):
        clock.advance(1)
    first.stopService()
    assert [type(e["log_failure"].value) for e in logged_errors.events] == [OutcomeUnknown]
    assert len(receiver.tokens) == 1 and other.attempts == []
    assert states(storage) == [(backchannel.DELIVERED, 1)]


def test_what_a_removed_client_was_owed_is_forgotten(storage: DirectStorage) -> None:
    """
    Removing a client drops its pending logouts and session records in the
    same transaction: nothing is left for the cleanup, nor for a delivery
    round in between.
    """
    client = make_client(storage)
    storage.run_blocking(start_session, "s1")
    storage.run_blocking(start_session, "s2")
    for token_hash in ("s1", "s2"):
        storage.run_blocking(
            backchannel.record_session, token_hash, client.client_id, "sid", "sub", NOW
        )
    storage.run_blocking(end_session, "s1")
    assert storage.run_blocking(backchannel.queue_ended_sessions, NOW) == 1
    assert storage.run_blocking(clients.remove_client, client.client_id, NOW)
    assert storage.run_blocking(backchannel.waiting) == 0
    assert storage.run_blocking(
        lambda tx: tx.scalar("SELECT COUNT(*) FROM oidc_session_clients")
    ) == 0  # fmt: skip
    assert storage.run_blocking(backchannel.cleanup, NOW) == 0


def test_bad_backchannel_uris_are_refused() -> None:
    """http off loopback, a fragment, not a URL; session_required without a URI."""
    for uri in ("http://partner.example/bc", "https://partner.example/bc#x", "not a url"):
        with pytest.raises(clients.ClientError, match="back-channel logout URI"):
            clients.check_settings(["https://partner.example/cb"], backchannel_logout_uri=uri)
    with pytest.raises(clients.ClientError, match="needs a back-channel logout URI"):
        clients.check_settings(
            ["https://partner.example/cb"], backchannel_logout_session_required=True
        )
    ok = clients.check_settings(
        ["https://partner.example/cb"], backchannel_logout_uri="http://127.0.0.1:9/bc?x=1"
    )
    assert ok.backchannel_logout_uri == "http://127.0.0.1:9/bc?x=1"


def test_a_failure_does_not_free_a_logout_another_node_is_sending(
    storage: DirectStorage,
) -> None:
    """
    One node's failed delivery holds back the client's other logouts, but
    not one that another node holds a live lease on (it may be sending it
    right now): a third node does not take it once the hold ends.
    """
    client = make_client(storage)
    for token in ("s1", "s2"):
        storage.run_blocking(start_session, token)
        storage.run_blocking(
            backchannel.record_session, token, client.client_id, f"sid-{token}", "sub1", NOW
        )
        storage.run_blocking(end_session, token)
    storage.run_blocking(backchannel.queue_ended_sessions, NOW)
    lease = 65
    [mine] = storage.run_blocking(backchannel.claim, NOW + 10, lease, 1, "node-a")
    [theirs] = storage.run_blocking(backchannel.claim, NOW + 10, lease, 1, "node-b")
    assert mine.row_id != theirs.row_id
    storage.run_blocking(
        backchannel.mark_failed, mine, "refused", NOW + 11, NOW + 16, False, "node-a"
    )
    leases = dict(
        storage.run_blocking(
            lambda tx: tx.fetchall(
                "SELECT id, lease_owner FROM oidc_logouts WHERE lease_until > ?", NOW + 11
            )
        )
    )
    assert leases == {theirs.row_id: "node-b"}
    taken = storage.run_blocking(backchannel.claim, NOW + 20, lease, 10, "node-c")
    assert [logout.row_id for logout in taken] == [mine.row_id]

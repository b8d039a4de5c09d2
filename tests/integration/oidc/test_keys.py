"""
The OpenID Connect signing keys on a real database, SQLite and MariaDB:
generated once for a cluster (two nodes at once end with one current key
per algorithm), kept across restarts, sealed at rest, refused under
another master secret, and the tokens they sign verify against the JWKS
document with PyJWT and with joserfc; rotated through a real node's
clickpass-ctl.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from clickpass.oidc import keys
from clickpass.oidc.keys import KeyBox, KeyPolicy, SigningKeys
from clickpass.storage import migrations
from clickpass.storage.sql import AdbapiStorage, Transaction
from tests.support.deferreds import async_test
from tests.support.mariadb import MariaDBServer
from tests.support.node import READY_LINE, running_node
from tests.support.storage import DatabaseTarget

pytestmark = pytest.mark.integration

SECRET = secrets.token_bytes(32)
CLAIMS = {"iss": "https://login.example.com/", "aud": "client-1", "sub": "person"}


async def migrated(target: DatabaseTarget) -> AdbapiStorage:
    storage = target.open()
    await migrations.migrate(storage, 1_700_000_000)
    return storage


def signing_keys(reactor: Any, storage: AdbapiStorage, secret: bytes = SECRET) -> SigningKeys:
    return SigningKeys(reactor, reactor, storage, secret)


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def rows(tx: Transaction) -> list[tuple[Any, ...]]:
    return tx.fetchall(
        "SELECT kid, alg, state, current_for, private_key FROM oidc_signing_keys ORDER BY kid"
    )


@async_test
async def test_two_nodes_generating_the_first_keys_at_once_end_with_one_per_algorithm(
    reactor: Any, database_target: DatabaseTarget
) -> None:
    """
    Two nodes (two connection pools) find no key at the same moment and
    each generates its own: both end up signing with the same current key
    per algorithm, and the database holds just those two keys. Five rounds.
    """
    first = await migrated(database_target)
    second = database_target.open()
    for _ in range(5):
        await first.run(lambda tx: tx.execute("DELETE FROM oidc_signing_keys"))
        a, b = signing_keys(reactor, first), signing_keys(reactor, second)
        seen_a, seen_b = await gatherResults(
            [Deferred.fromCoroutine(a.ensure()), Deferred.fromCoroutine(b.ensure())]
        )
        current_a = {k.alg: k.kid for k in seen_a if k.state == "current"}
        current_b = {k.alg: k.kid for k in seen_b if k.state == "current"}
        assert current_a == current_b
        assert set(current_a) == {"RS256", "ES256"}
        stored = await first.run(rows)
        assert sorted((r[1], r[2], r[3]) for r in stored) == [
            ("ES256", "current", "ES256"),
            ("RS256", "current", "RS256"),
        ]
        assert await a.jwks() == await b.jwks()


@async_test
async def test_keys_survive_a_restart_and_tokens_verify_with_two_libraries(
    reactor: Any, database_target: DatabaseTarget
) -> None:
    """
    Keys made by one pool are the keys of a pool opened later (a restarted
    node); a token signed after the restart, RS256 and ES256, carries the
    kid and verifies against the JWKS document published before it, with
    PyJWT and with joserfc; a tampered token does not.
    """
    before = await migrated(database_target)
    published = await signing_keys(reactor, before).jwks()
    after = database_target.open()
    restarted = signing_keys(reactor, after)
    assert await restarted.jwks() == published
    document = json.loads(json.dumps(published))
    key_set = KeySet.import_key_set(document)
    for alg in keys.ALGORITHMS:
        token = await restarted.sign({**CLAIMS, "exp": int(time.time()) + 60}, alg)
        claims = keys.verify(token, document, audience="client-1", issuer=CLAIMS["iss"])
        assert claims["sub"] == "person"
        decoded = jose_jwt.decode(token, key_set, algorithms=[alg])
        assert decoded.header["alg"] == alg
        assert decoded.header["kid"] in [k["kid"] for k in document["keys"] if k["alg"] == alg]
        assert decoded.claims["sub"] == "person"
        head, _payload, signature = token.split(".")
        forged = f"{head}.{b64(json.dumps({**CLAIMS, 'sub': 'someone else'}))}.{signature}"
        with pytest.raises(BadSignatureError):
            jose_jwt.decode(forged, key_set, algorithms=[alg])
        with pytest.raises(jwt.InvalidSignatureError):
            keys.verify(forged, document)


@async_test
async def test_private_keys_are_not_stored_in_clear(
    reactor: Any, database_target: DatabaseTarget
) -> None:
    """
    The stored private key is neither the PKCS#8 key nor holds its secret
    numbers; it unseals only under the master secret.
    """
    storage = await migrated(database_target)
    made = await signing_keys(reactor, storage).ensure()
    stored = {str(r[0]): bytes(r[4]) for r in await storage.run(rows)}
    for key in made:
        private = keys.load_private_key(key, KeyBox(SECRET))
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        blob = stored[key.kid]
        assert len(blob) >= len(der)
        assert der not in blob
        with pytest.raises(ValueError):
            serialization.load_der_private_key(blob, None)
        if isinstance(private, rsa.RSAPrivateKey):
            secret_prime = private.private_numbers().p.to_bytes(128, "big")
            assert secret_prime not in blob
        else:
            scalar = private.private_numbers().private_value.to_bytes(32, "big")
            assert scalar not in blob


@async_test
async def test_another_master_secret_cannot_sign_and_says_so(
    reactor: Any, database_target: DatabaseTarget
) -> None:
    """
    A node with another master secret reads the published keys but cannot
    unseal a private key: one clear line naming the secret file, nothing
    signed, and no new key generated in its place.
    """
    storage = await migrated(database_target)
    made = await signing_keys(reactor, storage).ensure()
    wrong = signing_keys(reactor, storage, secrets.token_bytes(32))
    with pytest.raises(keys.KeyDecryptionError) as refused:
        await wrong.sign(CLAIMS, "RS256")
    message = str(refused.value)
    assert "\n" not in message
    assert "cannot be decrypted with this node's master secret ([secrets] secret_file)" in message
    assert {r[0] for r in await storage.run(rows)} == {k.kid for k in made}


@async_test
async def test_rotation_publishes_first_then_signs_then_retires(
    reactor: Any, database_target: DatabaseTarget
) -> None:
    """
    On a clock: a rotated key is in the JWKS document while the old key
    still signs (rotating again keeps it); after the publication delay it
    signs and the old one is still published; after the longest token lifetime the old one is gone,
    and a token it signed no longer verifies.
    """
    storage = await migrated(database_target)
    clock = Clock()
    clock.advance(1_800_000_000)
    policy = KeyPolicy(publication_delay=100, longest_token_lifetime=50)
    signer = SigningKeys(reactor, clock, storage, SECRET, policy)
    old_token = await signer.sign(CLAIMS)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    (rotated,) = await signer.rotate(["RS256"])
    assert rotated.created and rotated.key.signs_from == 1_800_000_100
    clock.advance(10)
    (again,) = await signer.rotate(["RS256"])
    assert not again.created and again.key == rotated.key
    assert rotated.key.kid in [k["kid"] for k in (await signer.jwks())["keys"]]
    assert jwt.get_unverified_header(await signer.sign(CLAIMS))["kid"] == old_kid
    clock.advance(90)
    new_token = await signer.sign(CLAIMS)
    assert jwt.get_unverified_header(new_token)["kid"] == rotated.key.kid
    document = await signer.jwks()
    assert keys.verify(old_token, document)["sub"] == "person"
    assert keys.verify(new_token, document)["sub"] == "person"
    clock.advance(50)
    assert await signer.housekeeping(int(clock.seconds())) == 1
    document = await signer.jwks()
    assert old_kid not in [k["kid"] for k in document["keys"]]
    with pytest.raises(jwt.InvalidKeyError):
        keys.verify(old_token, document)
    listed = {k.kid: k.state for k in await signer.all_keys()}
    assert listed[old_kid] == "removed"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)])
def test_clickpass_ctl_lists_and_rotates_the_keys_of_a_real_node(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """
    clickpass-ctl oidc keys list shows one current RS256 and one ES256 key;
    rotate prints each new kid and when it starts signing (a day later);
    list then shows them as next; after a restart the node lists the same
    keys.
    """
    server: MariaDBServer | None = None
    if backend == "mysql":
        server = request.getfixturevalue("mariadb_server")
    with running_node(tmp_path, "", server, "oidc") as node:
        listed = json.loads(node.ctl("--json", "oidc", "keys", "list").stdout)
        assert sorted((k["alg"], k["state"]) for k in listed["keys"]) == [
            ("ES256", "current"),
            ("RS256", "current"),
        ]
        printed = node.ctl("oidc", "keys", "rotate").stdout
        found = re.findall(
            r"^new (RS256|ES256) key (\S+) published; it starts signing at "
            r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)$",
            printed,
            re.MULTILINE,
        )
        assert [f[0] for f in found] == ["RS256", "ES256"], printed
        text = node.ctl("oidc", "keys", "list").stdout
        for _alg, kid, _when in found:
            (line,) = [line for line in text.splitlines() if line.startswith(kid)]
            assert line.split()[1:3] == [_alg, "next"]
        after = json.loads(node.ctl("--json", "oidc", "keys", "list").stdout)
        for key in after["keys"]:
            if key["state"] == "next":
                assert key["signs_from"] == key["created"] + 86400
        bad = node.ctl("oidc", "keys", "rotate", "--alg", "none", check=False)
        assert bad.returncode == 1
        assert bad.stderr.strip() == (
            "clickpass-ctl: unknown signing algorithm 'none'; Clickpass signs with RS256, ES256"
        )
        node.stop()
        restarted_at = len(node.log())
        node.start()
        node.wait_for_log(READY_LINE, after=restarted_at)
        again = json.loads(node.ctl("--json", "oidc", "keys", "list").stdout)
        assert again["keys"] == after["keys"]

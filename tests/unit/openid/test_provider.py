"""The python3-openid server as we configure it: handles, negotiator, check_authentication."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from openid.association import Association
from openid.message import OPENID2_NS, Message
from openid.server.server import CheckAuthRequest, Signatory
from openid.store.memstore import MemoryStore
from openid.store.nonce import mkNonce

from clickpass.database.storage import AdbapiStorage
from clickpass.openid.provider import (
    STATELESS_LIFETIME,
    ClickpassSignatory,
    Provider,
    check_authentication,
    make_handle,
    negotiator_for,
)
from clickpass.openid.store import (
    DatabaseOpenIDStore,
    StagedStore,
    _get_association,
    _store_association,
)
from tests.support.deferreds import async_test

HANDLE = re.compile(r"^\{HMAC-SHA(1|256)\}\{[0-9a-f]+\}\{[A-Za-z0-9_-]+\}$")


def test_handles_are_clean_ascii() -> None:
    """Handles carry no bytes repr (the 3.2.0 bug) and only printable ASCII."""
    handle = make_handle("HMAC-SHA256", 1_700_000_000)
    assert HANDLE.match(handle), handle
    assert "b'" not in handle
    assert make_handle("HMAC-SHA256", 1) != make_handle("HMAC-SHA256", 1)


def test_signatory_uses_clean_handles_and_lifetimes() -> None:
    """Associations get clean handles; stateless ones live briefly."""
    store = MemoryStore()
    signatory = ClickpassSignatory(store)
    signatory.lifetime = 7 * 24 * 3600
    shared = signatory.createAssociation(dumb=False, assoc_type="HMAC-SHA256")
    private = signatory.createAssociation(dumb=True, assoc_type="HMAC-SHA1")
    assert HANDLE.match(shared.handle) and HANDLE.match(private.handle)
    assert shared.lifetime == 7 * 24 * 3600
    assert private.lifetime == STATELESS_LIFETIME
    assert len(shared.secret) == 32 and len(private.secret) == 20
    assert store.getAssociation(Signatory._normal_key, shared.handle) is not None
    assert store.getAssociation(Signatory._dumb_key, private.handle) is not None


def test_no_encryption_only_over_https() -> None:
    """Plain HTTP providers refuse no-encryption sessions; both DH types are allowed."""
    plain = negotiator_for(served_over_tls=False)
    assert not plain.isAllowed("HMAC-SHA1", "no-encryption")
    assert not plain.isAllowed("HMAC-SHA256", "no-encryption")
    for assoc_type, session in (("HMAC-SHA1", "DH-SHA1"), ("HMAC-SHA256", "DH-SHA256")):
        assert plain.isAllowed(assoc_type, session)
    assert plain.getAllowedType() == ("HMAC-SHA256", "DH-SHA256")
    assert negotiator_for(served_over_tls=True).isAllowed("HMAC-SHA256", "no-encryption")


def _assertion(signatory: ClickpassSignatory) -> tuple[Message, Association]:
    assoc = signatory.createAssociation(dumb=True, assoc_type="HMAC-SHA256")
    message = Message.fromOpenIDArgs(
        {
            "ns": OPENID2_NS,
            "mode": "id_res",
            "op_endpoint": "http://op.example/openid",
            "claimed_id": "http://op.example/id/abc",
            "identity": "http://op.example/id/abc",
            "return_to": "http://rp.example/return",
            "response_nonce": mkNonce(),
            "assoc_handle": assoc.handle,
        }
    )
    signed = assoc.signMessage(message)
    return signed, assoc


def _check(store: MemoryStore, signatory: ClickpassSignatory, message: Message) -> str:
    query = message.toPostArgs()
    query["openid.mode"] = "check_authentication"
    request = CheckAuthRequest.fromMessage(Message.fromPostArgs(query))
    response = check_authentication(signatory, store, request)
    return str(response.fields.getArg(OPENID2_NS, "is_valid"))


def test_check_authentication_once() -> None:
    """A genuine assertion checks out once; a second check of it is refused."""
    store = MemoryStore()
    signatory = ClickpassSignatory(store)
    assertion, _ = _assertion(signatory)
    assert _check(store, signatory, assertion) == "true"
    assert _check(store, signatory, assertion) == "false"


def test_tampered_assertion_is_refused_and_spoils_nothing() -> None:
    """A tampered copy is refused, and the genuine assertion still checks out after it."""
    store = MemoryStore()
    signatory = ClickpassSignatory(store)
    assertion, _ = _assertion(signatory)
    tampered = assertion.copy()
    tampered.setArg(OPENID2_NS, "claimed_id", "http://op.example/id/someone-else")
    tampered.setArg(OPENID2_NS, "identity", "http://op.example/id/someone-else")
    assert _check(store, signatory, tampered) == "false"
    assert _check(store, signatory, assertion) == "true"


def test_replay_refused_even_if_the_association_survives() -> None:
    """The nonce claim alone refuses a replay (two workers racing past the library's delete)."""
    store = MemoryStore()
    signatory = ClickpassSignatory(store)
    assertion, assoc = _assertion(signatory)
    assert _check(store, signatory, assertion) == "true"
    store.storeAssociation(Signatory._dumb_key, assoc)  # as if the delete had not happened yet
    assert _check(store, signatory, assertion) == "false"


def test_shared_association_assertions_are_not_checked() -> None:
    """An assertion signed with a shared (stateful) association is never confirmed."""
    store = MemoryStore()
    signatory = ClickpassSignatory(store)
    assoc = signatory.createAssociation(dumb=False, assoc_type="HMAC-SHA256")
    message = Message.fromOpenIDArgs(
        {
            "ns": OPENID2_NS,
            "mode": "id_res",
            "return_to": "http://rp.example/return",
            "identity": "http://op.example/id/abc",
            "claimed_id": "http://op.example/id/abc",
            "response_nonce": mkNonce(),
            "assoc_handle": assoc.handle,
        }
    )
    assert _check(store, signatory, assoc.signMessage(message)) == "false"


# Provider.sign: on the reactor thread, against a store staged around it.

ENDPOINT = "http://op.example/openid"


def _provider(storage: AdbapiStorage) -> Provider:
    return Provider(DatabaseOpenIDStore(storage), ENDPOINT, False, 7 * 24 * 3600)


def _positive_answer(provider: Provider, assoc_handle: str | None) -> Any:
    args = {
        "openid.ns": OPENID2_NS,
        "openid.mode": "checkid_immediate",
        "openid.claimed_id": "http://op.example/id/abc",
        "openid.identity": "http://op.example/id/abc",
        "openid.return_to": "http://rp.example/return",
        "openid.realm": "http://rp.example/",
    }
    if assoc_handle is not None:
        args["openid.assoc_handle"] = assoc_handle
    return provider.decode(args).answer(True)


def _signed_fields(web: Any) -> dict[str, str]:
    query = parse_qs(urlsplit(web.headers["location"]).query)
    return {k: v[0] for k, v in query.items()}


async def _stored(storage: AdbapiStorage, key: str, handle: str) -> Association | None:
    found: Association | None = await storage.run(_get_association, key, handle, 0)
    return found


def _verifies(assoc: Association, fields: dict[str, str]) -> bool:
    return bool(assoc.checkMessageSignature(Message.fromPostArgs(fields)))


@async_test
async def test_sign_stateless_stores_a_private_association(storage_backend: AdbapiStorage) -> None:
    """Without an association, the answer is signed with a new private one, stored first."""
    provider = _provider(storage_backend)
    fields = _signed_fields(await provider.sign(_positive_answer(provider, None)))
    handle = fields["openid.assoc_handle"]
    assoc = await _stored(storage_backend, Signatory._dumb_key, handle)
    assert assoc is not None and assoc.lifetime == STATELESS_LIFETIME
    assert _verifies(assoc, fields)
    assert "openid.invalidate_handle" not in fields


@async_test
async def test_sign_with_a_shared_association(storage_backend: AdbapiStorage) -> None:
    """A live shared association the relying party names signs the answer; nothing is written."""
    provider = _provider(storage_backend)
    shared = Association.fromExpiresIn(
        3600, make_handle("HMAC-SHA256", 1), b"s" * 32, "HMAC-SHA256"
    )
    await storage_backend.run(_store_association, Signatory._normal_key, shared)
    fields = _signed_fields(await provider.sign(_positive_answer(provider, shared.handle)))
    assert fields["openid.assoc_handle"] == shared.handle
    assert _verifies(shared, fields)
    count = await storage_backend.run(
        lambda tx: tx.scalar("SELECT COUNT(*) FROM openid_associations")
    )
    assert count == 1


@async_test
async def test_sign_with_an_unknown_handle(storage_backend: AdbapiStorage) -> None:
    """An unknown handle is invalidated and the answer signed with a new private association."""
    provider = _provider(storage_backend)
    fields = _signed_fields(await provider.sign(_positive_answer(provider, "{HMAC-SHA1}{1}{x}")))
    assert fields["openid.invalidate_handle"] == "{HMAC-SHA1}{1}{x}"
    assoc = await _stored(storage_backend, Signatory._dumb_key, fields["openid.assoc_handle"])
    assert assoc is not None and _verifies(assoc, fields)


@async_test
async def test_sign_with_an_expired_handle(storage_backend: AdbapiStorage) -> None:
    """An expired shared association is removed and replaced by a private one of its type."""
    provider = _provider(storage_backend)
    old = Association(make_handle("HMAC-SHA256", 1), b"s" * 32, 1_000, 60, "HMAC-SHA256")
    await storage_backend.run(_store_association, Signatory._normal_key, old)
    fields = _signed_fields(await provider.sign(_positive_answer(provider, old.handle)))
    assert fields["openid.invalidate_handle"] == old.handle
    assert await _stored(storage_backend, Signatory._normal_key, old.handle) is None
    assoc = await _stored(storage_backend, Signatory._dumb_key, fields["openid.assoc_handle"])
    assert assoc is not None and assoc.assoc_type == "HMAC-SHA256"
    assert _verifies(assoc, fields)


def test_a_staged_store_checks_no_nonces() -> None:
    """The staged store only serves signing; a nonce check on it is a bug, refused loudly."""
    with pytest.raises(NotImplementedError):
        StagedStore(Signatory._normal_key, None).useNonce("x", 1, "salt")


@async_test
async def test_run_blocking_on_the_reactor_thread_raises(storage_backend: AdbapiStorage) -> None:
    """The library's blocking store called on the reactor thread fails at once, not deadlocks."""
    store = DatabaseOpenIDStore(storage_backend)
    with pytest.raises(RuntimeError, match="reactor thread"):
        store.getAssociation(Signatory._normal_key, "{HMAC-SHA1}{1}{x}")

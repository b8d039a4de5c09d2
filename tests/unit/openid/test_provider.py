"""python3-openid as we configure it: handles, negotiator, signing, check_authentication."""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
from openid.association import Association
from openid.message import BARE_NS, OPENID2_NS, Message
from openid.server.server import CheckAuthRequest, Encoder, Signatory
from openid.store.memstore import MemoryStore
from openid.store.nonce import mkNonce

from clickpass.openid.provider import (
    STATELESS_LIFETIME,
    ClickpassSignatory,
    Provider,
    copy_message,
    make_handle,
    message_url,
    negative_answer,
    negotiator_for,
    sign_message,
    web_response,
)
from clickpass.openid.store import (
    DatabaseOpenIDStore,
    StagedStore,
    _get_association,
    _store_association,
)
from clickpass.storage.sql import AdbapiStorage
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


# Provider.check_authentication: on the reactor thread, against a staged store.

ENDPOINT = "http://op.example/openid"


def _provider(storage: AdbapiStorage) -> Provider:
    return Provider(DatabaseOpenIDStore(storage), ENDPOINT, False, 7 * 24 * 3600)


async def _assertion(
    storage: AdbapiStorage, key: str = Signatory._dumb_key, nonce: str | None = None
) -> tuple[Message, Association]:
    assoc = Association.fromExpiresIn(
        600, make_handle("HMAC-SHA256", 1), secrets.token_bytes(32), "HMAC-SHA256"
    )
    await storage.run(_store_association, key, assoc)
    message = Message.fromOpenIDArgs(
        {
            "ns": OPENID2_NS,
            "mode": "id_res",
            "op_endpoint": ENDPOINT,
            "claimed_id": "http://op.example/id/abc",
            "identity": "http://op.example/id/abc",
            "return_to": "http://rp.example/return",
            "response_nonce": nonce or mkNonce(),
            "assoc_handle": assoc.handle,
        }
    )
    return assoc.signMessage(message), assoc


async def _check(
    provider: Provider, message: Message, invalidate_handle: str | None = None
) -> dict[str, str]:
    query = message.toPostArgs()
    query["openid.mode"] = "check_authentication"
    if invalidate_handle is not None:
        query["openid.invalidate_handle"] = invalidate_handle
    request = provider.decode(query)
    assert isinstance(request, CheckAuthRequest)
    web = await provider.check_authentication(request)
    body = web.body.decode() if isinstance(web.body, bytes) else web.body
    return dict(line.split(":", 1) for line in body.splitlines())


@async_test
async def test_check_authentication_once(storage_backend: AdbapiStorage) -> None:
    """A genuine assertion checks out once, using up its association; a second check is refused."""
    provider = _provider(storage_backend)
    assertion, assoc = await _assertion(storage_backend)
    assert (await _check(provider, assertion))["is_valid"] == "true"
    assert await _stored(storage_backend, Signatory._dumb_key, assoc.handle) is None
    assert (await _check(provider, assertion))["is_valid"] == "false"


@async_test
async def test_tampered_assertion_is_refused_and_spoils_nothing(
    storage_backend: AdbapiStorage,
) -> None:
    """A tampered copy is refused, and the genuine assertion still checks out after it."""
    provider = _provider(storage_backend)
    assertion, _ = await _assertion(storage_backend)
    tampered = assertion.copy()
    tampered.setArg(OPENID2_NS, "claimed_id", "http://op.example/id/someone-else")
    tampered.setArg(OPENID2_NS, "identity", "http://op.example/id/someone-else")
    assert (await _check(provider, tampered))["is_valid"] == "false"
    assert (await _check(provider, assertion))["is_valid"] == "true"


@async_test
async def test_replay_refused_even_if_the_association_survives(
    storage_backend: AdbapiStorage,
) -> None:
    """The nonce claim alone refuses a replay (two workers racing past the association's delete)."""
    provider = _provider(storage_backend)
    assertion, assoc = await _assertion(storage_backend)
    assert (await _check(provider, assertion))["is_valid"] == "true"
    await storage_backend.run(_store_association, Signatory._dumb_key, assoc)  # not deleted yet
    assert (await _check(provider, assertion))["is_valid"] == "false"


@async_test
async def test_stale_or_missing_nonce_is_refused(storage_backend: AdbapiStorage) -> None:
    """An assertion whose nonce is outside the allowed skew, or unreadable, is never valid."""
    provider = _provider(storage_backend)
    stale, _ = await _assertion(storage_backend, nonce=mkNonce(1_000_000))
    assert (await _check(provider, stale))["is_valid"] == "false"
    bad, assoc = await _assertion(storage_backend, nonce="not a nonce")
    assert (await _check(provider, bad))["is_valid"] == "false"
    # Refused before the claim: the association is not used up.
    assert await _stored(storage_backend, Signatory._dumb_key, assoc.handle) is not None


@async_test
async def test_shared_association_assertions_are_not_checked(
    storage_backend: AdbapiStorage,
) -> None:
    """An assertion signed with a shared (stateful) association is never confirmed."""
    provider = _provider(storage_backend)
    assertion, assoc = await _assertion(storage_backend, key=Signatory._normal_key)
    assert (await _check(provider, assertion))["is_valid"] == "false"
    assert await _stored(storage_backend, Signatory._normal_key, assoc.handle) is not None


@async_test
async def test_invalidate_handle(storage_backend: AdbapiStorage) -> None:
    """A live shared handle is kept quiet; an unknown or expired one is named back, and removed."""
    provider = _provider(storage_backend)
    live = Association.fromExpiresIn(600, make_handle("HMAC-SHA1", 1), b"l" * 20, "HMAC-SHA1")
    old = Association(make_handle("HMAC-SHA1", 1), b"o" * 20, 1_000, 60, "HMAC-SHA1")
    for assoc in (live, old):
        await storage_backend.run(_store_association, Signatory._normal_key, assoc)
    for handle, named in ((live.handle, False), ("{HMAC-SHA1}{1}{gone}", True), (old.handle, True)):
        assertion, _ = await _assertion(storage_backend)
        answer = await _check(provider, assertion, invalidate_handle=handle)
        assert answer["is_valid"] == "true"
        assert ("invalidate_handle" in answer) == named
    assert await _stored(storage_backend, Signatory._normal_key, live.handle) is not None
    assert await _stored(storage_backend, Signatory._normal_key, old.handle) is None


# Provider.sign: on the reactor thread, against a store staged around it.


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
    """Nonces are claimed in the writing transaction; a nonce check on a staged store is a bug."""
    with pytest.raises(NotImplementedError):
        StagedStore().useNonce("x", 1, "salt")


@async_test
async def test_run_blocking_on_the_reactor_thread_raises(storage_backend: AdbapiStorage) -> None:
    """The library's blocking store called on the reactor thread fails at once, not deadlocks."""
    store = DatabaseOpenIDStore(storage_backend)
    with pytest.raises(RuntimeError, match="reactor thread"):
        store.getAssociation(Signatory._normal_key, "{HMAC-SHA1}{1}{x}")


# Our shortcuts around the library's signing and encoding give its answers.


def _answer_with(provider: Provider, assoc_handle: str | None, return_to: str) -> Any:
    answer = _positive_answer(provider, assoc_handle)
    answer.request.return_to = return_to
    answer.fields.setArg(OPENID2_NS, "return_to", return_to)
    return answer


def test_sign_matches_the_library_and_leaves_the_response_alone() -> None:
    """ClickpassSignatory.sign gives the library's signed fields, without changing its input."""
    store = MemoryStore()
    shared = Association.fromExpiresIn(
        3600, make_handle("HMAC-SHA256", 1), b"k" * 32, "HMAC-SHA256"
    )
    store.storeAssociation(Signatory._normal_key, shared)
    provider = Provider(DatabaseOpenIDStore(None), ENDPOINT, False, 3600)  # type: ignore[arg-type]
    for handle in (shared.handle, "{HMAC-SHA1}{1}{unknown}"):
        answer = _answer_with(provider, handle, "http://rp.example/return")
        before = answer.fields.toPostArgs()
        ours = ClickpassSignatory(store).sign(answer)
        theirs = Signatory(store).sign(answer)
        assert answer.fields.toPostArgs() == before
        ours_args, theirs_args = ours.fields.toPostArgs(), theirs.fields.toPostArgs()
        if handle == shared.handle:
            assert ours_args == theirs_args
        else:
            # A new private association each: the same fields but for its handle and signature.
            for args in (ours_args, theirs_args):
                assert args["openid.invalidate_handle"] == handle
                del args["openid.assoc_handle"], args["openid.sig"]
            assert ours_args == theirs_args
        assert ours.request is answer.request


@pytest.mark.parametrize(
    "return_to", ["http://rp.example/return", "http://rp.example/" + "x" * 3000]
)
def test_web_response_matches_the_library(return_to: str) -> None:
    """One URL build gives the library's redirect, or its form for a URL too long for one."""
    provider = Provider(DatabaseOpenIDStore(None), ENDPOINT, False, 3600)  # type: ignore[arg-type]
    answer = _answer_with(provider, None, return_to)
    ours, theirs = web_response(answer), Encoder().encode(answer)
    assert (ours.code, ours.headers, ours.body) == (theirs.code, theirs.headers, theirs.body)
    assert ours.code == (302 if len(return_to) < 100 else 200)


def _messages() -> list[Message]:
    """Answers to sign and encode: OpenID 2 and 1, with extension fields and odd values."""
    provider = Provider(DatabaseOpenIDStore(None), ENDPOINT, False, 3600)  # type: ignore[arg-type]
    plain = _positive_answer(provider, None).fields
    with_sreg = copy_message(plain)
    with_sreg.namespaces.addAlias("http://openid.net/extensions/sreg/1.1", "sreg")
    for key, value in (("fullname", "Zoë Ünïcode + & = ? #"), ("nickname", "a b%20c")):
        with_sreg.setArg("http://openid.net/extensions/sreg/1.1", key, value)
    openid1 = Message.fromPostArgs(
        {
            "openid.mode": "id_res",
            "openid.identity": "http://op.example/id/x",
            "openid.return_to": "http://rp.example/r?x=1&y=é",
        }
    )
    with_bare = copy_message(plain)
    with_bare.setArg(BARE_NS, "bare", "not signed")
    return [plain, with_sreg, openid1, with_bare]


@pytest.mark.parametrize("index", range(4))
def test_sign_message_matches_the_library(index: int) -> None:
    """Fields, signed list and signature as Association.signMessage gives them; input unchanged."""
    message = _messages()[index]
    before = message.toPostArgs()
    for assoc_type, size in (("HMAC-SHA1", 20), ("HMAC-SHA256", 32)):
        assoc = Association.fromExpiresIn(3600, make_handle(assoc_type, 1), b"s" * size, assoc_type)
        ours, theirs = sign_message(assoc, message), assoc.signMessage(message)
        assert ours.toPostArgs() == theirs.toPostArgs()
        assert assoc.checkMessageSignature(ours)
        assert message.toPostArgs() == before


def test_sign_message_refuses_what_the_library_refuses() -> None:
    """A message already signed, or naming another association, is refused."""
    assoc = Association.fromExpiresIn(3600, make_handle("HMAC-SHA1", 1), b"s" * 20, "HMAC-SHA1")
    signed = sign_message(assoc, _messages()[0])
    with pytest.raises(ValueError, match="already has signed list"):
        sign_message(assoc, signed)
    other = copy_message(_messages()[0])
    other.setArg(OPENID2_NS, "assoc_handle", "{HMAC-SHA1}{1}{other}")
    with pytest.raises(ValueError, match="different association handle"):
        sign_message(assoc, other)


def test_copy_message_shares_nothing_changeable() -> None:
    """A change to the copy, arguments or namespaces, leaves the original as it was."""
    original = _messages()[1]
    before = (original.toPostArgs(), dict(original.namespaces.namespace_to_alias))
    copied = copy_message(original)
    assert copied.toPostArgs() == original.toPostArgs()
    copied.setArg("http://example.com/ext", "key", "value")
    copied.setArg(OPENID2_NS, "mode", "cancel")
    copied.namespaces.addAlias("http://example.com/other", "other")
    assert (original.toPostArgs(), dict(original.namespaces.namespace_to_alias)) == before


@pytest.mark.parametrize(
    "base_url",
    [
        "http://rp.example/return",
        "http://rp.example/return?already=1&é=ü",
        "http://rp.example/" + "x" * 600 + "?q=" + "y" * 600,
    ],
)
def test_message_url_matches_the_library(base_url: str) -> None:
    """The same URL as Message.toURL, twice (the second time from the quoting kept)."""
    for message in _messages():
        message.setArg(OPENID2_NS, "long", "v a/l?u&e=" * 80)
        assert message_url(message, base_url) == message.toURL(base_url)
        assert message_url(message, base_url) == message.toURL(base_url)
    assert message_url(Message(), base_url) == Message().toURL(base_url) == base_url


NEGATIVE_CASES = {
    "openid2 immediate, identifier select": {
        "openid.ns": OPENID2_NS,
        "openid.mode": "checkid_immediate",
        "openid.claimed_id": "http://specs.openid.net/auth/2.0/identifier_select",
        "openid.identity": "http://specs.openid.net/auth/2.0/identifier_select",
    },
    "openid2 immediate, delegated, with a handle": {
        "openid.ns": OPENID2_NS,
        "openid.mode": "checkid_immediate",
        "openid.claimed_id": "http://claimed.example/",
        "openid.identity": "http://op.example/id/abc",
        "openid.assoc_handle": "{HMAC-SHA1}{1}{abc}",
    },
    "openid2 setup": {
        "openid.ns": OPENID2_NS,
        "openid.mode": "checkid_setup",
        "openid.claimed_id": "http://op.example/id/abc",
        "openid.identity": "http://op.example/id/abc",
    },
    "openid1 immediate": {
        "openid.mode": "checkid_immediate",
        "openid.identity": "http://op.example/id/abc",
        "openid.trust_root": "http://rp.example/",
    },
}


@pytest.mark.parametrize("name", NEGATIVE_CASES)
def test_negative_answer_matches_the_library(name: str) -> None:
    """setup_needed (with its setup URL) and cancel, field for field as the library answers."""
    provider = Provider(DatabaseOpenIDStore(None), ENDPOINT, False, 3600)  # type: ignore[arg-type]
    query = {
        "openid.return_to": "http://rp.example/return?x=1&é=ü",
        "openid.realm": "http://rp.example/",
        **NEGATIVE_CASES[name],
    }
    if "openid.ns" not in query:
        del query["openid.realm"]
    ours = negative_answer(provider.decode(query))
    theirs = provider.decode(query).answer(False)
    assert ours.fields.toPostArgs() == theirs.fields.toPostArgs()
    assert ours.needsSigning() == theirs.needsSigning()


def test_negative_answer_to_a_request_for_no_identifier() -> None:
    """OpenID 2 allows no identifier; the setup URL then names none (the library asserts)."""
    provider = Provider(DatabaseOpenIDStore(None), ENDPOINT, False, 3600)  # type: ignore[arg-type]
    request = provider.decode(
        {
            "openid.ns": OPENID2_NS,
            "openid.mode": "checkid_immediate",
            "openid.return_to": "http://rp.example/return",
            "openid.realm": "http://rp.example/",
        }
    )
    with pytest.raises(AssertionError):
        request.answer(False)
    answer = negative_answer(request).fields.toPostArgs()
    assert answer["openid.mode"] == "setup_needed"
    setup = dict(parse_qsl(urlsplit(answer["openid.user_setup_url"]).query))
    assert urlsplit(answer["openid.user_setup_url"]).path == "/openid"
    assert setup == {
        "openid.ns": OPENID2_NS,
        "openid.mode": "checkid_setup",
        "openid.return_to": "http://rp.example/return",
        "openid.realm": "http://rp.example/",
    }

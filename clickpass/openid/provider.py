"""
python3-openid's C{Server}, configured for Clickpass and fixed for the
known 3.2.0 pitfalls.

- Association handles: 3.2.0 builds them from C{toBase64()}, which returns
  bytes, so a handle reads C{{HMAC-SHA1}{...}{b'xyz='}}. L{ClickpassSignatory}
  makes clean ASCII handles.
- Session types: the default negotiator allows C{no-encryption}, which sends
  the association secret in clear; we allow it only when the provider is
  served over HTTPS.
- check_authentication: an assertion is verified at most once (its
  response nonce is claimed in the store), so a replayed assertion is
  refused even if two workers see it at the same moment.

L{Provider.decode}, and L{Provider.encode} of a response that needs no
signature, are pure computation and run on the reactor thread. So does
L{Provider.sign}, against a store staged around it (its one read made
before, its writes after). The direct requests (associate,
check_authentication) use the library's store, which blocks on the
database: they must run in a thread, never on the reactor.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import Any

from openid.association import Association, SessionNegotiator, getSecretSize
from openid.message import OPENID_NS
from openid.server.server import (
    CheckAuthRequest,
    OpenIDResponse,
    Server,
    Signatory,
    SigningEncoder,
    WebResponse,
)
from openid.store.nonce import split as split_nonce

from clickpass.openid.store import DatabaseOpenIDStore, StagedStore

# Strongest first: the negotiator offers its first pair to a relying party
# that asked for something we do not allow.
ENCRYPTED_SESSIONS = [
    ("HMAC-SHA256", "DH-SHA256"),
    ("HMAC-SHA1", "DH-SHA1"),
]
PLAINTEXT_SESSIONS = [
    ("HMAC-SHA256", "no-encryption"),
    ("HMAC-SHA1", "no-encryption"),
]

# Associations made only to sign one assertion for a stateless relying
# party ("dumb mode") need only live until it asks us to check it.
STATELESS_LIFETIME = 3600

CHECK_AUTH_NONCE_URL = "clickpass:check_authentication"


def negotiator_for(served_over_tls: bool) -> SessionNegotiator:
    """The association and session types we accept."""
    allowed = list(ENCRYPTED_SESSIONS)
    if served_over_tls:
        allowed += PLAINTEXT_SESSIONS
    return SessionNegotiator(allowed)


def make_handle(assoc_type: str, now: float) -> str:
    """An association handle of printable ASCII, unique and unguessable."""
    return "{%s}{%x}{%s}" % (assoc_type, int(now), secrets.token_urlsafe(12))  # noqa: UP031


class ClickpassSignatory(Signatory):  # type: ignore[misc]
    """A C{Signatory} with clean handles and our association lifetimes."""

    lifetime = Signatory.SECRET_LIFETIME

    def createAssociation(self, dumb: bool = True, assoc_type: str = "HMAC-SHA1") -> Association:
        secret = secrets.token_bytes(getSecretSize(assoc_type))
        now = time.time()
        lifetime = min(STATELESS_LIFETIME, self.lifetime) if dumb else self.lifetime
        handle = make_handle(assoc_type, now)
        assoc = Association.fromExpiresIn(lifetime, handle, secret, assoc_type)
        self.store.storeAssociation(self._dumb_key if dumb else self._normal_key, assoc)
        return assoc


def check_authentication(
    signatory: Signatory, store: DatabaseOpenIDStore, request: CheckAuthRequest
) -> OpenIDResponse:
    """
    Answer a stateless relying party's check_authentication: valid only if
    the signature verifies with a stateless association AND this assertion
    (its association handle and response nonce) was never verified before.
    A good answer uses up the association, as the library does; a bad one
    (a tampered copy) does not, so it cannot spoil the genuine assertion.
    """
    valid = bool(signatory.verify(request.assoc_handle, request.signed))
    if valid:
        valid = _claim_assertion(store, request)
    if valid:
        signatory.invalidate(request.assoc_handle, dumb=True)
    response = OpenIDResponse(request)
    response.fields.setArg(OPENID_NS, "is_valid", "true" if valid else "false")
    if request.invalidate_handle:
        assoc = signatory.getAssociation(request.invalidate_handle, dumb=False)
        if not assoc:
            response.fields.setArg(OPENID_NS, "invalidate_handle", request.invalidate_handle)
    return response


def _claim_assertion(store: DatabaseOpenIDStore, request: CheckAuthRequest) -> bool:
    nonce = request.signed.getArg(OPENID_NS, "response_nonce")
    if not nonce:
        return False
    try:
        timestamp, _salt = split_nonce(nonce)
    except ValueError:
        return False
    # The nonce's own salt is short; the key is the whole assertion's
    # identity, hashed to fit the column.
    key = hashlib.sha256(f"{request.assoc_handle}\n{nonce}".encode()).hexdigest()
    return bool(store.useNonce(CHECK_AUTH_NONCE_URL, timestamp, key))


class Provider:
    """
    The library's server on our store. L{handle_direct}, and L{encode} of
    a response that needs signing, block on the store: call them only from
    a thread.
    """

    def __init__(
        self,
        store: DatabaseOpenIDStore,
        endpoint_url: str,
        served_over_tls: bool,
        association_lifetime: int,
    ) -> None:
        self.store = store
        self.endpoint_url = endpoint_url
        self.server = Server(store, endpoint_url, signatoryClass=ClickpassSignatory)
        self.server.signatory.lifetime = association_lifetime
        self.server.negotiator = negotiator_for(served_over_tls)

    def decode(self, query: Mapping[str, str]) -> Any:
        """
        Decode a request (raises the library's C{ProtocolError} family).
        Pure parsing, without the store: safe on the reactor thread.
        """
        return self.server.decodeRequest(dict(query))

    def handle_direct(self, request: Any) -> WebResponse:
        """Answer associate and check_authentication, encoded for the wire."""
        if isinstance(request, CheckAuthRequest):
            response = check_authentication(self.server.signatory, self.store, request)
        else:
            response = self.server.handleRequest(request)
        return self.server.encodeResponse(response)

    async def sign(self, response: OpenIDResponse) -> WebResponse:
        """
        On the reactor thread: sign and encode a response that needs it.
        The association the relying party named is read first; the library
        signs against a L{StagedStore}; the associations it made or retired
        are written before this returns, so they exist before the relying
        party can see the assertion.
        """
        key = ClickpassSignatory._normal_key
        handle = response.request.assoc_handle
        staged = await self.store.read(key, handle) if handle else StagedStore(key, None)
        signatory = ClickpassSignatory(staged)
        signatory.lifetime = self.server.signatory.lifetime
        encoded: WebResponse = SigningEncoder(signatory).encode(response)
        await self.store.apply(staged)
        return encoded

    def encode(self, response: Any) -> WebResponse:
        """
        Sign (if needed) and encode a response or a C{ProtocolError}. Only
        signing touches the store: errors, and responses whose
        C{needsSigning()} is false, are safe on the reactor thread.
        """
        return self.server.encodeResponse(response)

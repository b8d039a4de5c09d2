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
signature, are pure computation and run on the reactor thread. So do
L{Provider.sign} and L{Provider.check_authentication}, against a store
staged around them (their reads made before, their writes after). Only
C{associate} (L{Provider.associate}) uses the library's store, which
blocks on the database: it must run in a thread, never on the reactor.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote_plus

from openid import kvform
from openid.association import Association, SessionNegotiator, getSecretSize
from openid.message import OPENID1_NS, OPENID1_URL_LIMIT, OPENID2_NS, OPENID_NS, Message
from openid.oidutil import toBase64
from openid.server.server import (
    BROWSER_REQUEST_MODES,
    HTTP_OK,
    HTTP_REDIRECT,
    AlreadySigned,
    AssociateRequest,
    CheckAuthRequest,
    CheckIDRequest,
    EncodingError,
    MalformedReturnURL,
    MalformedTrustRoot,
    NoReturnToError,
    OpenIDResponse,
    ProtocolError,
    Server,
    Signatory,
    WebResponse,
)
from openid.store.nonce import split as split_nonce

from clickpass.openid.hardening import BadURL, dh_problem, handle_problem, normalised_url
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


def copy_message(message: Message) -> Message:
    """
    What C{Message.copy} gives, without its C{deepcopy}: a message's values
    are strings, so a copy of its argument and namespace tables shares
    nothing that either side can change. The deepcopy inside
    C{Association.signMessage} was 10% of a worker's Python time per
    signed assertion (py-spy).
    """
    copied = copy.copy(message)
    copied.args = dict(message.args)
    namespaces = copy.copy(message.namespaces)
    namespaces.alias_to_namespace = dict(message.namespaces.alias_to_namespace)
    namespaces.namespace_to_alias = dict(message.namespaces.namespace_to_alias)
    namespaces.implicit_namespaces = list(message.namespaces.implicit_namespaces)
    copied.namespaces = namespaces
    return copied


def sign_message(assoc: Association, message: Message) -> Message:
    """
    The library's C{Association.signMessage}: a copy of C{message} with the
    association's handle, the list of signed fields (every C{openid.} field)
    and the signature. It copies with L{copy_message}, and builds the
    message's arguments once instead of twice.
    """
    if message.hasKey(OPENID_NS, "sig") or message.hasKey(OPENID_NS, "signed"):
        raise ValueError("Message already has signed list or signature")
    extant_handle = message.getArg(OPENID_NS, "assoc_handle")
    if extant_handle and extant_handle != assoc.handle:
        raise ValueError("Message has a different association handle")
    signed = copy_message(message)
    signed.setArg(OPENID_NS, "assoc_handle", assoc.handle)
    args = signed.toPostArgs()
    signed_list = sorted([key[7:] for key in args if key.startswith("openid.")] + ["signed"])
    args["openid.signed"] = ",".join(signed_list)
    signed.setArg(OPENID_NS, "signed", args["openid.signed"])
    pairs = [(field, args.get("openid." + field, "")) for field in signed_list]
    signed.setArg(OPENID_NS, "sig", toBase64(assoc.sign(pairs)))
    return signed


# Values quoted for URLs, kept: most of an assertion's values (the namespace,
# mode, endpoint, identifiers, return_to, signed list) repeat from one
# sign-in to the next. Bounded in count and in the length of what is kept.
QUOTED_CACHE_ENTRIES = 4096
QUOTED_CACHE_MAX_LENGTH = 512


@functools.lru_cache(maxsize=QUOTED_CACHE_ENTRIES)
def _quoted_cached(value: str) -> str:
    return quote_plus(value)


def _quoted(value: str) -> str:
    if len(value) > QUOTED_CACHE_MAX_LENGTH:
        return quote_plus(value)
    return _quoted_cached(value)


def message_url(message: Message, base_url: str) -> str:
    """
    The library's C{Message.toURL}: C{base_url} with the message's arguments
    added to its query, sorted, UTF-8 and form-encoded. Quoting was most
    of that cost; repeated values are quoted once (L{_quoted}).
    """
    args = sorted(message.toPostArgs().items())
    if not args:
        return base_url
    sep = "&" if "?" in base_url else "?"
    return base_url + sep + "&".join(_quoted(k) + "=" + _quoted(v) for k, v in args)


class ClickpassSignatory(Signatory):
    """A C{Signatory} with clean handles, our association lifetimes, and a cheaper L{sign}."""

    lifetime = Signatory.SECRET_LIFETIME

    def sign(self, response: OpenIDResponse) -> OpenIDResponse:
        """
        The library's C{Signatory.sign}, without its C{deepcopy} of the whole
        response (the request and its message too), which was 8% of a
        worker's Python time per sign-in (py-spy). The caller's response is
        left as it was all the same: L{sign_message} signs a copy of the
        fields, and the signed response shares only the (unchanged) request.
        """
        fields = response.fields
        assoc_handle = response.request.assoc_handle
        if assoc_handle:
            # Normal mode. Expiry is checked here, not in getAssociation: an
            # expired association's type is kept for its replacement.
            assoc = self.getAssociation(assoc_handle, dumb=False, checkExpiration=False)
            if not assoc or assoc.expiresIn <= 0:
                # Fall back to a private association, and tell the relying party.
                fields = copy_message(fields)
                fields.setArg(OPENID_NS, "invalidate_handle", assoc_handle)
                assoc_type = assoc.assoc_type if assoc else "HMAC-SHA1"
                if assoc:
                    self.invalidate(assoc_handle, dumb=False)
                assoc = self.createAssociation(dumb=True, assoc_type=assoc_type)
        else:
            # Stateless mode.
            assoc = self.createAssociation(dumb=True)
        signed = copy.copy(response)
        try:
            signed.fields = sign_message(assoc, fields)
        except kvform.KVFormError as err:
            raise EncodingError(response, explanation=str(err)) from err
        return signed

    def createAssociation(self, dumb: bool = True, assoc_type: str = "HMAC-SHA1") -> Association:
        secret = secrets.token_bytes(getSecretSize(assoc_type))
        now = time.time()
        lifetime = min(STATELESS_LIFETIME, self.lifetime) if dumb else self.lifetime
        handle = make_handle(assoc_type, now)
        assoc = Association.fromExpiresIn(lifetime, handle, secret, assoc_type)
        self.store.storeAssociation(self._dumb_key if dumb else self._normal_key, assoc)
        return assoc


def web_response(response: OpenIDResponse) -> WebResponse:
    """
    The library's C{Encoder.encode}, building a browser response's URL once
    (the library builds it twice, once only to measure it: C{whichEncoding}),
    with L{message_url}.
    A redirect, or the self-submitting form when an OpenID 2 URL would be too
    long; a direct response in key-value form.
    """
    if response.request.mode not in BROWSER_REQUEST_MODES:
        return WebResponse(body=response.encodeToKVForm())
    url = message_url(response.fields, response.request.return_to)
    if response.fields.getOpenIDNamespace() == OPENID2_NS and len(url) > OPENID1_URL_LIMIT:
        return WebResponse(code=HTTP_OK, body=response.toHTML())
    return WebResponse(code=HTTP_REDIRECT, headers={"location": url})


def negative_answer(request: CheckIDRequest) -> OpenIDResponse:
    """
    C{request.answer(False)}: OpenID 2's C{setup_needed} to a
    checkid_immediate, with its C{user_setup_url} (the same request as a
    checkid_setup); C{cancel} to a checkid_setup; OpenID 1's negative
    answers through the library.

    The library makes the setup URL from a second request object, which
    parses and checks the return_to and realm again (13% of a worker's
    Python time on an anonymous checkid_immediate, py-spy), and which
    cannot be made for a request without an identifier (it asserts).
    """
    if not (request.immediate and request.message.isOpenID2()):
        return request.answer(False)
    if not request.return_to:
        raise NoReturnToError
    response = OpenIDResponse(request)
    response.fields.setArg(OPENID_NS, "mode", "setup_needed")
    setup = {"mode": "checkid_setup", "return_to": request.return_to}
    if request.identity:
        setup["identity"] = request.identity
        setup["claimed_id"] = request.claimed_id or request.identity
    if request.trust_root:
        setup["realm"] = request.trust_root
    if request.assoc_handle:
        setup["assoc_handle"] = request.assoc_handle
    setup_message = Message(OPENID2_NS)
    setup_message.updateArgs(OPENID_NS, setup)
    response.fields.setArg(
        OPENID_NS, "user_setup_url", message_url(setup_message, request.op_endpoint)
    )
    return response


def _bare_message(query: Mapping[str, str]) -> Message:
    """
    A message with only the request's OpenID version and mode, for an error
    about arguments the library could not make a message of: a direct
    request's error is answered in key-value form, a browser's on a page.
    """
    message = Message(OPENID2_NS if query.get("openid.ns") == OPENID2_NS else OPENID1_NS)
    mode = query.get("openid.mode")
    if mode:
        message.setArg(OPENID_NS, "mode", mode)
    return message


def _message_or_none(query: Mapping[str, str]) -> Message | None:
    # When the arguments are no message at all, the library's own decoding
    # refuses them (before any arithmetic) with its own error.
    try:
        return Message.fromPostArgs(dict(query))
    except Exception:
        return None


CHECKID_MODES = ("checkid_setup", "checkid_immediate")
URL_ARGUMENTS = ("openid.return_to", "openid.realm", "openid.trust_root")


def normalised_checkid(query: Mapping[str, str]) -> dict[str, str]:
    """
    A checkid's arguments with its return_to and realm (OpenID 1's
    trust_root) in the one form every part of Clickpass reads
    (L{normalised_url}: host percent-decoded, IDNA, lowercase), before the
    library sees them: it would read a non-ASCII host as Latin-1 (another
    host) and compare percent-escaped hosts decoded while Clickpass derived
    the sector from them as written. Raises the library's
    C{MalformedReturnURL} or C{MalformedTrustRoot} for one that cannot be
    read as one host.
    """
    normal = dict(query)
    for key in URL_ARGUMENTS:
        value = normal.get(key)
        if not value:
            continue
        try:
            normal[key] = normalised_url(value)
        except BadURL as e:
            message = _message_or_none(query)
            if message is None:
                # Not a message at all: the library refuses it on its own.
                return dict(query)
            if key == "openid.return_to":
                raise MalformedReturnURL(message, value) from None
            raise MalformedTrustRoot(message, f"the realm cannot be used: {e}") from None
    return normal


def assertion_claim(request: CheckAuthRequest) -> tuple[int, str] | None:
    """
    The nonce timestamp and the key under which an assertion is claimed
    when it is checked: the whole assertion's identity (its association
    handle and response nonce), hashed to fit the column. L{None} when the
    assertion has no usable nonce: such an assertion is never valid.
    """
    nonce = request.signed.getArg(OPENID_NS, "response_nonce")
    if not nonce:
        return None
    try:
        timestamp, _salt = split_nonce(nonce)
    except ValueError:
        return None
    return timestamp, hashlib.sha256(f"{request.assoc_handle}\n{nonce}".encode()).hexdigest()


class Provider:
    """
    The library's server on our store. L{associate} blocks on the store:
    call it only from a thread.
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

        Restricted first: association handles must be printable ASCII
        (L{handle_problem}); the library computes with an associate request's
        Diffie-Hellman values as it decodes them, so those are checked
        before it sees them (L{dh_problem}), and an OpenID 1 associate for a
        session type we do not allow gets an error here (the library raises
        one with no text from inside its answer). A checkid's realm and
        return_to are normalised (L{normalised_checkid}).
        """
        problem = handle_problem(query)
        if problem is None and query.get("openid.mode") == "associate":
            problem = dh_problem(query)
        message = _message_or_none(query) if problem is not None else None
        if message is not None:
            raise ProtocolError(message, problem)
        if query.get("openid.mode") in CHECKID_MODES:
            query = normalised_checkid(query)
        try:
            request = self.server.decodeRequest(dict(query))
        except KeyError as e:
            # Message.fromPostArgs raises KeyError, not a ProtocolError, when
            # two namespace aliases name one URI (openid.ns.a and openid.ns.b).
            raise ProtocolError(
                _bare_message(query), f"the request's namespace aliases conflict: {e}"
            ) from None
        if isinstance(request, AssociateRequest) and request.message.isOpenID1():
            session_type = request.session.session_type
            if not self.server.negotiator.isAllowed(request.assoc_type, session_type):
                # OpenID 1 has no unsupported-type answer: a plain error.
                raise ProtocolError(
                    request.message,
                    f"session type {session_type} (the default when session_type is left "
                    "out) is not allowed here; ask for DH-SHA1",
                )
        return request

    def associate(self, request: Any) -> WebResponse:
        """In a thread: answer an associate request, encoded for the wire."""
        return self.server.encodeResponse(self.server.handleRequest(request))

    def _staged_signatory(self, staged: StagedStore) -> ClickpassSignatory:
        signatory = ClickpassSignatory(staged)
        signatory.lifetime = self.server.signatory.lifetime
        return signatory

    async def check_authentication(self, request: CheckAuthRequest) -> WebResponse:
        """
        On the reactor thread: answer a stateless relying party's
        check_authentication. Valid only if the signature verifies with a
        stateless association AND this assertion was never verified
        before: its claim (L{assertion_claim}) and the retiring of its
        association are one transaction, so a replayed assertion is refused
        even if two workers see it at the same moment. A tampered copy
        (bad signature) claims nothing and retires nothing, so it cannot
        spoil the genuine assertion.
        """
        dumb, normal = ClickpassSignatory._dumb_key, ClickpassSignatory._normal_key
        keys = [(dumb, request.assoc_handle)]
        if request.invalidate_handle:
            keys.append((normal, request.invalidate_handle))
        staged = await self.store.read(*keys)
        signatory = self._staged_signatory(staged)
        # The library's checks, on what was read: an expired association
        # verifies nothing (and its removal is staged).
        valid = bool(signatory.verify(request.assoc_handle, request.signed))
        still_shared = bool(
            request.invalidate_handle
            and signatory.getAssociation(request.invalidate_handle, dumb=False)
        )
        claim = assertion_claim(request) if valid else None
        if claim is None:
            valid = False
            await self.store.apply(staged)
        else:
            valid = await self.store.apply_and_claim(
                staged, CHECK_AUTH_NONCE_URL, *claim, retire=(dumb, request.assoc_handle)
            )
        response = OpenIDResponse(request)
        response.fields.setArg(OPENID_NS, "is_valid", "true" if valid else "false")
        if request.invalidate_handle and not still_shared:
            response.fields.setArg(OPENID_NS, "invalidate_handle", request.invalidate_handle)
        return self.encode(response)

    async def sign(self, response: OpenIDResponse) -> WebResponse:
        """
        On the reactor thread: sign and encode a response that needs it.
        The association the relying party named is read first; the library
        signs against a L{StagedStore}; the associations it made or retired
        are written before this returns, so they exist before the relying
        party can see the assertion.
        """
        if response.fields.hasKey(OPENID_NS, "sig"):
            raise AlreadySigned(response)
        handle = response.request.assoc_handle
        staged = (
            await self.store.read((ClickpassSignatory._normal_key, handle))
            if handle
            else StagedStore()
        )
        signed = self._staged_signatory(staged).sign(response)
        await self.store.apply(staged)
        return web_response(signed)

    def encode(self, response: Any) -> WebResponse:
        """
        Sign (if needed) and encode a response or a C{ProtocolError}. Only
        signing touches the store: errors, and responses whose
        C{needsSigning()} is false, are safe on the reactor thread.
        """
        if isinstance(response, OpenIDResponse) and not response.needsSigning():
            return web_response(response)
        return self.server.encodeResponse(response)

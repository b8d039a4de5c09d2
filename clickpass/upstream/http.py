"""
HTTP to upstream providers: JSON in, JSON out, through treq, with TLS
verified against a configurable CA bundle, a deadline on every request and
a cap on every response body.

Every failure (refused connection, bad certificate, timeout, HTTP error,
oversized or malformed body) becomes one L{UpstreamError} whose message a
person can read. This module must never block the reactor and never follow
a redirect to a plain-HTTP address.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import treq
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from clickpass.i18n import N_, Text
from clickpass.tls import load_trust_root

USER_AGENT = b"Clickpass upstream connector"


class UpstreamError(Exception):
    """
    Something an upstream provider did (or failed to do) stops the sign-in.
    The message is one sentence for the person; C{reason} is a short code
    for logs and tests.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class _TooLarge(Exception):
    pass


def make_agent(reactor: Any, ca_bundle: Path | None, connect_timeout: float) -> IAgent:
    """
    An Agent that verifies certificates and host names (service-identity)
    against C{ca_bundle}, or the system's trust store when it is L{None}.
    """
    trust = load_trust_root(ca_bundle) if ca_bundle is not None else ssl.platformTrust()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    pool.cachedConnectionTimeout = 60
    pool.retryAutomatically = False
    return Agent(
        reactor,
        contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust),
        connectTimeout=connect_timeout,
        pool=pool,
    )


class UpstreamHTTP:
    """JSON requests to one kind of destination: upstream providers."""

    def __init__(
        self,
        agent: IAgent,
        clock: IReactorTime,
        timeout: float,
        max_bytes: int,
        require_https: bool = True,
    ) -> None:
        self._client = HTTPClient(agent)
        self._clock = clock
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._require_https = require_https

    async def get_json(
        self, who: str, url: str, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """GET C{url} and return its JSON object; C{who} names the provider in errors."""
        return await self._json(who, "GET", url, headers or {}, None)

    async def post_form(
        self,
        who: str,
        url: str,
        form: Mapping[str, str],
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """
        POST an urlencoded form and return the JSON object answered. An
        OAuth error answer (4xx with an C{error} member) is returned as it
        is, for the caller to explain.
        """
        return await self._json(who, "POST", url, headers or {}, dict(form))

    async def _json(
        self,
        who: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        form: dict[str, str] | None,
    ) -> dict[str, Any]:
        if self._require_https and urlsplit(url).scheme != "https":
            raise UpstreamError(
                Text(
                    N_(
                        "%(who)s gave an address that is not https (%(url)s); the sign-in "
                        "was stopped."
                    ),
                    who=who,
                    url=url[:100],
                ),
                "insecure_url",
            )
        status, body = await self._answer(who, method, url, headers, form)
        return _document(who, status, body)

    async def _answer(
        self,
        who: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        form: dict[str, str] | None,
    ) -> tuple[int, bytes]:
        """
        The status and body C{who} answered, or an L{UpstreamError} saying in
        the person's words why there is none (too large, too slow,
        unreachable, an unverifiable certificate, an answer broken off).
        """
        d = Deferred.fromCoroutine(self._fetch(method, url, headers, form))
        # Cancelling an Agent request fails it with ResponseNeverReceived, not
        # CancelledError; say "timeout" whatever the cancellation turned into.
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timed_out)
        try:
            return await d
        except UpstreamError:
            raise
        except _TooLarge:
            raise UpstreamError(
                Text(
                    N_("%(who)s sent a response larger than we accept; try again later."), who=who
                ),
                "too_large",
            ) from None
        except (TimeoutError, CancelledError):
            raise UpstreamError(
                Text(N_("%(who)s did not answer in time; try again in a few minutes."), who=who),
                "timeout",
            ) from None
        except (ConnectError, DNSLookupError):
            raise _unreachable(who) from None
        except ResponseFailed as e:
            if any(_is_tls_failure(f) for f in e.reasons):
                raise _untrusted_tls(who) from None
            raise UpstreamError(
                Text(N_("%(who)s broke off its answer; try again in a few minutes."), who=who),
                "broken",
            ) from None
        except Exception as e:
            if _is_tls_failure(Failure(e)):
                raise _untrusted_tls(who) from None
            raise _unreachable(who) from None

    async def _fetch(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        form: dict[str, str] | None,
    ) -> tuple[int, bytes]:
        all_headers = {"Accept": "application/json", "User-Agent": USER_AGENT.decode("ascii")}
        all_headers.update(headers)
        body = None
        if form is not None:
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = _BytesProducer(urlencode(form).encode("utf-8"))
        response: IResponse = await self._client.request(
            method,
            url,
            headers=Headers({k: [v] for k, v in all_headers.items()}),
            data=body,
            allow_redirects=False,
        )
        length = response.length
        if isinstance(length, int) and length > self._max_bytes:
            response.deliverBody(_Discard())
            raise _TooLarge()
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > self._max_bytes:
                raise _TooLarge()
            chunks.append(data)

        await treq.collect(response, collect)
        return int(response.code), b"".join(chunks)


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A small request body written at once (treq's default producer runs on
    the global cooperator, which neither our injected clock nor tests drive).
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Discard:
    """A body protocol that drops the connection at once."""

    transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


def _timed_out(result: object, timeout: float) -> object:
    raise TimeoutError(f"no answer within {timeout} seconds")


def _is_tls_failure(failure: Failure) -> bool:
    from OpenSSL.SSL import Error as OpenSSLError

    try:
        from service_identity.exceptions import VerificationError
    except ImportError:  # pragma: no cover - service-identity is a dependency
        return failure.check(OpenSSLError) is not None
    return failure.check(OpenSSLError, VerificationError) is not None


def _unreachable(who: str) -> UpstreamError:
    return UpstreamError(
        Text(N_("%(who)s cannot be reached right now; try again in a few minutes."), who=who),
        "unreachable",
    )


def _untrusted_tls(who: str) -> UpstreamError:
    return UpstreamError(
        Text(
            N_("%(who)s's secure connection could not be verified; the sign-in was stopped."),
            who=who,
        ),
        "tls",
    )


def _document(who: str, status: int, body: bytes) -> dict[str, Any]:
    """
    The JSON object in C{body}, answered with C{status} by C{who}: an OAuth
    error answer (4xx with an C{error} member) as it is, for the caller to
    explain; anything else that is not a JSON object with a 2xx status an
    L{UpstreamError}.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    if status >= 500:
        raise UpstreamError(
            Text(
                N_("%(who)s is having trouble (HTTP %(status)s); try again in a few minutes."),
                who=who,
                status=status,
            ),
            "server_error",
        )
    if not isinstance(document, dict):
        raise UpstreamError(
            Text(
                N_("%(who)s sent an answer we could not understand; the sign-in was stopped."),
                who=who,
            ),
            "malformed",
        )
    if status >= 400 and "error" not in document:
        raise UpstreamError(
            Text(
                N_("%(who)s refused the request (HTTP %(status)s); the sign-in was stopped."),
                who=who,
                status=status,
            ),
            "http_error",
        )
    if 300 <= status < 400:
        raise UpstreamError(
            Text(
                N_(
                    "%(who)s answered with a redirect where data was expected; the "
                    "sign-in was stopped."
                ),
                who=who,
            ),
            "redirect",
        )
    return document

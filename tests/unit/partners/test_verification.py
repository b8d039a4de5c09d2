"""
Realm ownership verification: where the token is looked for, what counts
as published, the fetch through a real twisted.web resource in memory
(StubTreq), and the records kept in the database.
"""

from __future__ import annotations

from typing import Any

import pytest

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from clickpass.openid.settings import OpenIDSettings
from clickpass.partners import sites
from clickpass.partners.verification import (
    MAX_BYTES,
    RealmVerifier,
    new_token,
    token_published,
    verification_url,
)
from clickpass.storage.sql import DirectStorage
from tests.unit.partners.conftest import NOW, make_site


def test_verification_url_is_on_the_realm_host() -> None:
    """The token is looked for at the realm's origin; a wildcard realm uses its base host."""
    assert (
        verification_url("https://shop.example/app/")
        == "https://shop.example/.well-known/clickpass-verification.txt"
    )
    assert (
        verification_url("https://*.shop.example/")
        == "https://shop.example/.well-known/clickpass-verification.txt"
    )
    assert (
        verification_url("http://127.0.0.2:8090/")
        == "http://127.0.0.2:8090/.well-known/clickpass-verification.txt"
    )


def test_token_must_be_a_whole_line() -> None:
    """The token counts only as a line of its own, not inside other text."""
    token = new_token()
    assert token_published(f"# Clickpass\n  {token}  \nother\n".encode(), token)
    assert not token_published(f"x{token}\n".encode(), token)
    assert not token_published(b"", token)
    assert new_token() != token


class WellKnown(Resource):
    """A partner's host serving one answer at the well-known path."""

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.paths: list[bytes] = []

    def render_GET(self, request: Request) -> bytes:
        self.paths.append(request.path)
        request.setResponseCode(self.status)
        if self.status in (301, 302):
            request.setHeader(b"location", b"https://elsewhere.example/token.txt")
        return self.body


def _check(resource: WellKnown, token: str) -> str | None:
    verifier = RealmVerifier(Clock(), OpenIDSettings(), http_client=StubTreq(resource))
    result: list[Any] = []
    Deferred.fromCoroutine(verifier.check("https://shop.example/", token)).addBoth(result.append)
    assert len(result) == 1, "the check did not finish"
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


def test_published_token_verifies() -> None:
    """A 200 answer with the token as a line verifies the realm; only the one URL is fetched."""
    token = new_token()
    resource = WellKnown(200, f"{token}\n".encode())
    assert _check(resource, token) is None
    assert resource.paths == [b"/.well-known/clickpass-verification.txt"]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"someone-elses-token\n", "does not contain this site's verification token"),
        (404, b"not found", "answered with status 404"),
        (302, b"", "answered with status 302"),
        (200, b"x" * (MAX_BYTES + 1), "is larger than"),
    ],
)
def test_failures_are_one_sentence(status: int, body: bytes, expected: str) -> None:
    """A wrong token, an error status, a redirect (not followed) or a huge file: a reason."""
    problem = _check(WellKnown(status, body), new_token())
    assert problem is not None and expected in problem
    assert problem.startswith("https://shop.example/.well-known/clickpass-verification.txt")


class Hang(Resource):
    """A partner's host that accepts the request and never answers."""

    isLeaf = True

    def render_GET(self, request: Request) -> Any:
        return NOT_DONE_YET


def test_a_host_that_never_answers_is_given_up_on_in_time() -> None:
    """The fetch is cancelled at the discovery time limit, with a one-sentence reason."""
    clock = Clock()
    stub = StubTreq(Hang())
    settings = OpenIDSettings(rp_discovery_timeout=2.0)
    verifier = RealmVerifier(clock, settings, http_client=stub)
    result: list[Any] = []
    Deferred.fromCoroutine(verifier.check("https://shop.example/", new_token())).addBoth(
        result.append
    )
    stub.flush()
    clock.advance(1.9)
    stub.flush()
    assert result == [], "given up on before the time limit"
    clock.advance(0.2)
    stub.flush()
    assert result == [
        "https://shop.example/.well-known/clickpass-verification.txt did not answer in time."
    ]


def test_new_site_is_unverified_until_its_token_is_confirmed(storage: DirectStorage) -> None:
    """
    A registered site starts unverified with a token; a failed check keeps it
    unverified and remembers why; a check of an old token changes nothing; a
    successful check of the current token verifies it.
    """
    site = make_site(storage, verified=False)
    assert not site.verified and site.verification_token
    token = storage.run_blocking(sites.verification_token, site.id)
    assert token == site.verification_token
    assert not storage.run_blocking(sites.record_verification, site.id, token, "nope.", NOW)
    assert storage.run_blocking(sites.verification_problem, site.id) == "nope."
    assert not storage.run_blocking(sites.record_verification, site.id, "old", None, NOW)
    still = storage.run_blocking(sites.site_by_id, site.id)
    assert still is not None and not still.verified
    assert storage.run_blocking(sites.record_verification, site.id, token, None, NOW + 5)
    found = storage.run_blocking(sites.site_by_id, site.id)
    assert found is not None and found.verified == NOW + 5
    assert storage.run_blocking(sites.verification_problem, site.id) == ""


def test_site_from_before_verification_gets_a_token(storage: DirectStorage) -> None:
    """A site registered before verification existed is unverified and gets a token on demand."""
    site = make_site(storage, verified=False)
    storage.run_blocking(
        lambda tx: tx.execute("DELETE FROM partner_verifications WHERE site_id = ?", site.id)
    )
    old = storage.run_blocking(sites.site_by_id, site.id)
    assert old is not None and not old.verified and old.verification_token == ""
    token = storage.run_blocking(sites.verification_token, site.id)
    assert token.startswith("clickpass-verify-")
    assert storage.run_blocking(sites.verification_token, site.id) == token

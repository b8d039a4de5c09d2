"""
The OAuth 2 connector (the facebook preset) and the HTTP layer's limits,
against twisted.web resources in memory (treq's RequestTraversalAgent) and
a task.Clock: no sockets, no waiting.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any, Literal

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from clickpass.upstream.connectors import OAuth2Connector, make_connector, resolve
from clickpass.upstream.http import UpstreamError, UpstreamHTTP
from clickpass.upstream.settings import UpstreamProviderSettings, UpstreamSettings


class Graph(Resource):
    """Enough of Facebook's token and profile endpoints."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, str], str]] = []
        self.profile: dict[str, Any] = {"id": 1234, "name": "Fay", "email": "Fay@Example.Test"}
        self.hang = False
        self.big = False

    def render(self, request: Request) -> bytes | int:
        query = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        auth = (request.getHeader(b"authorization") or b"").decode()
        self.seen.append((request.path.decode(), query, auth))
        if self.hang:
            return NOT_DONE_YET
        if self.big:
            return b"[" + b"0," * 40_000 + b"0]"
        if request.path.endswith(b"/access_token"):
            return json.dumps({"access_token": "tok", "token_type": "bearer"}).encode()
        return json.dumps(self.profile).encode()


def settled(agent: RequestTraversalAgent, coroutine: Coroutine[Any, Any, Any]) -> Any:
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    for _ in range(10):
        if results:
            break
        agent.flush()
    assert results, "it did not finish"
    return results[0].value if isinstance(results[0], Failure) else results[0]


def facebook(graph: Graph, clock: Clock) -> tuple[OAuth2Connector, RequestTraversalAgent]:
    agent = RequestTraversalAgent(graph)
    settings = UpstreamSettings(timeout=5.0, max_response_bytes=64 * 1024)
    info = resolve(
        UpstreamProviderSettings(name="fb", kind="facebook", client_id="app"), "app-secret"
    )
    http = UpstreamHTTP(agent, clock, settings.timeout, settings.max_response_bytes)
    connector = make_connector(info, http, settings, clock.seconds)
    assert isinstance(connector, OAuth2Connector)
    return connector, agent


def test_facebook_preset_signs_in_without_trusting_the_email() -> None:
    """
    The code is exchanged with the client secret and PKCE verifier, the
    profile is read with appsecret_proof, the numeric id is the subject,
    and Facebook's email is kept but not trusted.
    """
    graph, clock = Graph(), Clock()
    connector, agent = facebook(graph, clock)
    identity = settled(
        agent, connector.finish("the-code", "https://cp/cb", "", "verifier", None, 0)
    )
    assert (identity.subject, identity.email, identity.email_verified) == (
        "1234",
        "fay@example.test",
        False,
    )
    assert identity.display_name == "Fay"
    (token_path, token_form, _), (profile_path, profile_query, profile_auth) = graph.seen
    assert token_path == "/v19.0/oauth/access_token"
    assert token_form["code_verifier"] == "verifier"
    assert token_form["client_secret"] == "app-secret"
    assert profile_path == "/v19.0/me"
    assert profile_auth == "Bearer tok"
    assert len(profile_query["appsecret_proof"]) == 64


def test_authorization_url_carries_state_and_pkce() -> None:
    """The browser is sent with state, an S256 challenge (not the verifier), and the scopes."""
    connector, agent = facebook(Graph(), Clock())
    url = settled(agent, connector.authorization_url("https://cp/cb", "st", "no", "verifier"))
    assert url.startswith("https://www.facebook.com/v19.0/dialog/oauth?")
    assert "state=st" in url and "code_challenge_method=S256" in url
    assert "verifier" not in url
    assert "scope=email+public_profile" in url


def test_reauthentication_asks_facebook_to_sign_the_person_in_again() -> None:
    """
    A re-authentication's URL carries Facebook's auth_type=reauthenticate
    (it has no prompt=login or max_age); a sign-in's does not.
    """
    connector, agent = facebook(Graph(), Clock())
    again = settled(
        agent, connector.authorization_url("https://cp/cb", "st", "no", "v", reauth=True)
    )
    assert "auth_type=reauthenticate" in again and "prompt=" not in again
    plain = settled(agent, connector.authorization_url("https://cp/cb", "st", "no", "v"))
    assert "auth_type" not in plain


def test_reauthentication_asks_an_oidc_provider_with_max_age_and_prompt() -> None:
    """
    An OpenID Connect provider is asked max_age=0 and prompt=login, unless
    its discovery lists prompts without login; Google (which refuses
    prompt=login) is asked max_age=0 only.
    """

    class Discovery(Resource):
        isLeaf = True

        def __init__(self, issuer: str, prompts: list[str] | None) -> None:
            super().__init__()
            self.document: dict[str, Any] = {
                "issuer": issuer,
                "authorization_endpoint": issuer + "/auth",
                "token_endpoint": issuer + "/token",
                "jwks_uri": issuer + "/jwks",
            }
            if prompts is not None:
                self.document["prompt_values_supported"] = prompts

        def render(self, request: Request) -> bytes:
            return json.dumps(self.document).encode()

    def url_of(kind: Literal["oidc", "google"], issuer: str, prompts: list[str] | None) -> str:
        agent = RequestTraversalAgent(Discovery(issuer, prompts))
        settings = UpstreamSettings(timeout=5.0, max_response_bytes=64 * 1024)
        info = resolve(
            UpstreamProviderSettings(name="op", kind=kind, client_id="c", issuer=issuer), ""
        )
        clock = Clock()
        http = UpstreamHTTP(agent, clock, settings.timeout, settings.max_response_bytes)
        connector = make_connector(info, http, settings, clock.seconds)
        url: str = settled(
            agent, connector.authorization_url("https://cp/cb", "st", "no", "v", reauth=True)
        )
        return url

    op = url_of("oidc", "https://op.example", None)
    assert "max_age=0" in op and "prompt=login" in op
    listed = url_of("oidc", "https://op.example", ["none", "login", "consent"])
    assert "prompt=login" in listed
    unlisted = url_of("oidc", "https://op.example", ["none", "consent"])
    assert "max_age=0" in unlisted and "prompt=" not in unlisted
    google = url_of("google", "https://accounts.google.com", None)
    assert "max_age=0" in google and "prompt=" not in google


def test_profile_without_id_is_refused() -> None:
    """A profile that names no account stops the sign-in."""
    graph, clock = Graph(), Clock()
    graph.profile = {"name": "Nobody"}
    connector, agent = facebook(graph, clock)
    error = settled(agent, connector.finish("c", "https://cp/cb", "", "v", None, 0))
    assert isinstance(error, UpstreamError) and error.reason == "bad_subject"


def test_slow_provider_times_out_on_the_clock() -> None:
    """A request that gets no answer fails when the clock passes the timeout."""
    graph, clock = Graph(), Clock()
    graph.hang = True
    connector, agent = facebook(graph, clock)
    results: list[Any] = []
    d = Deferred.fromCoroutine(connector.finish("c", "https://cp/cb", "", "v", None, 0))
    d.addBoth(results.append)
    agent.flush()
    clock.advance(4.9)
    assert results == []
    clock.advance(0.2)
    assert isinstance(results[0].value, UpstreamError)
    assert results[0].value.reason == "timeout"


def test_oversized_answer_is_refused() -> None:
    """An answer over max_response_bytes is refused, not parsed."""
    graph = Graph()
    graph.big = True
    connector, agent = facebook(graph, Clock())
    error = settled(agent, connector.finish("c", "https://cp/cb", "", "v", None, 0))
    assert isinstance(error, UpstreamError) and error.reason == "too_large"


def test_plain_http_endpoints_are_refused() -> None:
    """The HTTP layer refuses to send anything to a non-https address."""
    agent = RequestTraversalAgent(Graph())
    http = UpstreamHTTP(agent, Clock(), 5.0, 1024)
    error = settled(agent, http.get_json("OP", "http://op.example/x"))
    assert isinstance(error, UpstreamError) and error.reason == "insecure_url"


def test_presets() -> None:
    """The presets fill in issuers, discovery and client authentication."""
    google = resolve(UpstreamProviderSettings(name="g", kind="google", client_id="c"), "s")
    assert google.issuer == "https://accounts.google.com"
    assert google.discovery_url == "https://accounts.google.com/.well-known/openid-configuration"
    assert google.token_auth == "client_secret_post"
    common = resolve(UpstreamProviderSettings(name="m", kind="microsoft", client_id="c"), "s")
    assert common.issuer == "https://login.microsoftonline.com/{tenantid}/v2.0"
    assert common.discovery_url.startswith("https://login.microsoftonline.com/common/v2.0/")
    consumers = resolve(
        UpstreamProviderSettings(name="m", kind="microsoft", client_id="c", tenant="consumers"),
        "s",
    )
    assert consumers.issuer.startswith("https://login.microsoftonline.com/9188040d-")
    public = resolve(
        UpstreamProviderSettings(name="o", kind="oidc", client_id="c", issuer="https://op/"), ""
    )
    assert (public.issuer, public.token_auth) == ("https://op", "none")
    assert public.scopes == ("openid", "email", "profile")

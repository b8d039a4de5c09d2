"""
Where Clickpass restricts or corrects python3-openid, proven against a real
node (twistd, one worker) with real requests: Diffie-Hellman groups,
relying-party discovery only where an answer needs it, claimed identifiers,
OpenID 1's odd requests, realms written in unusual ways, and what is
logged of a request.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from openid import cryptutil
from openid.consumer import consumer
from openid.dh import DiffieHellman
from openid.message import IDENTIFIER_SELECT, OPENID2_NS

from tests.integration.openid.conftest import OPENID_CONFIG
from tests.integration.openid.harness import Person, PythonRP, RelyingPartySite
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

DEFAULT_MODULUS = int(DiffieHellman.DEFAULT_MOD)

# One worker: a request that held it would stall everything else.
HARDENING_CONFIG = (
    OPENID_CONFIG
    + """
[workers]
count = 1
"""
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node on SQLite with a single worker (these checks do not depend on storage)."""
    with running_node(
        tmp_path_factory.mktemp("openid-hardening"), HARDENING_CONFIG, None, "hardening"
    ) as proc:
        yield proc


def endpoint(node: NodeProcess) -> str:
    return node.url + "openid"


def kv(text: str) -> dict[str, str]:
    """A direct response's key-value form."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def answer_args(location: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))


def new_log(node: NodeProcess, offset: int) -> str:
    # The front relays the worker's lines: give it a moment to write them.
    time.sleep(0.3)
    return node.log()[offset:]


def signed_in(node: NodeProcess, site: RelyingPartySite, person: Person) -> str:
    """Sign the person up through C{site} (consenting); return their identifier there."""
    rp = PythonRP(node.url, site.realm, site.return_to, stateful=False)
    answer = person.decide(person.sign_up_and_continue(rp.begin()))
    response = rp.complete(answer.headers["location"])
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    return str(response.identity_url)


def b64(n: int) -> str:
    """An integer as OpenID writes it: two's-complement bytes, base64."""
    return base64.b64encode(cryptutil.longToBinary(n)).decode("ascii")


# Diffie-Hellman.


def test_a_huge_dh_modulus_is_refused_at_once_and_the_worker_keeps_serving(
    node: NodeProcess,
) -> None:
    """
    An associate with a 32768-bit modulus gets OpenID's direct error
    response within a second, and the worker, asked all along (its XRDS
    document: /healthz is answered by the front), keeps answering
    quickly: the modulus is refused before any arithmetic.
    """
    offset = len(node.log())
    modulus = (1 << 32768) - 1
    stop = threading.Event()
    slowest = [0.0]

    def poll_health() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                requests.get(node.url + "openid/xrds", timeout=5).raise_for_status()
            except requests.RequestException:
                slowest[0] = float("inf")
                return
            slowest[0] = max(slowest[0], time.monotonic() - started)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    try:
        started = time.monotonic()
        answer = requests.post(
            endpoint(node),
            data={
                "openid.ns": OPENID2_NS,
                "openid.mode": "associate",
                "openid.assoc_type": "HMAC-SHA256",
                "openid.session_type": "DH-SHA256",
                "openid.dh_modulus": b64(modulus),
                "openid.dh_gen": b64(2),
                "openid.dh_consumer_public": b64(modulus - 5),
            },
            timeout=5,
        )
        took = time.monotonic() - started
        time.sleep(0.5)
    finally:
        stop.set()
        poller.join(15)
    assert answer.status_code == 400, answer.text
    fields = kv(answer.text)
    assert fields["ns"] == OPENID2_NS and "default Diffie-Hellman group" in fields["error"]
    assert took < 1.0
    assert slowest[0] < 1.0
    assert "Traceback" not in new_log(node, offset)


@pytest.mark.parametrize(
    "values",
    [
        {"openid.dh_modulus": b64(5), "openid.dh_gen": b64(2)},
        {"openid.dh_modulus": b64(DEFAULT_MODULUS), "openid.dh_gen": b64(0)},
        {"openid.dh_consumer_public": b64(0)},
        {"openid.dh_consumer_public": b64(1)},
        {"openid.dh_consumer_public": "AA=="},
        {"openid.dh_consumer_public": b64(DEFAULT_MODULUS - 1)},
        {"openid.dh_consumer_public": "not base64 at all!"},
    ],
    ids=[
        "modulus-5",
        "generator-0",
        "public-0",
        "public-1",
        "public-zero-byte",
        "public-p-1",
        "public-junk",
    ],
)
def test_degenerate_dh_values_get_a_direct_error(node: NodeProcess, values: dict[str, str]) -> None:
    """
    A modulus other than the default group's, a generator of 0, and a
    relying party's public value of 0, 1 or p - 1 (or not a number) are each
    refused with OpenID's direct error response (400, key-value form).
    """
    offset = len(node.log())
    data = {
        "openid.ns": OPENID2_NS,
        "openid.mode": "associate",
        "openid.assoc_type": "HMAC-SHA1",
        "openid.session_type": "DH-SHA1",
        "openid.dh_consumer_public": b64(12345678901234567890),
        **values,
    }
    answer = requests.post(endpoint(node), data=data, timeout=10)
    assert answer.status_code == 400, answer.text
    assert "error" in kv(answer.text), answer.text
    assert "Traceback" not in new_log(node, offset)


def test_a_default_group_associate_still_works(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    python3-openid's consumer (default group, DH-SHA1) still associates
    and signs in statefully: the restriction costs well-behaved relying
    parties nothing.
    """
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to, stateful=True)
    answer = person.decide(person.sign_up_and_continue(rp.begin()))
    response = rp.complete(answer.headers["location"])
    assert response.status == consumer.SUCCESS, getattr(response, "message", "")
    assert rp.store is not None and rp.store.getAssociation(endpoint(node)) is not None


# Relying-party discovery only where an answer needs it.


def immediate_query(site: RelyingPartySite) -> dict[str, str]:
    return {
        "openid.ns": OPENID2_NS,
        "openid.mode": "checkid_immediate",
        "openid.identity": IDENTIFIER_SELECT,
        "openid.claimed_id": IDENTIFIER_SELECT,
        "openid.return_to": site.return_to,
        "openid.realm": site.realm,
    }


def test_an_unapproved_immediate_request_is_answered_without_fetching_the_realm(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    checkid_immediate from a realm the person never approved gets
    setup_needed without any fetch of that realm, signed in or not: a
    per-visitor realm learns nothing about whether its visitor is signed in.
    """
    signed_in(node, rp_site, person)
    fresh = RelyingPartySite("127.0.0.1").start()
    try:
        answer = person.browser.session.get(
            endpoint(node), params=immediate_query(fresh), allow_redirects=False, timeout=10
        )
        assert answer.status_code == 302, answer.text
        assert answer_args(answer.headers["location"])["openid.mode"] == "setup_needed"
        signed_out = requests.get(
            endpoint(node), params=immediate_query(fresh), allow_redirects=False, timeout=10
        )
        assert answer_args(signed_out.headers["location"])["openid.mode"] == "setup_needed"
        assert fresh.fetches == 0
    finally:
        fresh.stop()


# Claimed identifiers.


def test_a_claimed_id_of_someone_else_under_id_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    A request naming the person's own identifier as openid.identity but
    another identifier of ours as openid.claimed_id is refused (a page for
    checkid_setup, setup_needed for checkid_immediate); nothing is signed
    for that claimed_id.
    """
    own = signed_in(node, rp_site, person)
    other = node.url + "id/" + "a" * 32
    for mode in ("checkid_setup", "checkid_immediate"):
        query = {
            "openid.ns": OPENID2_NS,
            "openid.mode": mode,
            "openid.identity": own,
            "openid.claimed_id": other,
            "openid.return_to": rp_site.return_to,
            "openid.realm": rp_site.realm,
        }
        answer = person.browser.session.get(
            endpoint(node), params=query, allow_redirects=False, timeout=10
        )
        if mode == "checkid_setup":
            assert answer.status_code == 403, (answer.status_code, answer.text)
            assert "not yours" in answer.text
        else:
            assert answer.status_code == 302, answer.text
            args = answer_args(answer.headers["location"])
            assert args["openid.mode"] == "setup_needed"
            assert "openid.sig" not in args


# OpenID 1's odd requests.


def test_openid1_associate_without_session_type_gets_an_error_answer(
    node: NodeProcess,
) -> None:
    """
    An OpenID 1 associate without session_type (the library reads it as
    no-encryption, which a provider without TLS does not allow) gets a
    direct error response, not a 500, and no traceback is logged.
    """
    offset = len(node.log())
    answer = requests.post(
        endpoint(node),
        data={"openid.mode": "associate", "openid.assoc_type": "HMAC-SHA1"},
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    assert "no-encryption" in kv(answer.text)["error"]
    log = new_log(node, offset)
    assert "Traceback" not in log and "Unhandled" not in log


def test_openid1_checkid_setup_with_trust_root_for_an_approved_realm_is_answered(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    OpenID 1's checkid_setup (trust_root, no namespace) from a realm the
    person approved gets a signed positive answer for their identifier,
    which the provider then confirms (check_authentication). Asking OpenID 1
    for the OP Identifier or identifier_select (directed identity, which
    OpenID 1 does not have) gets the page for an identity that is not the
    person's. No traceback either way.
    """
    own = signed_in(node, rp_site, person)
    offset = len(node.log())
    for identity in (node.url, IDENTIFIER_SELECT):
        refused = person.browser.session.get(
            endpoint(node),
            params={
                "openid.mode": "checkid_setup",
                "openid.identity": identity,
                "openid.return_to": rp_site.return_to,
                "openid.trust_root": rp_site.realm,
            },
            allow_redirects=False,
            timeout=10,
        )
        assert refused.status_code == 403, (identity, refused.status_code, refused.text)
        assert "not yours" in refused.text
    answer = person.browser.session.get(
        endpoint(node),
        params={
            "openid.mode": "checkid_setup",
            "openid.identity": own,
            "openid.return_to": rp_site.return_to,
            "openid.trust_root": rp_site.realm,
        },
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(rp_site.return_to + "?")
    args = answer_args(location)
    assert args["openid.mode"] == "id_res" and args["openid.identity"] == own
    check = requests.post(
        endpoint(node), data={**args, "openid.mode": "check_authentication"}, timeout=10
    )
    assert kv(check.text)["is_valid"] == "true", check.text
    assert "Traceback" not in new_log(node, offset)


# What is logged of a request.


def test_a_huge_signed_list_is_not_logged_in_full(node: NodeProcess) -> None:
    """
    A check_authentication with a 64 KB openid.signed is answered
    is_valid:false, and the log grows by a bounded amount, not by the field.
    """
    offset = len(node.log())
    answer = requests.post(
        endpoint(node),
        data={
            "openid.ns": OPENID2_NS,
            "openid.mode": "check_authentication",
            "openid.assoc_handle": "{HMAC-SHA1}{0}{nothing}",
            "openid.sig": base64.b64encode(b"x" * 20).decode(),
            "openid.signed": ",".join(["x" * 60] * 1000),
            "openid.response_nonce": "2026-12-06T00:00:00Zabc",
        },
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert kv(answer.text)["is_valid"] == "false"
    assert len(new_log(node, offset)) < 4096


# Randomness.


def test_every_worker_draws_the_librarys_randomness_from_the_os(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """
    In each worker of a real node, once the application is built as every
    worker builds it (tests/integration/openid/randomness_app.py adds only
    a look afterwards), python3-openid's DH private keys and nonces come
    from the OS's CSPRNG: the library's randrange is the patched one, and
    making a key and a nonce leaves Python's Mersenne Twister untouched.
    """
    config = (
        OPENID_CONFIG
        + """
[workers]
count = 2
app = "tests.integration.openid.randomness_app:build"
"""
    )
    with running_node(
        tmp_path_factory.mktemp("openid-randomness"), config, None, "randomness"
    ) as proc:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = re.findall(r"randomness in worker (\d+): (.*)", proc.log())
            if len(lines) >= 2:
                break
            time.sleep(0.1)
        assert len({pid for pid, _ in lines}) == 2, proc.log()[-2000:]
        assert all(found == "os=True random_untouched=True" for _, found in lines), lines
        assert requests.get(proc.url + "readyz", timeout=10).status_code == 200


# Realms written in unusual ways.


def checkid(site_realm: str, return_to: str, mode: str = "checkid_setup") -> dict[str, str]:
    return {
        "openid.ns": OPENID2_NS,
        "openid.mode": mode,
        "openid.identity": IDENTIFIER_SELECT,
        "openid.claimed_id": IDENTIFIER_SELECT,
        "openid.return_to": return_to,
        "openid.realm": site_realm,
    }


def test_a_percent_escaped_realm_is_the_same_site(
    node: NodeProcess, other_site: RelyingPartySite, person: Person
) -> None:
    """
    A realm whose host is written with percent-escapes
    (http://%6Cocalhost:port/ for http://localhost:port/) is the site it
    names: the person's approval of it holds, and the assertion carries the
    same per-site identifier (one sector), for the realm's own return_to.
    """
    own = signed_in(node, other_site, person)
    escaped = other_site.realm.replace("//localhost", "//%6Cocalhost")
    answer = person.browser.session.get(
        endpoint(node),
        params=checkid(escaped, other_site.return_to),
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text
    args = answer_args(answer.headers["location"])
    assert args["openid.mode"] == "id_res"
    assert args["openid.claimed_id"] == own
    assert answer.headers["location"].startswith(other_site.return_to + "?")


def test_a_non_ascii_realm_host_is_read_as_its_idna_name(node: NodeProcess) -> None:
    """
    A realm with a non-ASCII host is the host its IDNA name says: a
    return_to written with that punycode name is inside the realm (the
    library alone read the host as Latin-1, another host, and refused it);
    a signed-out visitor is sent to sign in.
    """
    answer = requests.get(
        endpoint(node),
        params=checkid("http://bücher.example/", "http://xn--bcher-kva.example/return"),
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303, answer.text
    next_url = answer_args(answer.headers["location"])["next"]
    assert "xn--bcher-kva.example" in next_url and "b%C3%BCcher" not in next_url


def test_a_wildcard_over_a_public_suffix_is_refused(node: NodeProcess) -> None:
    """
    http://*.github.io/ covers every GitHub Pages site: the Public Suffix
    List says github.io is a suffix anyone registers under, so the realm is
    refused as too broad, as http://*.com/ is. A wildcard over a registrable
    domain is accepted (a signed-out visitor is sent to sign in).
    """
    for realm, return_to in [
        ("http://*.github.io/", "http://someone.github.io/return"),
        ("http://*.co.uk/", "http://example.co.uk/return"),
    ]:
        answer = requests.get(
            endpoint(node), params=checkid(realm, return_to), allow_redirects=False, timeout=10
        )
        assert answer.status_code == 400, (realm, answer.status_code)
        assert "too broad" in answer.text
    fine = requests.get(
        endpoint(node),
        params=checkid("http://*.example.com/", "http://www.example.com/return"),
        allow_redirects=False,
        timeout=10,
    )
    assert fine.status_code == 303, fine.text


def test_conflicting_namespace_aliases_get_an_error_answer(node: NodeProcess) -> None:
    """
    Two namespace aliases for one URI (the library raises KeyError making a
    message of them) get OpenID's direct error response for a direct
    request and an error page for a browser's; no traceback is logged.
    """
    offset = len(node.log())
    aliases = {"openid.ns.sreg": "http://x.example/", "openid.ns.ax": "http://x.example/"}
    direct = requests.post(endpoint(node), data={"openid.mode": "associate", **aliases}, timeout=10)
    assert direct.status_code == 400, direct.text
    assert "namespace aliases conflict" in kv(direct.text)["error"]
    browser = requests.get(
        endpoint(node), params={"openid.mode": "checkid_setup", **aliases}, timeout=10
    )
    assert browser.status_code == 400 and "Clickpass cannot use" in browser.text
    assert "Traceback" not in new_log(node, offset)


# Sizes.


def test_a_request_too_long_for_a_browser_address_gets_a_page(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    A request whose answer would be a redirect longer than a browser
    address can be (a 60 KB identity carried through sign-in; OpenID 1's
    answers to a 30 KB return_to, which OpenID 1 can only redirect) gets a
    page saying so, not a 502 from the front.
    """
    long_identity = {
        "openid.ns": OPENID2_NS,
        "openid.mode": "checkid_setup",
        "openid.identity": "x," * 30_000,
        "openid.claimed_id": IDENTIFIER_SELECT,
        "openid.return_to": rp_site.return_to,
        "openid.realm": rp_site.realm,
    }
    signed_out = requests.post(
        endpoint(node), data=long_identity, allow_redirects=False, timeout=10
    )
    assert signed_out.status_code == 400, (signed_out.status_code, signed_out.text[:300])
    assert "too long" in signed_out.text
    signed_in(node, rp_site, person)
    openid1 = {
        "openid.mode": "checkid_immediate",
        "openid.identity": node.url + "id/" + "a" * 32,
        "openid.return_to": rp_site.return_to + "?" + "y" * 30_000,
        "openid.trust_root": rp_site.realm,
    }
    answer = person.browser.session.post(
        endpoint(node), data=openid1, allow_redirects=False, timeout=10
    )
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert "too long" in answer.text


def test_values_that_cannot_be_signed_get_a_page(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    """
    From a realm the person approved: an assoc_handle with a newline, and
    an AX alias with one (echoed into the answer's keys), cannot be put in
    key-value form, which the library signs; each gets a page, not a 500,
    and no traceback is logged.
    """
    signed_in(node, rp_site, person)
    offset = len(node.log())
    checkid = immediate_query(rp_site) | {"openid.mode": "checkid_setup"}
    bad_handle = checkid | {"openid.assoc_handle": "\n"}
    bad_alias = checkid | {
        "openid.ns.ax": "http://openid.net/srv/ax/1.0",
        "openid.ax.mode": "fetch_request",
        "openid.ax.type.e\nmail": "http://axschema.org/contact/email",
        "openid.ax.required": "e\nmail",
    }
    for query in (bad_handle, bad_alias):
        answer = person.browser.session.get(
            endpoint(node), params=query, allow_redirects=False, timeout=10
        )
        assert answer.status_code == 400, (answer.status_code, answer.text[:300])
        assert "location" not in answer.headers
    assert "Traceback" not in new_log(node, offset)

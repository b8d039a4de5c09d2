"""
A bounded property-based fuzz (Hypothesis) of the OpenID endpoint through
a real node: arbitrary openid.* arguments (known fields with odd values,
unknown fields, control and non-ASCII characters, invalid UTF-8, values up
to past the 64 KiB limit), by GET and by POST, signed out and signed in.
No answer is a 5xx, the node logs no traceback, no worker is replaced, and
a normal sign-in works afterwards.

Relying-party discovery fetches realms: signed in, realms and return_to
stay on this machine's loopback relying party, so the fuzz sends nothing
past loopback (signed out, nothing is fetched).
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openid import cryptutil
from openid.consumer import consumer
from openid.dh import DiffieHellman
from openid.message import IDENTIFIER_SELECT, OPENID1_NS, OPENID2_NS

from tests.integration.openid.conftest import OPENID_CONFIG
from tests.integration.openid.harness import Person, PythonRP, RelyingPartySite
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

# Bounded in time: about 10-15 s on a loaded 2-core machine. Set
# CLICKPASS_FUZZ_EXAMPLES to run longer (250 or more), with fresh random examples.
EXAMPLES = int(os.environ.get("CLICKPASS_FUZZ_EXAMPLES", "100"))
DERANDOMIZE = "CLICKPASS_FUZZ_EXAMPLES" not in os.environ

MODES = [
    "checkid_setup",
    "checkid_immediate",
    "associate",
    "check_authentication",
    "id_res",
    "cancel",
    "",
]
FIELDS = [
    "ns",
    "mode",
    "identity",
    "claimed_id",
    "return_to",
    "realm",
    "trust_root",
    "assoc_handle",
    "assoc_type",
    "session_type",
    "dh_modulus",
    "dh_gen",
    "dh_consumer_public",
    "sig",
    "signed",
    "response_nonce",
    "invalidate_handle",
    "op_endpoint",
    "ns.sreg",
    "sreg.required",
    "sreg.optional",
    "sreg.policy_url",
    "ns.ax",
    "ax.mode",
    "ax.type.email",
    "ax.required",
    "ax.count.email",
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node on SQLite with two workers."""
    config = OPENID_CONFIG + "\n[workers]\ncount = 2\n"
    with running_node(tmp_path_factory.mktemp("openid-fuzz"), config, None, "fuzz") as proc:
        yield proc


def urls(loopback: list[str]) -> st.SearchStrategy[str]:
    """URLs, odd ones included; with C{loopback}, only those (and variants) for fetching."""
    odd = st.sampled_from(
        [
            "http://%6Cocalhost:1/",
            "http://*.github.io/",
            "http://*.com/",
            "http://bücher.example/",
            "http://%ff.example/",
            "http://[::1]/",
            "http://user@example.com/",
            "javascript:alert(1)",
            "http://example.com:99999999/",
            "http://exa%00mple.com/",
            "//example.com/",
            "http://example.com/\x7f",
        ]
    )
    if loopback:
        base = st.sampled_from(loopback)
        return st.one_of(base, st.builds(lambda b, s: b + s, base, st.text(max_size=20)))
    return st.one_of(odd, st.text(max_size=60), st.builds(lambda s: "http://" + s, st.text()))


def values(loopback: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(MODES),
        st.sampled_from([OPENID2_NS, OPENID1_NS, IDENTIFIER_SELECT, "http://other.example/"]),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
        urls(loopback),
        st.integers(min_value=-1, max_value=1 << 4096).map(str),
        st.sampled_from(["A" * 70_000, "x," * 30_000, "\x00" * 100]),
    )


# A relying party's DH public value in the default group (made once, outside
# the strategies: Hypothesis wants them free of the random module).
PUBLIC = pow(
    int(DiffieHellman.DEFAULT_GEN),
    secrets.randbelow(int(DiffieHellman.DEFAULT_MOD) - 3) + 2,
    int(DiffieHellman.DEFAULT_MOD),
)

PLACES = ("openid.realm", "openid.trust_root", "openid.return_to")


def arguments(loopback: list[str]) -> st.SearchStrategy[dict[str, str]]:
    """
    openid.* arguments. With C{loopback} (signed in: discovery fetches the
    realm), the realm and return_to are only loopback addresses.
    """
    keys = st.one_of(st.sampled_from(FIELDS), st.text(min_size=1, max_size=20))
    places = st.fixed_dictionaries({}, optional={key: urls(loopback) for key in PLACES})

    def build(mode: str, ns: dict[str, str], extra: dict[str, str], place: dict[str, str]) -> Any:
        if loopback:
            extra = {k: v for k, v in extra.items() if k not in PLACES}
        return {**extra, **place, "openid.mode": mode, **ns}

    return st.builds(
        build,
        st.sampled_from(MODES),
        st.sampled_from([{}, {"openid.ns": OPENID2_NS}, {"openid.ns": OPENID1_NS}]),
        st.dictionaries(keys.map(lambda k: "openid." + k), values(loopback), max_size=8),
        places,
    )


def templates(realm: str, return_to: str) -> list[dict[str, str]]:
    """Well-formed requests of each mode, for the fuzz to change a little."""
    checkid = {
        "openid.ns": OPENID2_NS,
        "openid.identity": IDENTIFIER_SELECT,
        "openid.claimed_id": IDENTIFIER_SELECT,
        "openid.return_to": return_to,
        "openid.realm": realm,
        "openid.ns.sreg": "http://openid.net/extensions/sreg/1.1",
        "openid.sreg.required": "email",
    }
    public = base64.b64encode(cryptutil.longToBinary(PUBLIC)).decode("ascii")
    return [
        {**checkid, "openid.mode": "checkid_setup"},
        {**checkid, "openid.mode": "checkid_immediate"},
        {
            "openid.mode": "checkid_setup",
            "openid.identity": IDENTIFIER_SELECT,
            "openid.return_to": return_to,
            "openid.trust_root": realm,
        },
        {
            "openid.ns": OPENID2_NS,
            "openid.mode": "associate",
            "openid.assoc_type": "HMAC-SHA256",
            "openid.session_type": "DH-SHA256",
            "openid.dh_consumer_public": public,
        },
        {
            "openid.ns": OPENID2_NS,
            "openid.mode": "check_authentication",
            "openid.assoc_handle": "{HMAC-SHA1}{0}{x}",
            "openid.signed": "mode,identity,return_to,response_nonce",
            "openid.sig": "AAAA",
            "openid.response_nonce": "2026-12-06T00:00:00Zx",
            "openid.identity": realm,
            "openid.return_to": return_to,
        },
    ]


def near_valid(
    realm: str, return_to: str, loopback: list[str]
) -> st.SearchStrategy[dict[str, str]]:
    """A well-formed request with up to three fields changed, added or removed."""
    keys = st.sampled_from(FIELDS).map(lambda k: "openid." + k)
    if loopback:
        keys = keys.filter(lambda k: k not in PLACES)

    def change(template: dict[str, str], update: dict[str, str], drop: list[str]) -> Any:
        return {k: v for k, v in {**template, **update}.items() if k not in drop}

    return st.builds(
        change,
        st.sampled_from(templates(realm, return_to)),
        st.dictionaries(keys, values(loopback), max_size=3),
        st.lists(keys, max_size=2),
    )


def send(
    session: requests.Session, url: str, args: dict[str, str], how: str, raw: bytes
) -> requests.Response:
    if how == "get":
        return session.get(url, params=args, allow_redirects=False, timeout=30)
    if how == "post":
        return session.post(url, data=args, allow_redirects=False, timeout=30)
    # A form body with bytes that are not UTF-8 in a value.
    body = "&".join(
        quote_from_bytes(k.encode("utf-8", "surrogatepass"))
        + "="
        + quote_from_bytes(v.encode("utf-8", "surrogatepass"))
        for k, v in args.items()
    )
    body += "&openid.identity=" + quote_from_bytes(raw)
    return session.post(
        url,
        data=body.encode("ascii"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        allow_redirects=False,
        timeout=30,
    )


def test_the_endpoint_survives_arbitrary_requests(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person
) -> None:
    endpoint = node.url + "openid"
    # A person signed in and approved at the loopback relying party.
    rp = PythonRP(node.url, rp_site.realm, rp_site.return_to, stateful=False)
    person.decide(person.sign_up_and_continue(rp.begin()))
    signed_in = person.browser.session
    signed_out = requests.Session()
    offset = len(node.log())
    started = time.monotonic()
    seen: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.booleans().flatmap(
            lambda inside: st.tuples(
                st.just(inside),
                st.one_of(
                    arguments([rp_site.realm, rp_site.return_to] if inside else []),
                    near_valid(
                        rp_site.realm,
                        rp_site.return_to,
                        [rp_site.realm, rp_site.return_to] if inside else [],
                    ),
                ),
                st.sampled_from(["get", "post", "raw"]),
                st.binary(max_size=30),
            )
        )
    )
    def one(example: tuple[bool, dict[str, str], str, bytes]) -> None:
        inside, args, how, raw = example
        session = signed_in if inside else signed_out
        answer = send(session, endpoint, args, how, raw)
        seen.append(answer.status_code)
        assert answer.status_code < 500, (args, how, answer.status_code, answer.text[:500])

    one()
    took = time.monotonic() - started
    time.sleep(0.5)
    log = node.log()[offset:]
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert "Unhandled" not in log
    assert " spawned in slot" not in log and "replac" not in log, log[-3000:]
    assert len(seen) >= EXAMPLES // 2
    # A normal sign-in still works.
    again = PythonRP(node.url, rp_site.realm, rp_site.return_to, stateful=True)
    answer: Any = person.open(again.begin(immediate=True))
    assert answer.status_code == 302, answer.text
    result = again.complete(answer.headers["location"])
    assert result.status == consumer.SUCCESS, getattr(result, "message", "")
    print(f"fuzz: {len(seen)} requests in {took:.1f}s, statuses {sorted(set(seen))}")

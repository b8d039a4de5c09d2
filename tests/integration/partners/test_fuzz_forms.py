"""
A bounded property-based fuzz (Hypothesis) of the pages' forms and of the
partner API through a real node: arbitrary fields and values (control and
non-ASCII characters, invalid UTF-8, odd types and sizes), with and without
a valid CSRF token or API key, signed in and signed out. No answer is a 5xx,
the node logs no traceback, no worker is replaced, and the node still signs
people up and in afterwards. (The OpenID endpoint has its own fuzz in
tests/integration/openid/test_fuzz.py.)

Nothing is sent past loopback: every URL a value may hold that a node could
fetch (a realm to verify, a webhook) names this machine's loopback.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.partners.conftest import (
    NODE_CONFIG,
    PASSWORD,
    RegisteredSite,
    TokenServer,
    register_site,
)
from tests.support.browser import Browser, csrf_token
from tests.support.node import NodeProcess, running_node

pytestmark = pytest.mark.integration

# Bounded in time: about 5-10 s each on a loaded 2-core machine. Set
# CLICKPASS_FUZZ_EXAMPLES to run longer (400 or more), with fresh random examples.
EXAMPLES = int(os.environ.get("CLICKPASS_FUZZ_EXAMPLES", "150"))
DERANDOMIZE = "CLICKPASS_FUZZ_EXAMPLES" not in os.environ
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# The pages' forms, with {site}, {key}... filled from a registered site. The
# forms that would end the fuzz's own session or site (sign out, delete the
# site) get arbitrary fields but never a valid CSRF token.
FORMS = [
    "/signup",
    "/signin",
    "/account/approvals/forget",
    "/partner/register",
    "/partner/connect",
    "/partner/cancel",
    "/account/sites/disconnect",
    "/upstream/{word}/start",
    "/upstream/{word}/link",
    "/account/upstream/unlink",
    "/partners/new",
    "/partners/invitations/{word}",
    "/partners/{site}/settings",
    "/partners/{site}/verify",
    "/partners/{site}/keys",
    "/partners/{site}/keys/{word}/revoke",
    "/partners/{site}/admins",
    "/partners/{site}/admins/{word}/remove",
    "/partners/{site}/invitations/{word}/withdraw",
    "/partners/{site}/webhook-secret",
    "/partners/{site}/deletion-requests/{word}/complete",
]
NEVER_WITH_TOKEN = ["/signout", "/partners/{site}/delete"]
FIELDS = [
    "email",
    "password",
    "password_again",
    "next",
    "realm",
    "name",
    "logo_url",
    "return_to_urls",
    "registration_url",
    "connect_url",
    "webhook_url",
    "requested_fields",
    "required_fields",
    "label",
    "host",
    "site",
    "decision",
    "remember",
    "fields",
]


def loopback_urls(realm: str) -> st.SearchStrategy[str]:
    base = st.sampled_from([realm, realm + "return", "http://127.0.0.1:1/"])
    return st.one_of(base, st.builds(lambda b, s: b + s, base, st.text(max_size=20)))


def texts(realm: str) -> st.SearchStrategy[str]:
    """Field values: anything, except a URL the node could fetch that is not loopback."""
    anything = st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
        st.sampled_from(["", " ", "\x00", "a" * 5000, "x@example.com", "%00", "\u202e", "../"]),
        st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
    ).filter(lambda v: "//" not in v)
    return st.one_of(anything, loopback_urls(realm))


def form_body(fields: list[tuple[str, str]], raw: bytes) -> bytes:
    """A form body; C{raw} goes in as a value that need not be UTF-8."""
    pairs = [
        quote_from_bytes(k.encode("utf-8", "surrogatepass"))
        + "="
        + quote_from_bytes(v.encode("utf-8", "surrogatepass"))
        for k, v in fields
    ]
    if raw:
        pairs.append("next=" + quote_from_bytes(raw))
    return "&".join(pairs).encode("ascii")


def json_values(realm: str) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(1 << 80), max_value=1 << 80),
        st.floats(allow_nan=False, allow_infinity=False),
        texts(realm),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=10), inner, max_size=4),
        ),
        max_leaves=10,
    )


SITE_KEYS = [
    "name",
    "logo_url",
    "return_to_urls",
    "registration_url",
    "connect_url",
    "webhook_url",
    "requested_fields",
    "required_fields",
    "realm",
    "verified",
]


def assert_node_healthy(node: NodeProcess, offset: int) -> None:
    time.sleep(0.5)
    log = node.log()[offset:]
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert "Unhandled" not in log, log[-3000:]
    assert " spawned in slot" not in log and "replac" not in log, log[-3000:]
    # It still signs a new person up, and a returning one in.
    email = f"after-{secrets.token_hex(4)}@example.com"
    fresh = Browser(node.url)
    assert fresh.sign_up(email, PASSWORD).ok
    again = Browser(node.url)
    signed_in = again.sign_in(email, PASSWORD)
    assert signed_in.ok, signed_in.text[:2000]
    assert again.get("/account").status_code == 200


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node on SQLite with two workers, its sign-in limits out of the fuzz's way."""
    config = (
        NODE_CONFIG
        + "\n[workers]\ncount = 2\n"
        + "\n[accounts]\nthrottle_per_address = 100000\nhash_queue = 64\n"
    )
    with running_node(tmp_path_factory.mktemp("forms-fuzz"), config, None, "fuzz") as proc:
        yield proc


@pytest.fixture(scope="module")
def site(node: NodeProcess) -> Iterator[RegisteredSite]:
    """A verified partner site on 127.0.0.3, with an API key and a signed-in admin."""
    server = TokenServer("127.0.0.3")
    try:
        yield register_site(node, server.realm, publish=server.publish)
    finally:
        server.stop()


def test_the_partner_api_survives_arbitrary_requests(
    node: NodeProcess, site: RegisteredSite
) -> None:
    """Arbitrary methods, paths, keys and bodies on the partner API: never a 5xx."""
    api = node.url + "api/v1"
    session = requests.Session()
    offset = len(node.log())
    seen: list[int] = []
    paths = st.one_of(
        st.sampled_from(["/site", "/identifiers", "/deletion-requests", "", "/"]),
        st.builds(lambda w: "/identifiers/" + w, st.text(max_size=30)),
        st.builds(lambda w: "/deletion-requests/" + w + "/complete", st.text(max_size=12)),
        st.builds(lambda w: "/" + w, st.text(max_size=30)),
    )
    auths = st.one_of(
        st.just("Bearer " + site.api_key),
        st.just(""),
        st.builds(lambda t: "Bearer " + t, st.text(max_size=80)),
        st.builds(lambda t: "Bearer " + site.api_key + t, st.text(min_size=1, max_size=5)),
        st.text(max_size=40),
    )
    bodies = st.one_of(
        st.fixed_dictionaries({}, optional={key: json_values(site.realm) for key in SITE_KEYS}).map(
            lambda d: json.dumps(d).encode()
        ),
        json_values(site.realm).map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.sampled_from([b"", b"{", b'{"name": NaN}', b'{"name": 1e999}', b"[" * 5000]),
    )

    anything = st.tuples(
        st.sampled_from(["GET", "PATCH", "POST", "DELETE", "PUT"]),
        paths,
        auths,
        bodies,
        st.sampled_from(["application/json", "text/plain", ""]),
    )
    # Half the requests get past the key and the content type, so the
    # settings' own checks are what is fuzzed.
    settings_changes = st.tuples(
        st.just("PATCH"),
        st.just("/site"),
        st.just("Bearer " + site.api_key),
        # One or two settings at a time, mostly of the type the API takes,
        # so that most get past the type check to the settings' own checks.
        st.dictionaries(
            st.sampled_from(SITE_KEYS),
            st.one_of(texts(site.realm), st.lists(texts(site.realm), max_size=3)),
            min_size=1,
            max_size=2,
        ).map(lambda d: json.dumps(d).encode()),
        st.just("application/json"),
    )

    @SETTINGS
    @given(st.one_of(anything, settings_changes))
    def one(request: tuple[str, str, str, bytes, str]) -> None:
        method, path, auth, body, content_type = request
        headers = {"Content-Type": content_type} if content_type else {}
        if auth:
            # requests refuses header values it cannot send; send what it can.
            headers["Authorization"] = auth.encode("utf-8").decode("latin-1")
        url = api + quote_from_bytes(path.encode("utf-8", "surrogatepass"), safe="/")
        try:
            answer = session.request(
                method, url, data=body, headers=headers, allow_redirects=False, timeout=30
            )
        except ValueError:
            return  # a header requests itself will not send
        seen.append(answer.status_code)
        assert answer.status_code < 500, (method, path, body[:200], answer.text[:500])

    one()
    assert len(seen) >= EXAMPLES // 2
    # The key still works, and the site still reads back as JSON.
    good = session.get(api + "/site", headers={"Authorization": "Bearer " + site.api_key})
    assert good.status_code == 200 and good.json()["id"] == site.public_id
    assert_node_healthy(node, offset)
    print(f"api fuzz: {len(seen)} requests, statuses {sorted(set(seen))}")


def test_the_pages_forms_survive_arbitrary_posts(node: NodeProcess, site: RegisteredSite) -> None:
    """Arbitrary fields on every form, with and without a valid CSRF token: never a 5xx."""
    admin = site.admin
    admin_token = csrf_token(admin.get(f"/partners/{site.public_id}").text)
    stranger = Browser(node.url)
    stranger_token = csrf_token(stranger.get("/signin").text)
    offset = len(node.log())
    seen: list[int] = []
    words = st.one_of(st.text(max_size=20), st.sampled_from(["1", "0", "-1", site.public_id]))

    def fill(path: str, word: str) -> str:
        filled = path.replace("{site}", site.public_id).replace("{word}", word)
        return quote_from_bytes(filled.encode("utf-8", "surrogatepass"), safe="/")

    fields = st.lists(
        st.tuples(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)), texts(site.realm)),
        max_size=10,
    )
    # (path, as the admin, with a valid CSRF token, fields)
    arbitrary = st.builds(
        lambda form, admin, word, pairs: (fill(form[0], word), admin, form[1], pairs),
        st.one_of(
            st.tuples(st.sampled_from(FORMS), st.booleans()),
            st.tuples(st.sampled_from(NEVER_WITH_TOKEN), st.just(False)),
        ),
        st.booleans(),
        words,
        fields,
    )
    # Well-formed posts with one or two fields changed, so that most get past
    # the first check to the form's own handling.
    realm = site.realm
    site_form = {
        "name": "Example Partner",
        "realm": realm,
        "return_to_urls": realm + "return?*",
        "registration_url": realm + "register",
        "connect_url": realm + "connect",
        "logo_url": "",
        "webhook_url": "",
        "requested_fields": "email",
        "required_fields": "email",
    }
    templates = [
        (f"/partners/{site.public_id}/settings", True, site_form),
        ("/partners/new", True, {**site_form, "realm": "http://127.0.0.9:1/"}),
        ("/signup", False, {"email": "x@example.com", "password": PASSWORD, "next": "/account"}),
        ("/signin", False, {"email": "x@example.com", "password": PASSWORD, "next": "/account"}),
        ("/account/approvals/forget", True, {"realm": realm}),
        ("/account/sites/disconnect", True, {"site": site.public_id}),
    ]

    def change(
        template: tuple[str, bool, dict[str, str]], update: dict[str, str]
    ) -> tuple[str, bool, bool, list[tuple[str, str]]]:
        path, as_admin, base = template
        filled = {**base, **update}
        if path == "/signup":
            filled.setdefault("password_again", filled["password"])
        return path, as_admin, True, list(filled.items())

    near_valid = st.builds(
        change,
        st.sampled_from(templates),
        st.dictionaries(st.sampled_from(FIELDS), texts(realm), min_size=1, max_size=2),
    )

    @SETTINGS
    @given(st.one_of(arbitrary, near_valid), st.one_of(st.just(b""), st.binary(max_size=30)))
    def one(post: tuple[str, bool, bool, list[tuple[str, str]]], raw: bytes) -> None:
        path, as_admin, with_token, pairs = post
        browser, token = (admin, admin_token) if as_admin else (stranger, stranger_token)
        if with_token:
            pairs = [("csrf_token", token), *pairs]
        answer = browser.session.post(
            browser.url(path),
            data=form_body(pairs, raw),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            allow_redirects=False,
            timeout=30,
        )
        seen.append(answer.status_code)
        assert answer.status_code < 500, (path, pairs[:5], answer.status_code, answer.text[:500])

    one()
    assert len(seen) >= EXAMPLES // 2
    # The admin is still signed in and the console still shows the site.
    console = admin.get(f"/partners/{site.public_id}")
    assert console.status_code == 200
    assert re.search(re.escape(site.public_id), console.text)
    assert_node_healthy(node, offset)
    print(f"forms fuzz: {len(seen)} requests, statuses {sorted(set(seen))}")

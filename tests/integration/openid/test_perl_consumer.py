"""
Interop with Perl's Net::OpenID::Consumer (rp.pl) against a real node:
directed identity, stateful and stateless, SReg email, and refusals.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.integration.openid.harness import Person, RelyingPartySite, perl_rp
from tests.support.node import NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.perl,
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]


def cache_for(stateful: bool, tmp_path: Path) -> str:
    return str(tmp_path / "rp-cache.storable") if stateful else "-"


def sign_in(node: NodeProcess, site: RelyingPartySite, person: Person, cache: str) -> str:
    """A new person signs in at the Perl relying party; return the provider's answer URL."""
    check_url = perl_rp("begin", node.url, site.realm, site.return_to, cache)
    assert check_url.startswith(node.url + "openid?"), check_url
    args = dict(parse_qsl(urlsplit(check_url).query))
    assert args["openid.identity"] == "http://specs.openid.net/auth/2.0/identifier_select"
    answer = person.decide(person.sign_up_and_continue(check_url))
    assert answer.status_code == 302, answer.text
    return str(answer.headers["location"])


@pytest.mark.parametrize("stateful", [True, False], ids=["stateful", "stateless"])
def test_directed_identity_sign_in_with_sreg_email(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person, stateful: bool, tmp_path: Path
) -> None:
    """Net::OpenID::Consumer verifies our per-site identifier and the released email."""
    cache = cache_for(stateful, tmp_path)
    location = sign_in(node, rp_site, person, cache)
    result = perl_rp("complete", location, rp_site.realm, cache).split()
    assert result[0] == "VERIFIED", result
    assert result[1].startswith(node.url + "id/")
    assert result[2] == person.email
    handle = dict(parse_qsl(urlsplit(location).query))["openid.assoc_handle"]
    assert handle.startswith("{HMAC-SHA") and "b'" not in handle
    if stateful:
        # It associated (DH) and we signed with that shared association.
        assert f"hassoc:{node.url}openid:{handle}" in Path(cache).read_bytes().decode("latin-1")
        assert "openid.invalidate_handle" not in location


@pytest.mark.parametrize("stateful", [True, False], ids=["stateful", "stateless"])
def test_replay_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person, stateful: bool, tmp_path: Path
) -> None:
    """
    The same assertion twice: a stateful Perl RP refuses the reused nonce; a
    stateless one asks us again, and our second check_authentication says no.
    """
    cache = cache_for(stateful, tmp_path)
    location = sign_in(node, rp_site, person, cache)
    assert perl_rp("complete", location, rp_site.realm, cache).startswith("VERIFIED ")
    replay = perl_rp("complete", location, rp_site.realm, cache)
    expected = "ERROR nonce_reused" if stateful else "ERROR naive_verify_failed_return"
    assert replay.startswith(expected), replay


@pytest.mark.parametrize("stateful", [True, False], ids=["stateful", "stateless"])
def test_tampered_assertion_is_refused(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person, stateful: bool, tmp_path: Path
) -> None:
    """A changed signed field fails: bad signature, or our check_authentication says no."""
    cache = cache_for(stateful, tmp_path)
    location = sign_in(node, rp_site, person, cache)
    base, _, query = location.partition("?")
    args = dict(parse_qsl(query, keep_blank_values=True))
    email_key = next(k for k in args if k.endswith(".email"))
    args[email_key] = "attacker@example.com"
    forged = perl_rp("complete", base + "?" + urlencode(args), rp_site.realm, cache)
    assert forged.startswith("ERROR "), forged
    if not stateful:
        # Our check_authentication refused the forgery without spoiling the
        # genuine assertion. (A stateful Net::OpenID::Consumer records the
        # nonce before it checks the signature, so there the forgery uses it up.)
        assert perl_rp("complete", location, rp_site.realm, cache).startswith("VERIFIED ")


def test_cancel_reaches_the_perl_rp(
    node: NodeProcess, rp_site: RelyingPartySite, person: Person, tmp_path: Path
) -> None:
    """Cancelling on our consent page is seen as a cancel by the relying party."""
    cache = cache_for(True, tmp_path)
    check_url = perl_rp("begin", node.url, rp_site.realm, rp_site.return_to, cache)
    answer = person.decide(person.sign_up_and_continue(check_url), decision="cancel")
    assert perl_rp("complete", answer.headers["location"], rp_site.realm, cache) == "CANCELLED"

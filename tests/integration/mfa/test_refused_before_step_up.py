"""
A signed-in person whom a site's PAPE request would send to give a fresh
code is not asked for it when the request would be refused anyway: a
return_to the realm's XRDS does not list gets the page that explains, not
the step-up page. Through a real node, with python3-openid's consumer.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from openid.extensions.draft import pape5 as pape

from tests.integration.mfa.person import MfaPerson
from tests.integration.mfa.test_pape import begin, enrol_and_trust
from tests.integration.openid.harness import PythonRP, RelyingPartySite
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rp_site() -> Iterator[RelyingPartySite]:
    site = RelyingPartySite("127.0.0.1").start()
    try:
        yield site
    finally:
        site.stop()


def test_unpublished_return_to_is_refused_before_the_step_up(
    node: NodeProcess, rp_site: RelyingPartySite
) -> None:
    """
    Signed in through a trusted browser, a multi-factor request for an
    unpublished return_to is refused (400, no redirect) without the step-up;
    the same request for the published return_to goes to the step-up.
    """
    person = MfaPerson(node.url, f"s{secrets.token_hex(4)}@example.com")
    enrol_and_trust(person)
    # The site's XRDS lists only its /return: this one is not published.
    rp = PythonRP(node.url, rp_site.realm, rp_site.realm + "elsewhere")
    refused = person.browser.session.get(begin(rp, [pape.AUTH_MULTI_FACTOR]), allow_redirects=False)
    assert refused.status_code == 400, (refused.status_code, refused.headers)
    assert "location" not in refused.headers
    assert "does not confirm that address" in refused.text, refused.text[:2000]
    assert "fresh code" not in refused.text
    # The published return_to still goes to the step-up first.
    published = PythonRP(node.url, rp_site.realm, rp_site.return_to)
    asked = person.browser.session.get(
        begin(published, [pape.AUTH_MULTI_FACTOR]), allow_redirects=False
    )
    assert asked.status_code == 303
    assert asked.headers["location"].startswith("/account/confirm?next=")

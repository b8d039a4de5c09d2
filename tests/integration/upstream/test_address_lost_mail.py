"""
The mail an address gets when its verified owner, signing in through an
upstream provider (the real oidc-provider), takes it from an account that
held it unverified: through a real node and the maildir it delivers to.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.integration.upstream.conftest import UpstreamSetup
from tests.integration.upstream.test_oidc_provider import (
    _browser,
    start_signin,
    through_provider,
)
from tests.support.mailbox import maildir_of, messages_to, text_of, wait_for_message

pytestmark = pytest.mark.integration

SUBJECT = "left an unconfirmed Clickpass account"


def test_the_released_address_is_told_it_left_the_unverified_account(
    upstream_setup: UpstreamSetup,
) -> None:
    """
    Someone signs up with hana@example.test and never verifies it; its
    owner signs in through the provider, which verified it. The address
    gets one mail, queued with the change: it names the provider, says the
    unconfirmed account lost the address and how whoever made it gets back
    in, and holds no link that changes anything. The mail goes to the real
    address, never to the placeholder the losing account now has, and a
    later sign-in of the owner mails nothing more.
    """
    node = upstream_setup.node
    squatter = _browser(upstream_setup)
    squatter.sign_up("hana@example.test", "a long enough password", verify=False)

    owner = _browser(upstream_setup)
    page = through_provider(owner, start_signin(owner), "hana")
    assert page.url == node.url + "account", page.text[:2000]

    maildir = maildir_of(node)
    told = wait_for_message(maildir, "hana@example.test", SUBJECT)
    text = text_of(told)
    assert "signing in through Test OP" in text, text
    assert "no longer has this address" in text, text
    assert f"Sign in: {node.url}signin" in text, text
    for changing in ("/verify?", "/reset?", "/email/"):
        assert changing not in text, text
    with sqlite3.connect(upstream_setup.database) as db:
        (placeholder,) = db.execute(
            "SELECT email FROM accounts WHERE email LIKE '%@released.invalid'"
        ).fetchone()
        (queued,) = db.execute(
            "SELECT COUNT(*) FROM mail_outbox WHERE kind = 'address_lost'"
        ).fetchone()
    assert queued == 1
    assert not messages_to(maildir, placeholder)

    again = _browser(upstream_setup)
    assert through_provider(again, start_signin(again), "hana").url == node.url + "account"
    with sqlite3.connect(upstream_setup.database) as db:
        (queued,) = db.execute(
            "SELECT COUNT(*) FROM mail_outbox WHERE kind = 'address_lost'"
        ).fetchone()
    assert queued == 1
    lost = [m for m in messages_to(maildir, "hana@example.test") if SUBJECT in str(m["Subject"])]
    assert len(lost) == 1

"""
The account mails through a real node and a real SMTP server (aiosmtpd on
loopback, STARTTLS and AUTH, a private CA), on SQLite and MariaDB: sign-up's
verification link, a password reset, and an address change with the link
that undoes it arrive there, whole, and their links work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.mail.smtpd import PASSWORD as SMTP_PASSWORD
from tests.integration.mail.smtpd import USER, Accepted, running_smtp
from tests.support.browser import Browser, csrf_token
from tests.support.mailbox import link_in
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, free_port, mariadb_config, write_config
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a new long passphrase"


def only_to(smtp_messages: list[Accepted], to: str, subject: str) -> Accepted:
    (found,) = [
        m for m in smtp_messages if m.rcpt_tos == [to] and subject in str(m.message["Subject"])
    ]
    return found


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)])
def test_verification_and_reset_mail_arrive_by_smtp(
    tmp_path: Path, ca: TestCA, backend: str, request: pytest.FixtureRequest
) -> None:
    """
    Sign-up mails a verification link over STARTTLS with AUTH; opened by the
    signed-in owner it verifies the address. "Forgot password" mails a reset
    link, and the reset tells the owner their password changed. An address
    change mails the new address its link, then the old one the link that
    gives it back.
    """
    server: MariaDBServer | None = None
    database = ""
    extra = ""
    if backend == "mysql":
        server = request.getfixturevalue("mariadb_server")
        database = f"{server.database}_smtp{free_port()}"
        server.create_database(database)
        extra = mariadb_config(tmp_path, server, database)
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    with running_smtp(ca, auth=True) as smtp:
        port = free_port()
        config = write_config(
            tmp_path,
            port,
            f"""
[mail]
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
ca_bundle = "{ca.ca_pem}"
username = "{USER}"
password_file = "{password_file}"
from_address = "Clickpass <login@example.com>"
poll_interval = 0.2
timeout = 5.0
"""
            + extra,
        )
        node = NodeProcess(tmp_path, config, port=port).start()
        try:
            email = "smtp-person@example.org"
            browser = Browser(node.url)
            sent = browser.sign_up(email, PASSWORD, verify=False)
            assert 'id="signup-sent"' in sent.text
            smtp.wait_for(1, timeout=60)
            verify = only_to(smtp.messages(), email, "Confirm your email address")
            assert verify.tls and verify.user == USER
            assert verify.message.get_content_type() == "multipart/alternative"
            link = link_in(verify.message, "verify")
            confirmed = browser.verify(link, email, PASSWORD)
            assert confirmed.ok and "/account" in confirmed.url
            assert 'data-verified="yes"' in confirmed.text

            stranger = Browser(node.url)
            stranger.submit("/forgot", "/forgot", {"email": email})
            smtp.wait_for(2, timeout=60)
            reset = link_in(only_to(smtp.messages(), email, "Reset your").message, "reset")
            form = stranger.get(reset)
            done = stranger.post(
                "/reset",
                {
                    "t": reset.split("t=", 1)[1],
                    "password": NEW_PASSWORD,
                    "password_again": NEW_PASSWORD,
                    "csrf_token": csrf_token(form.text),
                },
            )
            assert done.ok and "/account" in done.url
            smtp.wait_for(3, timeout=60)
            only_to(smtp.messages(), email, "password was changed")
            assert "/signin" in browser.get("/account").url

            new = "smtp-moved@example.org"
            assert browser.sign_in(email, NEW_PASSWORD).ok
            sent = browser.submit(
                "/account/email",
                "/account/email",
                {"email": new, "current_password": NEW_PASSWORD},
            )
            assert 'id="email-sent"' in sent.text, sent.text[:2000]
            smtp.wait_for(4, timeout=60)
            confirm = link_in(
                only_to(smtp.messages(), new, "Confirm your new").message, "email/confirm"
            )
            page = browser.get(confirm)
            moved = browser.post(
                "/email/confirm",
                {"t": confirm.split("t=", 1)[1], "csrf_token": csrf_token(page.text)},
            )
            assert moved.ok and new in moved.text
            smtp.wait_for(5, timeout=60)
            notice = only_to(smtp.messages(), email, "address was changed")
            assert notice.tls and notice.user == USER
            revert = link_in(notice.message, "email/revert")
            page = stranger.get(revert)
            undone = stranger.post(
                "/email/revert",
                {"t": revert.split("t=", 1)[1], "csrf_token": csrf_token(page.text)},
            )
            assert 'id="reverted"' in undone.text
            assert Browser(node.url).sign_in(email, NEW_PASSWORD).ok
        finally:
            node.stop()
            if server is not None:
                server.drop_database(database)

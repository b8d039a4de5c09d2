"""
The account mails through a real node and a real SMTP server (aiosmtpd on
loopback, STARTTLS and AUTH, a private CA): sign-up's verification link and
a password reset arrive there, whole, and their links work once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.mail.smtpd import PASSWORD as SMTP_PASSWORD
from tests.integration.mail.smtpd import USER, Accepted, running_smtp
from tests.support.browser import Browser, csrf_token
from tests.support.mailbox import link_in
from tests.support.node import NodeProcess, free_port, write_config
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def only_to(smtp_messages: list[Accepted], to: str, subject: str) -> Accepted:
    (found,) = [
        m for m in smtp_messages if m.rcpt_tos == [to] and subject in str(m.message["Subject"])
    ]
    return found


def test_verification_and_reset_mail_arrive_by_smtp(tmp_path: Path, ca: TestCA) -> None:
    """
    Sign-up mails a verification link over STARTTLS with AUTH; opened by the
    signed-in owner it verifies the address. "Forgot password" mails a reset
    link, and the reset tells the owner their password changed.
    """
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
""",
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
                    "password": "a new long passphrase",
                    "password_again": "a new long passphrase",
                    "csrf_token": csrf_token(form.text),
                },
            )
            assert done.ok and "/account" in done.url
            smtp.wait_for(3, timeout=60)
            only_to(smtp.messages(), email, "password was changed")
            assert "/signin" in browser.get("/account").url
        finally:
            node.stop()

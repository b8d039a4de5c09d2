"""A person's steps through a partner flow, with a cookie-keeping HTTP client."""

from __future__ import annotations

import re
import secrets
from html import unescape
from urllib.parse import parse_qs, urlsplit

import requests

from tests.integration.partners.conftest import PASSWORD
from tests.support.browser import csrf_token
from tests.support.mailbox import link_in, maildir_of, messages_to, wait_for_message
from tests.support.node import NodeProcess

CONFIRM_SUBJECT = "Confirm your email address"

HIDDEN = re.compile(r'name="(payload|mac)" value="([^"]*)"')


class Person:
    def __init__(self, node: NodeProcess, partner_url: str) -> None:
        self.node = node
        self.partner_url = partner_url
        self.session = requests.Session()
        self.email = f"p{secrets.token_hex(4)}@example.com"

    def start(self, immediate: bool = False) -> requests.Response:
        """Click "Sign in with Clickpass" on the partner site."""
        return self.session.get(
            self.partner_url + "login/clickpass" + ("?immediate=1" if immediate else ""), timeout=30
        )

    def sign_up_from(self, signin_page: requests.Response) -> requests.Response:
        """On Clickpass's sign-in page: create an account instead, and continue."""
        assert "/signin" in signin_page.url, signin_page.url
        next_url = parse_qs(urlsplit(signin_page.url).query)["next"][0]
        # The address may have had an account before (since deleted): the
        # link to confirm is in the mail this sign-up sends, not an older one.
        earlier = [
            m
            for m in messages_to(maildir_of(self.node), self.email)
            if CONFIRM_SUBJECT in str(m["Subject"])
        ]
        sent = self.session.post(
            self.node.url + "signup",
            data={
                "email": self.email,
                "password": PASSWORD,
                "password_again": PASSWORD,
                "next": next_url,
                "csrf_token": csrf_token(signin_page.text),
            },
            timeout=30,
        )
        assert 'id="signup-sent"' in sent.text, sent.text[:2000]
        return self.verify_by_mail(count=len(earlier) + 1)

    def verify_by_mail(self, count: int = 1) -> requests.Response:
        """
        Open the C{count}-th verification link mailed to this person (signing
        in when asked) and confirm: the link leads back to the sign-in it
        was sent from.
        """
        message = wait_for_message(maildir_of(self.node), self.email, CONFIRM_SUBJECT, count)
        link = link_in(message, "verify")
        page = self.session.get(self.node.url.rstrip("/") + link, timeout=30)
        if "/signin" in page.url:
            page = self.session.post(
                self.node.url + "signin",
                data={
                    "email": self.email,
                    "password": PASSWORD,
                    "next": link,
                    "csrf_token": csrf_token(page.text),
                },
                timeout=30,
            )
        return self.session.post(
            self.node.url + "verify",
            data={"t": link.split("t=", 1)[1], "csrf_token": csrf_token(page.text)},
            timeout=30,
        )

    def choose(
        self, choice_page: requests.Response, action: str, **fields: str
    ) -> requests.Response:
        hidden = dict(HIDDEN.findall(choice_page.text))
        data = {
            "csrf_token": csrf_token(choice_page.text),
            "payload": unescape(hidden["payload"]),
            "mac": unescape(hidden["mac"]),
        }
        data.update({f"field_{k}": v for k, v in fields.items()})
        return self.session.post(self.node.url + f"partner/{action}", data=data, timeout=30)

    def partner_signout(self) -> None:
        self.session.post(self.partner_url + "signout", timeout=30)

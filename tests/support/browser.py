"""
A person's browser, as far as the tests need one: a cookie-keeping HTTP
client that fills in forms (CSRF token included) and follows redirects.
"""

from __future__ import annotations

import re
import time
from email.message import Message
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from tests.support.mailbox import link_in, messages_to
from tests.support.node import maildir_for

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    m = CSRF_FIELD.search(html)
    if m is None:
        raise AssertionError("no CSRF token on the page:\n" + html[:2000])
    return unescape(m.group(1))


CONFIRM_SUBJECT = "Confirm your email address"


def confirmations(maildirs: list[Path], address: str) -> list[Message]:
    """The verification mails delivered to C{address} so far."""
    return [
        m
        for directory in maildirs
        if (directory / "new").is_dir()
        for m in messages_to(directory, address)
        if CONFIRM_SUBJECT in str(m["Subject"])
    ]


def new_confirmation(
    maildirs: list[Path], address: str, earlier: set[str], timeout: float = 60.0
) -> Message:
    """Wait for a verification mail to C{address} other than the C{earlier} ones (Message-IDs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in confirmations(maildirs, address):
            if str(message["Message-ID"]) not in earlier:
                return message
        time.sleep(0.1)
    raise AssertionError(f"no new verification mail to {address} within {timeout}s")


class Browser:
    """A cookie jar and a few habits."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.get(self.url(path), **kwargs)

    def post(self, path: str, data: dict[str, str], **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.post(self.url(path), data=data, **kwargs)

    def submit(
        self, page_path: str, form_path: str, fields: dict[str, str], **kwargs: Any
    ) -> requests.Response:
        """Open C{page_path}, then post C{fields} and the page's CSRF token to C{form_path}."""
        page = self.get(page_path)
        return self.post(form_path, {**fields, "csrf_token": csrf_token(page.text)}, **kwargs)

    def sign_up(
        self, email: str, password: str, next_url: str = "", verify: bool = True
    ) -> requests.Response:
        """
        Sign up, then (with C{verify}) confirm the address with the link the
        node mailed (when its maildir is known) and end signed in, at
        C{next_url}; without a maildir, just sign in. A refused sign-up's
        page is returned as it is.
        """
        query = f"?next={next_url}" if next_url else ""
        address = email.strip().lower()
        maildirs = maildir_for(self.base_url)
        # An address signed up before (its account since deleted) has older
        # links in the maildir: this sign-up's is the next one.
        earlier = {str(m["Message-ID"]) for m in confirmations(maildirs, address)}
        response = self.submit(
            "/signup" + query,
            "/signup",
            {"email": email, "password": password, "password_again": password, "next": next_url},
        )
        if not verify or 'id="signup-sent"' not in response.text:
            return response
        if not maildirs:
            return self.sign_in(email, password, next_url)
        message = new_confirmation(maildirs, address, earlier)
        return self.verify(link_in(message, "verify"), email, password)

    def verify(self, link: str, email: str, password: str) -> requests.Response:
        """Open a verification link, signing in if asked, and confirm; return where it leads."""
        page = self.get(link)
        if 'action="/signin"' in page.text and "/signin" in page.url:
            page = self.post(
                "/signin",
                {
                    "email": email,
                    "password": password,
                    "next": link,
                    "csrf_token": csrf_token(page.text),
                },
            )
        token = link.split("t=", 1)[1]
        return self.post("/verify", {"t": token, "csrf_token": csrf_token(page.text)})

    def sign_in(self, email: str, password: str, next_url: str = "") -> requests.Response:
        return self.submit(
            "/signin", "/signin", {"email": email, "password": password, "next": next_url}
        )

"""
A person's browser, as far as the tests need one: a cookie-keeping HTTP
client that fills in forms (CSRF token included) and follows redirects.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any
from urllib.parse import urljoin

import requests

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    m = CSRF_FIELD.search(html)
    if m is None:
        raise AssertionError("no CSRF token on the page:\n" + html[:2000])
    return unescape(m.group(1))


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

    def sign_up(self, email: str, password: str, next_url: str = "") -> requests.Response:
        query = f"?next={next_url}" if next_url else ""
        return self.submit(
            "/signup" + query,
            "/signup",
            {"email": email, "password": password, "password_again": password, "next": next_url},
        )

    def sign_in(self, email: str, password: str, next_url: str = "") -> requests.Response:
        return self.submit(
            "/signin", "/signin", {"email": email, "password": password, "next": next_url}
        )

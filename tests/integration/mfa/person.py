"""
A person with a browser and an authenticator app (pyotp, an independent
TOTP implementation) who sets up and uses second factors on a real node.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.message import EmailMessage
from html import unescape
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyotp
import requests

from tests.support.browser import Browser, csrf_token

PASSWORD = "correct horse battery"
SECRET = re.compile(r'<code id="totp-secret">([A-Z2-7 ]+)</code>')
RECOVERY = re.compile(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>")


def steps_in_window() -> range:
    """
    The TOTP steps whose codes the provider accepts now, earliest first:
    one step either side of now, the one behind only while it stays in the
    window for 10 s more (time for the code to arrive). Three codes in a
    row without waiting for the clock, most of the time, instead of two.
    """
    now = time.time()
    current = int(now // 30)
    earliest = current - 1 if now - current * 30 < 20 else current
    return range(earliest, current + 2)


class MfaPerson:
    """Someone signing up, setting up TOTP, and signing in with codes."""

    def __init__(self, base_url: str, email_address: str) -> None:
        self.email = email_address
        self.browser = Browser(base_url)
        self.secret = ""
        self.recovery_codes: list[str] = []
        # The last TOTP step this person's app code was accepted for.
        self.used_step = 0

    def get(self, path: str) -> requests.Response:
        return self.browser.get(path, allow_redirects=False)

    def post(self, page: str, form: str, fields: dict[str, str]) -> requests.Response:
        """Post C{fields} to C{form} with the CSRF token of C{page}, redirects not followed."""
        return self.browser.submit(page, form, fields, allow_redirects=False)

    def sign_up(self) -> None:
        answer = self.browser.sign_up(self.email, PASSWORD)
        assert answer.status_code == 200 and self.email in answer.text, answer.text[:500]

    def set_up_totp(self) -> requests.Response:
        """Start setting up an app; return the set-up page (QR code and key)."""
        begun = self.post("/account/mfa", "/account/mfa/totp/begin", {})
        assert begun.status_code == 303, begun.text
        assert begun.headers["location"] == "/account/mfa/totp"
        page = self.get("/account/mfa/totp")
        assert page.status_code == 200, page.text
        found = SECRET.search(page.text)
        assert found is not None, page.text
        self.secret = found.group(1).replace(" ", "")
        return page

    def confirm_totp(self, code: str) -> requests.Response:
        return self.post("/account/mfa/totp", "/account/mfa/totp/confirm", {"code": code})

    def app_code(self) -> str:
        """
        The code the app shows, for a step later than the last one used
        (a code is good once): waits for the next step when it must.
        """
        totp = pyotp.TOTP(self.secret)
        while True:
            for step in steps_in_window():
                if step > self.used_step:
                    self.used_step = step
                    return totp.at(step * 30)
            time.sleep(0.5)

    def sign_in_password(self, next_url: str = "") -> requests.Response:
        return self.browser.submit(
            "/signin",
            "/signin",
            {"email": self.email, "password": PASSWORD, "next": next_url},
            allow_redirects=False,
        )

    def give_code(
        self, code: str, trust: bool = False, next_url: str = "/account"
    ) -> requests.Response:
        page = self.get("/signin/code?next=" + next_url)
        assert page.status_code == 200, page.text
        fields = {"code": code, "next": next_url, "csrf_token": csrf_token(page.text)}
        if trust:
            fields["trust"] = "yes"
        return self.browser.post("/signin/code", fields, allow_redirects=False)

    def sign_out(self) -> None:
        page = self.get("/account")
        self.browser.post("/signout", {"csrf_token": csrf_token(page.text)})

    def signed_in(self) -> bool:
        return self.get("/account").status_code == 200


def second_step_next(answer: requests.Response) -> str:
    """Where a password sign-in that asks for a code goes next."""
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith("/signin/code?next="), location
    return dict(parse_qsl(urlsplit(location).query))["next"]


def error_of(page: requests.Response) -> str:
    found = re.search(r'<p class="error" role="alert" id="form-error">([^<]*)</p>', page.text)
    return unescape(found.group(1)) if found else ""


def mails_to(maildir: Path, address: str) -> list[EmailMessage]:
    found = []
    for path in sorted((maildir / "new").glob("*")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        if message["To"] == address:
            found.append(message)
    return found

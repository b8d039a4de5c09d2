"""
Building messages: a template rendered as plain text and HTML, turned into
one RFC 5322 message with the standard library's C{email} package
(multipart/alternative, Message-ID, Date, List-Unsubscribe where a message
offers one, every link absolute under the public URL).

No tracking, ever: no remote images, no pixels, no redirecting links; a
link in a message goes straight where it says. This module must never do
I/O beyond reading its own templates, and never put anything in a message
that its caller did not give it.
"""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formataddr, formatdate, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    select_autoescape,
)

from clickpass import i18n
from clickpass.mail.settings import MailSettings

TEMPLATES = Path(__file__).parent / "templates"
SITE_NAME = "Clickpass"
_LINK = re.compile(r"(https?://[^\s<>\"']+)")
# What an address may look like here: one @, no spaces, no header breakers.
_ADDRESS = re.compile(r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+\.[^@\s<>,;:\"()\[\]\\]+$")


class MessageError(ValueError):
    """A message cannot be built as asked (bad address, unknown template); one line."""


@dataclass(frozen=True)
class Rendered:
    """A message's three parts, ready to be put into an envelope."""

    subject: str
    text: str
    html: str


def check_address(address: str) -> str:
    """
    The address, trimmed, its domain in ASCII (IDNA), or L{MessageError}
    when it is not one plain mailbox. The local part must be ASCII: an
    internationalised one needs SMTPUTF8, which this sender does not speak.
    """
    value = address.strip()
    if not _ADDRESS.match(value):
        raise MessageError(f"{address!r} is not an email address")
    local, _, domain = value.rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise MessageError(f"{address!r} has a domain that is not a valid name") from None
    if not local.isascii():
        raise MessageError(f"{address!r} has non-ASCII characters before the @")
    value = f"{local}@{domain}"
    if len(value) > 254:
        raise MessageError(f"{address!r} is longer than an email address can be")
    return value


def public_host(base_url: str) -> str:
    """The public URL's host name, or C{localhost} when it is an IP address or missing."""
    host = urlsplit(base_url).hostname or ""
    if not host or host.replace(".", "").isdigit() or ":" in host:
        return "localhost"
    return host


def sender(settings: MailSettings, base_url: str) -> str:
    """The From: header: the configured one, or Clickpass <no-reply@public host>."""
    if settings.from_address:
        return settings.from_address
    return formataddr((SITE_NAME, f"no-reply@{public_host(base_url)}"))


def envelope_sender(settings: MailSettings, base_url: str) -> str:
    """The bare address of L{sender}, for SMTP's MAIL FROM."""
    return parseaddr(sender(settings, base_url))[1]


def absolute_url(base_url: str, path: str, params: dict[str, str] | None = None) -> str:
    """C{path} under the public URL, with C{params} as its query; never another host."""
    if urlsplit(path).scheme or path.startswith("//"):
        raise MessageError(f"{path!r}: links in mail are paths under the public URL")
    url = urljoin(base_url, path.lstrip("/"))
    if params:
        url += ("&" if "?" in url else "?") + urlencode(params)
    return url


def html_from_text(text: str) -> str:
    """A plain HTML rendering of a text body: paragraphs, escaped, links made clickable."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    out = []
    for paragraph in paragraphs:
        escaped = html.escape(paragraph, quote=True)
        linked = _LINK.sub(lambda m: f'<a href="{m.group(1)}">{m.group(1)}</a>', escaped)
        out.append("<p>" + linked.replace("\n", "<br>\n") + "</p>")
    return "\n".join(out)


class Templates:
    """
    The mail templates (C{templates/mail/NAME.txt}, optional C{NAME.html}).
    Subjects are given by the caller; the bodies are rendered here, the
    HTML one autoescaped, with C{url(path, **params)} for links.
    """

    def __init__(self, base_url: str, directory: Path = TEMPLATES) -> None:
        self.base_url = base_url
        # One environment: .html templates are autoescaped, .txt ones are plain text.
        self._env = Environment(
            loader=FileSystemLoader(str(directory)),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )
        self._env.globals.update(
            site_name=SITE_NAME,
            public_url=base_url,
            url=lambda path, **params: absolute_url(base_url, path, params),
        )
        # In the language of the request that caused the mail (i18n.current).
        i18n.install(self._env)

    def render(self, template: str, subject: str, context: dict[str, Any]) -> Rendered:
        """
        The message in the current language: C{subject} as the caller
        wrote it (marked with L{i18n.N_}), translated here with the bodies.
        """
        subject = i18n.translate(subject)
        if not re.fullmatch(r"[a-z0-9_-]+", template):
            raise MessageError(f"{template!r} is not a mail template name")
        try:
            text = self._env.get_template(f"mail/{template}.txt").render(context)
        except TemplateNotFound:
            raise MessageError(f"no mail template named {template!r}") from None
        try:
            body = self._env.get_template(f"mail/{template}.html").render(context, subject=subject)
        except TemplateNotFound:
            body = self._env.get_template("mail/_layout.html").render(
                subject=subject, body=html_from_text(text)
            )
        return Rendered(subject, text, body)


def new_message_id(base_url: str) -> str:
    """A Message-ID that names nobody and nothing but the public host."""
    return f"<{secrets.token_hex(16)}@{public_host(base_url)}>"


def compose(
    rendered: Rendered,
    *,
    to: str,
    from_: str,
    message_id: str,
    now: float,
    unsubscribe_url: str = "",
    one_click_unsubscribe: bool = False,
) -> EmailMessage:
    """
    The message: multipart/alternative (text first, HTML second), both
    quoted-printable so the whole message is 7-bit and any relay takes it.
    C{unsubscribe_url} (absolute) adds List-Unsubscribe; with
    C{one_click_unsubscribe}, also List-Unsubscribe-Post (RFC 8058), for an
    address that takes the POST.
    """
    if any(c in rendered.subject for c in "\r\n"):
        raise MessageError("a subject is one line")
    message = EmailMessage()
    message["From"] = from_
    message["To"] = check_address(to)
    message["Subject"] = rendered.subject
    message["Date"] = formatdate(now, usegmt=True)
    message["Message-ID"] = message_id
    if unsubscribe_url:
        message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        if one_click_unsubscribe:
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text, cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return message


def as_text(message: EmailMessage) -> str:
    """The message source to store: 7-bit, lines ending in LF."""
    return message.as_bytes(policy=SMTP_POLICY.clone(linesep="\n")).decode("ascii")


__all__ = [
    "MessageError",
    "Rendered",
    "Templates",
    "absolute_url",
    "as_text",
    "check_address",
    "compose",
    "envelope_sender",
    "html_from_text",
    "new_message_id",
    "sender",
]

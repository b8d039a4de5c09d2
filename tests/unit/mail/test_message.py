"""
Messages as the outbox builds them: multipart text + HTML, the headers a
mail reader and a spam filter look for, links under the public URL only,
nothing that tracks, and addresses that cannot smuggle headers in.
"""

from __future__ import annotations

from email import message_from_string
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest

from clickpass.mail import message as mailmsg
from clickpass.mail.outbox import Outbox, claim
from clickpass.mail.settings import MailSettings
from clickpass.storage.sql import DirectStorage, Transaction
from tests.unit.mail.conftest import BASE_URL, NOW


def parse(source: str) -> EmailMessage:
    parsed = message_from_string(source, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    return parsed


def queued_source(
    storage: DirectStorage,
    outbox: Outbox,
    subject: str = "Test",
    unsubscribe: str = "",
    one_click_unsubscribe: bool = False,
) -> str:
    """Queue the test template to person@example.org and return the stored message."""

    def enqueue(tx: Transaction) -> int:
        return outbox.enqueue(
            tx,
            "person@example.org",
            subject,
            "test",
            {"node": "n1"},
            now=NOW,
            unsubscribe=unsubscribe,
            one_click_unsubscribe=one_click_unsubscribe,
        )

    storage.run_blocking(enqueue)
    (queued,) = storage.run_blocking(claim, NOW, 60, 10, "me")
    return queued.message


def test_a_queued_message_is_multipart_text_and_html_with_its_headers(
    storage: DirectStorage,
) -> None:
    """
    Text first, HTML second; From from the public host, Date and a
    Message-ID at the public host; 7-bit (quoted-printable) so any relay
    takes it; no List-Unsubscribe unless asked for.
    """
    source = queued_source(storage, Outbox(MailSettings(), BASE_URL), subject="Grüße")
    source.encode("ascii")
    parsed = parse(source)
    assert parsed["From"] == "Clickpass <no-reply@login.example.com>"
    assert parsed["To"] == "person@example.org"
    assert parsed["Subject"] == "Grüße"
    assert parsed["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert parsed["Message-ID"].endswith("@login.example.com>")
    assert parsed["List-Unsubscribe"] is None
    assert parsed.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in parsed.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None and html is not None
    assert "on node n1" in text.get_content()
    assert '<a href="https://login.example.com/">' in html.get_content()


def test_links_are_absolute_under_the_public_url_and_nothing_tracks(
    storage: DirectStorage,
) -> None:
    """Every link points into the public URL, straight; the HTML loads nothing remote."""
    source = queued_source(storage, Outbox(MailSettings(), BASE_URL))
    html = parse(source).get_body(("html",))
    assert html is not None
    body = html.get_content()
    assert "<img" not in body and "src=" not in body and "<link" not in body
    import re

    links = re.findall(r'href="([^"]+)"', body)
    assert links and all(link.startswith(BASE_URL) for link in links)


def test_list_unsubscribe_only_where_a_message_offers_it(storage: DirectStorage) -> None:
    """An unsubscribe path becomes List-Unsubscribe (and -Post for one click), absolute."""
    source = queued_source(
        storage,
        Outbox(MailSettings(), BASE_URL),
        unsubscribe="account/notices/off?k=abc",
        one_click_unsubscribe=True,
    )
    parsed = parse(source)
    assert parsed["List-Unsubscribe"] == "<https://login.example.com/account/notices/off?k=abc>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_configured_sender_is_used() -> None:
    """from_address, when set, is the From: and its address the envelope sender."""
    settings = MailSettings(from_address="Login <login@example.net>")
    assert mailmsg.sender(settings, BASE_URL) == "Login <login@example.net>"
    assert mailmsg.envelope_sender(settings, BASE_URL) == "login@example.net"
    # An IP address as public host is no mail domain.
    assert mailmsg.sender(MailSettings(), "http://127.0.0.1:8080/").endswith("@localhost>")


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com\r\nBcc: victim@example.com",
        "a@example.com, b@example.com",
        "Someone <a@example.com>",
        "no-at-sign",
        "a@b",
        "",
        "x" * 250 + "@example.com",
    ],
)
def test_recipient_must_be_one_plain_address(storage: DirectStorage, address: str) -> None:
    """A recipient with a line break, a list, a name or no domain is refused, nothing queued."""
    outbox = Outbox(MailSettings(), BASE_URL)
    with pytest.raises(mailmsg.MessageError):
        storage.run_blocking(
            lambda tx: outbox.enqueue(tx, address, "Test", "test", {"node": "n"}, now=NOW)
        )
    assert storage.run_blocking(lambda tx: tx.scalar("SELECT COUNT(*) FROM mail_outbox")) == 0


def test_links_to_other_hosts_and_header_breaking_subjects_are_refused() -> None:
    """url() takes paths only; a subject is one line."""
    with pytest.raises(mailmsg.MessageError):
        mailmsg.absolute_url(BASE_URL, "https://evil.example/")
    with pytest.raises(mailmsg.MessageError):
        mailmsg.absolute_url(BASE_URL, "//evil.example/")
    assert mailmsg.absolute_url(BASE_URL, "/verify", {"t": "a b&c"}) == (
        "https://login.example.com/verify?t=a+b%26c"
    )
    rendered = mailmsg.Rendered("a\r\nBcc: x@example.com", "t", "<p>t</p>")
    with pytest.raises(mailmsg.MessageError):
        mailmsg.compose(
            rendered, to="a@example.com", from_="b@example.com", message_id="<x@y>", now=0
        )


def test_html_templates_escape_what_they_are_given(tmp_path: Path) -> None:
    """A value put into a message cannot become markup in its HTML part (nor in the fallback)."""
    mail = tmp_path / "mail"
    mail.mkdir()
    (mail / "hi.txt").write_text("Hello {{ name }}\n")
    (mail / "hi.html").write_text("<p>Hello {{ name }}</p>\n")
    (mail / "_layout.html").write_text("{{ body | safe }}")
    (mail / "plain.txt").write_text("Hello {{ name }}\n")
    templates = mailmsg.Templates(BASE_URL, tmp_path)
    evil = '<img src="https://tracker.example/p.gif">'
    rendered = templates.render("hi", "s", {"name": evil})
    assert evil in rendered.text
    assert "<img" not in rendered.html
    fallback = templates.render("plain", "s", {"name": evil})
    assert "<img" not in fallback.html
    with pytest.raises(mailmsg.MessageError, match="no mail template named 'nope'"):
        templates.render("nope", "s", {})
    with pytest.raises(mailmsg.MessageError):
        templates.render("../hi", "s", {})


def test_international_domains_become_ascii_and_local_parts_must_be() -> None:
    """An IDN domain is sent in its ASCII form; a non-ASCII local part (SMTPUTF8) is refused."""
    assert mailmsg.check_address(" anna@bücher.example ") == "anna@xn--bcher-kva.example"
    with pytest.raises(mailmsg.MessageError, match="non-ASCII characters before the @"):
        mailmsg.check_address("jösé@example.com")

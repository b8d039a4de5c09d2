"""
How the provider's pages name things for a person: a site by its host, a
return address without its query, and a request the library refused, in
words rather than the library's text.
"""

from __future__ import annotations

import pytest
from openid.message import OPENID2_NS, Message
from openid.server.server import ProtocolError

from clickpass.openid.web import explain_protocol_error, site_name, without_query


@pytest.mark.parametrize(
    ("realm", "name"),
    [
        ("https://shop.example/", "shop.example"),
        ("https://*.example.org/", "example.org"),
        ("http://127.0.0.1:8000/", "127.0.0.1"),
        ("not a url", "not a url"),
    ],
)
def test_site_name(realm: str, name: str) -> None:
    assert site_name(realm) == name


def test_return_address_without_query() -> None:
    """The query (a session id, a state) and fragment are not shown."""
    assert without_query("https://shop.example/back?session=abc#x") == "https://shop.example/back"
    assert without_query("https://shop.example/back") == "https://shop.example/back"


@pytest.mark.parametrize(
    ("args", "text", "expected"),
    [
        ({"mode": "bogus"}, "Unrecognized OpenID mode 'bogus'", "not a kind of OpenID request"),
        ({}, "No mode value in message", "not a kind of OpenID request"),
        ({"mode": "associate"}, "Unknown session type", "for the site's own server"),
        (
            {"mode": "checkid_setup"},
            "openid.realm required when openid.return_to absent",
            "where to send you back",
        ),
        (
            {"mode": "checkid_setup"},
            "OpenID 2.0 message contained openid.identity but not claimed_id",
            "whom to sign in",
        ),
        ({"mode": "checkid_setup"}, "Something else entirely", "not complete or not well formed"),
    ],
)
def test_protocol_errors_in_words(args: dict[str, str], text: str, expected: str) -> None:
    """Each explanation is a sentence for a person: no field names, no library text."""
    message = Message.fromOpenIDArgs({"ns": OPENID2_NS, **args})
    words = explain_protocol_error(ProtocolError(message, text=text))
    assert words.startswith("The site sent a sign-in request that Clickpass cannot use: ")
    assert expected in words
    assert text not in words and "openid." not in words and "mode" not in words

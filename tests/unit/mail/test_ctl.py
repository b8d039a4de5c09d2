"""clickpass-ctl mail: what an operator reads for status and show answers."""

from __future__ import annotations

from typing import Any

from clickpass.control import ctl as base
from clickpass.control.ctl import build_parser
from clickpass.mail import ctl

NOW = 1_700_000_000


def unsent(**values: Any) -> dict[str, Any]:
    return {
        "id": 7,
        "to": "p@example.org",
        "kind": "test",
        "subject": "Test",
        "state": "pending",
        "created": NOW - 1200,
        "attempts": 3,
        "next_attempt": NOW + 60,
        "sent": 0,
        "last_error": "451 4.3.0 try again later",
        "message_id": "<x@y>",
        "give_up_at": NOW + 86400,
        "leased_until": 0,
        "lease_owner": "",
        **values,
    }


def test_status_says_where_mail_goes_what_waits_and_why() -> None:
    """The transport, the counts, DELAYED past the alert age, and each unsent message's error."""
    text = ctl._format_status(
        {
            "transport": "smtp smtp.example.com:587 (starttls)",
            "now": NOW,
            "oldest_unsent_seconds": 1200,
            "alert_after": 900,
            "counts": {"pending": 1, "sent": 5, "failed": 1},
            "last_sent": NOW - 30,
            "unsent": [unsent(), unsent(id=3, state="failed", last_error="550 no such user")],
        }
    )
    lines = text.splitlines()
    assert lines[0] == "transport: smtp smtp.example.com:587 (starttls)"
    assert lines[1] == "queued:    1 (oldest waiting 1200s) - DELAYED"
    assert lines[2] == "sent:      5 (last 2023-11-14 22:12:50 UTC)"
    assert lines[3].startswith("failed:    1 (given up")
    assert lines[5].split() == ["id", "state", "to", "kind", "attempts", "created", "next",
                                "last_error"]  # fmt: skip
    assert "451 4.3.0 try again later" in lines[6] and lines[6].startswith("7 ")
    assert "550 no such user" in lines[7] and lines[7].startswith("3 ")


def test_show_gives_headers_and_text_until_sent() -> None:
    """A waiting message shows its headers and text; a sent one says its body is gone."""
    waiting = ctl._format_show(
        {**unsent(), "headers": {"To": "p@example.org"}, "text": "Hello\nthere\n"}
    )
    assert "next:       2023-11-14 22:14:20 UTC" in waiting
    assert "last error: 451 4.3.0 try again later" in waiting
    assert waiting.endswith("To: p@example.org\n\nHello\nthere")
    sent = ctl._format_show(
        {**unsent(state="sent", sent=NOW, last_error=""), "headers": {}, "text": None}
    )
    assert "sent:       2023-11-14 22:13:20 UTC" in sent
    assert sent.endswith("(the body is not kept once a message is sent)")


def test_mail_commands_are_part_of_clickpass_ctl() -> None:
    """mail status, show ID, retry ID and test ADDRESS parse; a missing ID is a usage error."""
    base._load_commands()
    parser = build_parser()
    args = parser.parse_args(["mail", "retry", "12"])
    assert args.id == 12 and args._command.words == ("mail", "retry")
    args = parser.parse_args(["mail", "test", "ops@example.org"])
    assert args.address == "ops@example.org"
    try:
        parser.parse_args(["mail", "show", "twelve"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a non-numeric id was accepted")

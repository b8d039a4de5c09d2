"""clickpass-ctl oidc keys: the nested command words, and what an operator reads."""

from __future__ import annotations

import pytest

from clickpass.control import ctl as base
from clickpass.oidc import ctl

NOW = 1_700_000_000


def test_oidc_keys_list_and_rotate_parse_as_three_words() -> None:
    """oidc keys list and oidc keys rotate --alg reach their commands; two-word ones still do."""
    base._load_commands()
    parser = base.build_parser()
    listed = parser.parse_args(["oidc", "keys", "list"])
    assert listed._command.words == ("oidc", "keys", "list")
    rotated = parser.parse_args(["oidc", "keys", "rotate", "--alg", "ES256"])
    assert rotated._command.words == ("oidc", "keys", "rotate") and rotated.alg == "ES256"
    assert parser.parse_args(["mail", "status"])._command.words == ("mail", "status")


def test_oidc_keys_without_a_subcommand_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """clickpass-ctl oidc keys alone prints the group's usage and exits 2."""
    assert base.main(["oidc", "keys"]) == base.EXIT_USAGE
    assert "list" in capsys.readouterr().err


def test_rotate_says_which_key_and_when_it_signs() -> None:
    """Each rotated key by algorithm and kid, with the time it starts signing (UTC)."""
    text = ctl._format_rotate(
        {
            "rotated": [
                {"kid": "abc", "alg": "RS256", "signs_from": NOW, "created": True},
                {"kid": "def", "alg": "ES256", "signs_from": NOW + 60, "created": False},
            ]
        }
    )
    assert text.splitlines() == [
        "new RS256 key abc published; it starts signing at 2023-11-14 22:13:20 UTC",
        "ES256 key def was already waiting; it starts signing at 2023-11-14 22:14:20 UTC",
    ]


def test_list_shows_each_key_state_and_times() -> None:
    """The policy on the first line, then one row per key."""
    key = {
        "kid": "abc",
        "alg": "RS256",
        "state": "retired",
        "created": NOW,
        "signs_from": NOW,
        "retired": NOW + 10,
        "retire_after": NOW + 70,
        "removed": 0,
    }
    text = ctl._format_list(
        {"publication_delay": 86400, "longest_token_lifetime": 3600, "keys": [key]}
    )
    lines = text.splitlines()
    assert lines[0] == "new keys sign 86400s after rotate; retired keys stay published 3600s"
    assert lines[2].split() == [
        "kid",
        "alg",
        "state",
        "created",
        "signs",
        "from",
        "retire",
        "after",
    ]
    assert "retired" in lines[3] and "2023-11-14 22:14:30 UTC" in lines[3]


def test_client_management_words_parse() -> None:
    """show, set, rotate-secret and delete reach their commands with their options."""
    base._load_commands()
    parser = base.build_parser()
    rotated = parser.parse_args(["oidc", "clients", "rotate-secret", "oidc_1", "--grace", "0"])
    assert rotated._command.words == ("oidc", "clients", "rotate-secret") and rotated.grace == 0
    assert parser.parse_args(["oidc", "clients", "rotate-secret", "oidc_1"]).grace == 86400
    changed = parser.parse_args(
        ["oidc", "clients", "set", "oidc_1", "--access-token-lifetime", "300"]
    )
    assert changed.access_token_lifetime == 300 and changed.id_token_lifetime is None
    for word in ("show", "delete"):
        parsed = parser.parse_args(["oidc", "clients", word, "oidc_1"])
        assert parsed._command.words == ("oidc", "clients", word)


def test_rotate_secret_says_the_secret_once_and_the_overlap() -> None:
    """The new secret, that it is shown only now, and until when the old one works."""
    text = ctl._format_rotate_secret(
        {"client_id": "oidc_1", "client_secret": "s3", "previous_secret_expires": NOW}
    )
    assert text.splitlines() == [
        "client oidc_1: new client secret: s3",
        "the secret is shown only now: Clickpass keeps only its hash",
        "the previous secret works until 2023-11-14 22:13:20 UTC",
    ]
    ended = ctl._format_rotate_secret(
        {"client_id": "oidc_1", "client_secret": "s4", "previous_secret_expires": 0}
    )
    assert ended.splitlines()[-1] == "the previous secret no longer works"


def test_show_lists_the_settings_and_the_latest_logouts() -> None:
    """Settings one per line, the grace of a rotated secret, then the logouts as a table."""
    text = ctl._format_client_show(
        {
            "client_id": "oidc_1", "type": "confidential", "auth_method": "client_secret",
            "site": "site_1", "site_name": "Shop", "created": NOW,
            "redirect_uris": ["https://shop.example/cb"], "post_logout_uris": [],
            "backchannel_logout_uri": "https://shop.example/bc", "id_token_alg": "RS256",
            "scopes": ["email", "openid"],
            "lifetimes": {"access_token": 300, "refresh_token": 86400, "id_token": 120},
            "previous_secret_expires": NOW + 60,
            "logouts": [{"created": NOW, "state": "pending", "attempts": 2,
                         "last_error": "https://shop.example/bc answered HTTP 503"}],
        }
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "client oidc_1 (confidential, client_secret) of site site_1 (Shop)"
    assert "back-channel logout: https://shop.example/bc" in lines
    assert "post-logout URIs: none" in lines
    assert "lifetimes: access token 300s, refresh token 86400s, ID token 120s" in lines
    assert "previous secret good until 2023-11-14 22:14:20 UTC" in lines
    assert lines[-2].split() == ["queued", "state", "attempts", "last", "error"]
    assert lines[-1].split()[:5] == ["2023-11-14", "22:13:20", "UTC", "pending", "2"]

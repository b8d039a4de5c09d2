"""The [mail] section: defaults, and one line naming the key for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from clickpass import config
from clickpass.config import ConfigError


def test_embedded_default_writes_to_a_maildir_with_starttls_ready() -> None:
    """No [mail]: no SMTP server (the maildir under data_dir), STARTTLS and verification on."""
    mail = config.load(None).mail
    assert mail.smtp_host == ""
    assert mail.maildir == "mail"
    assert mail.security == "starttls" and mail.verify_certificate
    assert mail.port == 587


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("tls", 465), ("none", 25)])
def test_default_port_follows_the_security_mode(security: str, port: int) -> None:
    """smtp_port 0 takes the port of the security mode; a given port wins."""
    assert config.parse({"mail": {"security": security}}).mail.port == port
    assert config.parse({"mail": {"security": security, "smtp_port": 2525}}).mail.port == 2525


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"security": "ssl"}, '[mail] security: must be "starttls" or "tls" or "none"'),
        ({"smtp_port": "25"}, "[mail] smtp_port: expected an integer"),
        ({"smtp_port": 70000}, "[mail] smtp_port: 70000 is not a TCP port"),
        ({"smtp_host": "smtp://x"}, "[mail] smtp_host:"),
        ({"username": "u"}, "[mail] password_file: needed with username"),
        ({"password_file": "p"}, "[mail] username: needed with password_file"),
        (
            {"username": "u", "password_file": "p", "security": "none"},
            '[mail] security: AUTH needs "starttls" or "tls"',
        ),
        ({"from_address": "Clickpass"}, "[mail] from_address: 'Clickpass' is not an email"),
        ({"timeout": 0}, "[mail] timeout: must be more than 0"),
        ({"backoff_initial": 10.0, "backoff_max": 5.0}, "[mail] backoff_max: must be at least"),
        ({"batch": 0}, "[mail] batch: must be at least 1"),
        ({"give_up_after": 0}, "[mail] give_up_after: must be at least 1"),
        ({"maildir": ""}, "[mail] maildir: a directory is needed"),
        ({"smtp_hots": "x"}, "[mail] smtp_hots: unknown key"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(table: dict[str, object], message: str) -> None:
    """Each unusable value stops the configuration with one line that names the key."""
    with pytest.raises(ConfigError) as caught:
        config.parse({"mail": table})
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_password_and_ca_files_are_checked_before_start(tmp_path: Path) -> None:
    """An unreadable [mail] password_file is reported by the loader's file check, by key."""
    settings = config.parse(
        {
            "node": {"data_dir": str(tmp_path)},
            "mail": {"smtp_host": "smtp.example.com", "username": "u", "password_file": "nope"},
        }
    )
    with pytest.raises(ConfigError, match=r"^\[mail\] password_file: file .*nope not found$"):
        config.check_files(settings)


def test_transport_follows_the_settings_and_names_a_bad_ca_bundle(tmp_path: Path) -> None:
    """
    No smtp_host: the maildir under data_dir. With one: SMTP, the password
    read from its file. A CA bundle that holds no certificate is one line
    naming the key (the node turns it into its start-up refusal).
    """
    from twisted.internet.task import Clock

    from clickpass.mail.service import build_transport

    clock = Clock()
    default = build_transport(clock, config.parse({"node": {"data_dir": str(tmp_path)}}))
    assert default.describe() == f"maildir {tmp_path / 'mail'}"
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    smtp = {
        "smtp_host": "smtp.example.com",
        "username": "u",
        "password_file": "pw",
        "security": "tls",
    }
    found = build_transport(
        clock, config.parse({"node": {"data_dir": str(tmp_path)}, "mail": smtp})
    )
    assert found.describe() == "smtp smtp.example.com:465 (tls, AUTH as u)"
    bad = config.parse(
        {"node": {"data_dir": str(tmp_path)}, "mail": {**smtp, "ca_bundle": "ca.pem"}}
    )
    with pytest.raises(
        ConfigError, match=r"^\[mail\] ca_bundle: .*ca.pem holds no PEM certificate$"
    ):
        build_transport(clock, bad)

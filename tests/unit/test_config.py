"""Configuration: typed settings from TOML, and one clear line when it is wrong."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

import pytest

from twisted.internet.protocol import Factory

from clickpass import config
from clickpass.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_default() -> None:
    """With no file: one node, SQLite under ./clickpass-data, HTTP on 127.0.0.1:8080."""
    settings = config.load(None)
    assert settings.database.backend == "sqlite"
    assert settings.sqlite_path == Path("./clickpass-data/clickpass.sqlite3")
    assert settings.web.listen == ["tcp:8080:interface=127.0.0.1"]
    assert settings.base_url == "http://127.0.0.1:8080/"
    assert settings.control_socket == Path("./clickpass-data/control.sock")
    assert not settings.served_over_tls


def test_values_are_typed() -> None:
    """Integers given for a float key become floats; lists keep their items."""
    settings = config.parse(
        {"database": {"connect_timeout": 3, "port": 3307}, "web": {"listen": ["tcp:1"]}}
    )
    assert settings.database.connect_timeout == 3.0
    assert isinstance(settings.database.connect_timeout, float)
    assert settings.database.port == 3307
    assert settings.web.listen == ["tcp:1"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"web": {"listen": "tcp:80"}}, "[web] listen: expected a list, got the string 'tcp:80'"),
        ({"web": {"listen": [80]}}, "[web] listen[0]: expected a string, got int 80"),
        ({"database": {"port": True}}, "[database] port: expected an integer, got true"),
        ({"database": {"port": 70000}}, "[database] port: 70000 is not a TCP port"),
        ({"database": {"connect_timeout": "5"}}, "[database] connect_timeout: expected a number"),
        (
            {"web": {"trust_forwarded_headers": True}},
            "[web] trust_forwarded_headers: no longer used; list the address ranges",
        ),
        ({"web": {"trusted_proxies": "10.0.0.0/8"}}, "[web] trusted_proxies: expected a list"),
        (
            {"web": {"trusted_proxies": ["10.0.0.0/8", "10.0.0.1/8"]}},
            "[web] trusted_proxies[1]: '10.0.0.1/8' is not an address range",
        ),
        ({"web": "x"}, "[web]: expected a table"),
        ({"web": {"listen": []}}, "[web] listen: at least one endpoint is needed"),
        ({"web": {"listen": ["http:80"]}}, "is not a tcp:, tcp6:, ssl: or unix: endpoint"),
        ({"web": {"listen": ["ssl:443"]}}, "an ssl: listener needs [web] tls_certificate"),
        ({"node": {"public_url": "ftp://x/"}}, "[node] public_url: 'ftp://x/' must start with"),
        ({"control": {"tcp": "tcp:9000"}}, "[control] tcp: a TCP control port needs"),
        (
            {"control": {"tcp": "tcp:9000:interface=0.0.0.0", "token_file": "t"}},
            "[control] tcp: the control port listens on a loopback address only, not 0.0.0.0",
        ),
        (
            {
                "control": {
                    "tcp": "tcp:9000:interface=127.0.0.1:interface=0.0.0.0",
                    "token_file": "t",
                }
            },
            "[control] tcp: the option 'interface' is given more than once",
        ),
        (
            {"control": {"tcp": "tcp:9000:0.0.0.0:interface=127.0.0.1", "token_file": "t"}},
            "[control] tcp: give the port once and every other option as name=value",
        ),
        (
            {"control": {"tcp": "tcp:9000:interface=localhost", "token_file": "t"}},
            "[control] tcp: the control port listens on a loopback address only",
        ),
        (
            {"control": {"tcp": "tcp:9000:interface=127.0.0.1:reuse=1", "token_file": "t"}},
            "[control] tcp: unknown option 'reuse'",
        ),
        (
            {"control": {"tcp": "unix:/tmp/x:interface=127.0.0.1", "token_file": "t"}},
            "is not a tcp: or tcp6: endpoint",
        ),
        (
            {"control": {"tcp": "tcp6:9000:interface=::1", "token_file": "t"}},
            "[control] tcp: an empty option (write each ':' inside an address as '\\:')",
        ),
        ({"accounts": {"throttle_window": 0}}, "[accounts] throttle_window: must be at least 1"),
        (
            {"accounts": {"hash_memory": 19455}},
            "[accounts] hash_memory: must be at least 19456 (KiB); set hash_below_floor = true",
        ),
        (
            {"accounts": {"hash_passes": 1}},
            "[accounts] hash_passes: must be at least 2; set hash_below_floor = true",
        ),
        (
            {"accounts": {"hash_memory": 31, "hash_below_floor": True}},
            "[accounts] hash_memory: must be at least 32 (KiB)",
        ),
        (
            {"accounts": {"hash_passes": 0, "hash_below_floor": True}},
            "[accounts] hash_passes: must be at least 1",
        ),
        ({"accounts": {"hash_below_floor": "yes"}}, "[accounts] hash_below_floor: "),
        ({"backup": {"s3_timeout": 0}}, "[backup] s3_timeout: must be more than 0 seconds"),
        ({"database": {"pool_min": 5, "pool_max": 2}}, "need 1 <= pool_min <= pool_max"),
        ({"database": {"read_timeout": 0}}, "[database] read_timeout: must be more than 0"),
        ({"database": {"write_timeout": -1}}, "[database] write_timeout: must be more than 0"),
        (
            {"database": {"lock_wait_timeout": 5, "read_timeout": 5}},
            "[database] lock_wait_timeout: must be at least 1 second and less than read_timeout",
        ),
        ({"database": {"lock_wait_timeout": 0}}, "[database] lock_wait_timeout: must be at least"),
    ],
)
def test_bad_values_name_the_key(document: dict[str, object], message: str) -> None:
    """Every kind of bad value is one line that names the key and what is wrong."""
    with pytest.raises(ConfigError) as e:
        config.parse(document)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_keys_list_the_known_ones() -> None:
    """A misspelt key is named, with the keys that section does know."""
    with pytest.raises(ConfigError, match=r"\[database\] hots: unknown key \(known keys: .*host"):
        config.parse({"database": {"hots": "db"}})


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    """Missing, empty and unreadable secret files are one line naming the key and the file."""
    settings = config.parse({"database": {"password_file": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match=r"\[database\] password_file: file .*nope not found"):
        config.check_files(settings)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    settings = config.parse({"database": {"password_file": str(empty)}})
    with pytest.raises(ConfigError, match="is empty"):
        config.check_files(settings)


@pytest.mark.parametrize(
    ("endpoint", "kind", "interface", "port"),
    [
        ("tcp:9101:interface=127.0.0.1", "tcp", "127.0.0.1", 9101),
        ("tcp:port=9101:interface=127.0.0.2:backlog=5", "tcp", "127.0.0.2", 9101),
        ("tcp6:9101:interface=\\:\\:1", "tcp6", "::1", 9101),
    ],
)
def test_a_loopback_control_endpoint_is_listened_on_as_parsed(
    endpoint: str, kind: str, interface: str, port: int
) -> None:
    """A loopback [control] tcp is accepted, and its endpoint binds that very address."""
    from twisted.internet.testing import MemoryReactor

    from clickpass.control.endpoint import parse_control_tcp
    from clickpass.control.service import tcp_endpoint

    config.parse({"control": {"tcp": endpoint, "token_file": "t"}})
    where = parse_control_tcp(endpoint)
    assert (where.kind, where.interface, where.port) == (kind, interface, port)
    reactor = MemoryReactor()
    tcp_endpoint(reactor, where).listen(Factory())
    (listened,) = reactor.tcpServers
    assert (listened[0], listened[3]) == (port, interface)


@pytest.mark.parametrize(("token", "ok"), [("x", False), ("a" * 31, False), ("a" * 32, True)])
def test_the_control_token_is_at_least_32_bytes(tmp_path: Path, token: str, ok: bool) -> None:
    """
    A TCP control port with a token shorter than 32 bytes is a configuration
    error naming [control] token_file and saying how to make a good one.
    """
    path = tmp_path / "token"
    path.write_text(token + "\n")
    settings = config.parse(
        {"control": {"tcp": "tcp:9101:interface=127.0.0.1", "token_file": str(path)}}
    )
    if ok:
        config.check_files(settings)
        assert config.control_token(settings) == token.encode()
        return
    with pytest.raises(ConfigError) as caught:
        config.check_files(settings)
    assert str(caught.value) == (
        f"[control] token_file: the token in {path} is {len(token)} bytes; at least 32 are "
        f"needed (make one with: openssl rand -hex 32 > {path})"
    )


def test_master_secret_is_created_once_and_kept(tmp_path: Path) -> None:
    """The embedded default creates a private secret on first start and reads it afterwards."""
    settings = config.parse({"node": {"data_dir": str(tmp_path / "data")}})
    first = config.master_secret(settings, create=True)
    assert len(first) == 32
    assert (tmp_path / "data" / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert config.master_secret(settings, create=True) == first


def test_a_configured_secret_file_is_never_invented(tmp_path: Path) -> None:
    """A secret file named in the configuration must exist: a node never makes one up."""
    settings = config.parse(
        {"node": {"data_dir": str(tmp_path)}, "secrets": {"secret_file": "cluster.key"}}
    )
    with pytest.raises(ConfigError, match=r"\[secrets\] secret_file: file .*cluster.key not found"):
        config.master_secret(settings, create=True)
    (tmp_path / "cluster.key").write_text("not hex\n")
    with pytest.raises(ConfigError, match="must hold hex digits"):
        config.master_secret(settings, create=True)


def test_url_for_endpoint() -> None:
    """The default public URL follows the first listener."""
    assert config.url_for_endpoint("tcp:8080:interface=127.0.0.1") == "http://127.0.0.1:8080/"
    assert config.url_for_endpoint("tcp:80") == "http://127.0.0.1/"
    assert config.url_for_endpoint("ssl:443:interface=\\:\\:1") == "https://[::1]/"


def _documented_keys(text: str) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^#?\[\[?([a-z_.]+)\]\]?$", line):
            section = m.group(1)
            keys.setdefault(section, set())
        elif m := re.match(r"^#?([a-z_][a-z0-9_]*) = ", line):
            keys[section].add(m.group(1))
    return keys


def test_example_is_up_to_date() -> None:
    """
    conf/clickpass.example.toml is what the code documents; regenerate it with
    `python -m clickpass.config > conf/clickpass.example.toml`.
    """
    assert (ROOT / "conf" / "clickpass.example.toml").read_text() == config.example_document()


def test_example_documents_every_key() -> None:
    """The example names every section and key the code knows, nested tables included."""
    documented = _documented_keys(config.example_document())

    def check(name: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            item = config._table_list_item(typing.get_type_hints(cls)[f.name])
            if item is not None:
                check(f"{name}.{f.name}", item)
            else:
                assert f.name in documented.get(name, set()), (name, f.name)

    for name, cls in config.sections().items():
        check(name, cls)


@pytest.mark.parametrize("name", ["single-node.toml", "clickpass.example.toml"])
def test_shipped_configurations_load(name: str) -> None:
    """The configurations in conf/ are valid."""
    path = ROOT / "conf" / name
    tomllib.loads(path.read_text())
    config.load(path)


def test_trust_forwarded_headers_false_is_still_accepted() -> None:
    """The old key at its old default (trust nothing) still loads, and trusts nothing."""
    settings = config.parse({"web": {"trust_forwarded_headers": False}})
    assert settings.web.trusted_proxies == []


def test_a_short_metrics_token_is_refused(tmp_path: Path) -> None:
    """A metrics token under 32 characters is a configuration error naming the key."""
    token = tmp_path / "metrics-token"
    token.write_text("short\n")
    settings = config.parse({"web": {"metrics_token_file": str(token)}})
    with pytest.raises(config.ConfigError, match=r"\[web\] metrics_token_file: the token in"):
        config.check_files(settings)
    token.write_text("x" * 32 + "\n")
    config.check_files(settings)
    assert config.metrics_token(settings) == b"x" * 32


def test_hashing_below_the_floor_only_when_said() -> None:
    """
    Password hashes cheaper than the floor are a node's only with
    [accounts] hash_below_floor = true, down to what argon2id itself needs.
    """
    settings = config.parse(
        {"accounts": {"hash_memory": 32, "hash_passes": 1, "hash_below_floor": True}}
    )
    assert (settings.accounts.hash_memory, settings.accounts.hash_passes) == (32, 1)
    at_floor = config.parse({"accounts": {"hash_memory": 19456, "hash_passes": 2}})
    assert (at_floor.accounts.hash_memory, at_floor.accounts.hash_passes) == (19456, 2)

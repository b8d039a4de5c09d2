"""
Configuration: one TOML file turned into typed, validated settings.

Each section of the file is a frozen dataclass below; a key is a field. The
loader checks every key against its field: unknown keys, wrong types and
files that cannot be read are reported as one clear line naming the key or
the file (L{ConfigError}), never as a traceback.

This module must never start anything or touch the network: it only reads
files and answers questions about them.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
import typing
from collections.abc import Mapping, Sequence
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from clickpass.accounts.settings import AccountsSettings
from clickpass.backup.settings import BackupSettings
from clickpass.balancer.settings import BalancerSettings, WorkersSettings
from clickpass.control.settings import ControlSettings as ControlSettings
from clickpass.dbagent.settings import DbAgentSettings
from clickpass.heartbeat.settings import ClusterSettings
from clickpass.mail.settings import MailSettings
from clickpass.mfa.settings import MfaSettings
from clickpass.monitor.settings import AlertsSettings
from clickpass.openid.settings import OpenIDSettings
from clickpass.partners.settings import PartnersSettings
from clickpass.settings_base import ConfigError as ConfigError
from clickpass.settings_base import doc as _doc
from clickpass.settings_base import read_secret_file as read_secret_file
from clickpass.upstream.settings import UpstreamSettings

DEFAULT_DATA_DIR = "./clickpass-data"
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
SECRET_BYTES = 32
METRICS_TOKEN_MIN = 32


@dataclasses.dataclass(frozen=True)
class NodeSettings:
    """[node]: who this node is and where it keeps its files."""

    name: str = dataclasses.field(
        default="node1", metadata=_doc("This node's id, unique within the cluster.")
    )
    data_dir: str = dataclasses.field(
        default=DEFAULT_DATA_DIR,
        metadata=_doc(
            "Directory for local files (SQLite database, secret, control socket), for Clickpass "
            "alone: the node makes it private (0700) at every start."
        ),
    )
    public_url: str = dataclasses.field(
        default="",
        metadata=_doc(
            "Base URL people and partners use, e.g. https://login.example.com/. "
            "Default: derived from the first listener."
        ),
    )


@dataclasses.dataclass(frozen=True)
class WebSettings:
    """[web]: the public HTTP(S) listeners."""

    listen: list[str] = dataclasses.field(
        default_factory=lambda: [DEFAULT_LISTEN],
        metadata=_doc("Endpoint strings to serve on, e.g. tcp:8080:interface=127.0.0.1."),
    )
    tls_certificate: str = dataclasses.field(
        default="", metadata=_doc("PEM certificate chain for ssl: listeners.")
    )
    tls_private_key: str = dataclasses.field(
        default="", metadata=_doc("PEM private key for ssl: listeners.")
    )
    metrics_token_file: str = dataclasses.field(
        default="",
        metadata=_doc(
            "File holding a bearer token (at least 32 characters, e.g. from "
            "`openssl rand -hex 32`). With it the public listeners serve /metrics to requests "
            "sending Authorization: Bearer TOKEN (others get a 401); without it, or with "
            "[balancer] metrics_listen set, they do not serve /metrics at all."
        ),
    )
    hsts_max_age: int = dataclasses.field(
        default=365 * 24 * 3600,
        metadata=_doc(
            "Seconds browsers are told to reach this service over https only "
            "(Strict-Transport-Security on every answer of the application), sent when "
            "[node] public_url is https://; 0: not sent."
        ),
    )
    trusted_proxies: list[str] = dataclasses.field(
        default_factory=list,
        metadata=_doc(
            "Address ranges of the reverse proxies in front of this node, e.g. "
            '["10.0.0.0/24", "192.0.2.7"]. Only from these are X-Forwarded-For/-Proto/-Host '
            "believed; the client is the rightmost X-Forwarded-For hop outside them. Empty: "
            "the client is whoever connected, and forwarding headers sent to the node are dropped."
        ),
    )
    privacy_page: str = dataclasses.field(
        default="",
        metadata=_doc(
            "The privacy page the footer of every page links to: an http(s) URL (linked as "
            "it is), or the path of a file holding the page's HTML body, served at /privacy "
            "inside Clickpass's layout. Empty: the page shipped with Clickpass."
        ),
    )
    terms_page: str = dataclasses.field(
        default="",
        metadata=_doc(
            "The terms of use page, as privacy_page (served at /terms). Empty: the page "
            "shipped with Clickpass."
        ),
    )
    help_page: str = dataclasses.field(
        default="",
        metadata=_doc(
            "The help page, as privacy_page (served at /help). Empty: the page shipped "
            "with Clickpass."
        ),
    )


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    """[database]: where everything that must survive a node's loss lives."""

    backend: Literal["sqlite", "mysql"] = dataclasses.field(
        default="sqlite", metadata=_doc('"sqlite" (embedded) or "mysql" (MariaDB/MySQL).')
    )
    path: str = dataclasses.field(
        default="clickpass.sqlite3",
        metadata=_doc("SQLite file, relative to [node] data_dir unless absolute."),
    )
    host: str = dataclasses.field(default="127.0.0.1", metadata=_doc("MariaDB host."))
    port: int = dataclasses.field(default=3306, metadata=_doc("MariaDB port."))
    unix_socket: str = dataclasses.field(
        default="", metadata=_doc("MariaDB unix socket; overrides host and port.")
    )
    user: str = dataclasses.field(default="clickpass", metadata=_doc("MariaDB user."))
    password_file: str = dataclasses.field(
        default="", metadata=_doc("File holding the MariaDB password (first line).")
    )
    name: str = dataclasses.field(default="clickpass", metadata=_doc("MariaDB database name."))
    pool_min: int = dataclasses.field(default=2, metadata=_doc("Connections kept open."))
    pool_max: int = dataclasses.field(default=8, metadata=_doc("Most connections at once."))
    connect_timeout: float = dataclasses.field(
        default=0.3,
        metadata=_doc(
            "Seconds to wait for MariaDB to accept a TCP connection (its kernel does, in "
            "milliseconds on a LAN); a connection refused or timed out during a failover is "
            "tried again through the VIP, so this bounds how long a client keeps knocking "
            "at an address that moved (docs/database-failover.md)."
        ),
    )
    read_timeout: float = dataclasses.field(
        default=5.0,
        metadata=_doc(
            "Seconds to wait for MariaDB's answer (also its greeting on a new connection) "
            "before the connection counts as lost: how long a statement waits on a primary "
            "that froze or became unreachable. Must be more than lock_wait_timeout and than "
            "the longest a commit may wait for the replica's acknowledgement (the database "
            "agent's degrade_after)."
        ),
    )
    write_timeout: float = dataclasses.field(
        default=5.0,
        metadata=_doc("Seconds to wait for MariaDB to take a statement being sent."),
    )
    lock_wait_timeout: int = dataclasses.field(
        default=3,
        metadata=_doc(
            "Seconds a statement waits for a row lock (innodb_lock_wait_timeout, set per "
            "connection) before it fails and its transaction runs again; less than "
            "read_timeout."
        ),
    )
    failover_wait: float = dataclasses.field(
        default=10.0,
        metadata=_doc(
            "Seconds a transaction that never reached a writable primary (the connection "
            "refused or timed out, the server answering read-only during a switchover) is "
            "tried again, with jittered backoff, before it fails with one clear line. A "
            "commit whose outcome is unknown is never tried again here "
            "(docs/database-failover.md). 0: never."
        ),
    )


@dataclasses.dataclass(frozen=True)
class SecretsSettings:
    """[secrets]: the node's master secret."""

    secret_file: str = dataclasses.field(
        default="",
        metadata=_doc(
            "File holding the cluster's master secret (64 hex digits). Every node of a "
            "cluster must use the same one, and it must never change: per-site "
            "identifiers derive from it. Default: <data_dir>/secret.key, created on "
            "first start."
        ),
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """The whole configuration of one node."""

    node: NodeSettings = dataclasses.field(default_factory=NodeSettings)
    web: WebSettings = dataclasses.field(default_factory=WebSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    secrets: SecretsSettings = dataclasses.field(default_factory=SecretsSettings)
    control: ControlSettings = dataclasses.field(default_factory=ControlSettings)
    openid: OpenIDSettings = dataclasses.field(default_factory=OpenIDSettings)
    accounts: AccountsSettings = dataclasses.field(default_factory=AccountsSettings)
    cluster: ClusterSettings = dataclasses.field(default_factory=ClusterSettings)
    workers: WorkersSettings = dataclasses.field(default_factory=WorkersSettings)
    balancer: BalancerSettings = dataclasses.field(default_factory=BalancerSettings)
    upstream: UpstreamSettings = dataclasses.field(default_factory=UpstreamSettings)
    backup: BackupSettings = dataclasses.field(default_factory=BackupSettings)
    alerts: AlertsSettings = dataclasses.field(default_factory=AlertsSettings)
    partners: PartnersSettings = dataclasses.field(default_factory=PartnersSettings)
    dbagent: DbAgentSettings = dataclasses.field(default_factory=DbAgentSettings)
    mail: MailSettings = dataclasses.field(default_factory=MailSettings)
    mfa: MfaSettings = dataclasses.field(default_factory=MfaSettings)
    source: str = dataclasses.field(default="(embedded default)", metadata={"internal": "true"})

    # Derived paths, resolved against data_dir.

    def data_path(self, value: str) -> Path:
        """Resolve C{value} against C{[node] data_dir} unless it is absolute."""
        path = Path(value)
        if path.is_absolute():
            return path
        return Path(self.node.data_dir) / path

    @property
    def control_socket(self) -> Path:
        return self.data_path(self.control.socket or "control.sock")

    @property
    def secret_path(self) -> Path:
        return self.data_path(self.secrets.secret_file or "secret.key")

    @property
    def sqlite_path(self) -> Path:
        return self.data_path(self.database.path)

    @property
    def base_url(self) -> str:
        """The public base URL, always ending in a slash."""
        url = self.node.public_url or url_for_endpoint(self.web.listen[0])
        return url if url.endswith("/") else url + "/"

    @property
    def served_over_tls(self) -> bool:
        return self.base_url.startswith("https://")


def url_for_endpoint(endpoint: str) -> str:
    """
    Guess the URL a person would use for a listener endpoint string, for the
    embedded default where no public_url is configured.
    """
    # Endpoint strings escape colons inside values as "\:".
    parts = [p.replace("\x00", ":") for p in endpoint.replace("\\:", "\x00").split(":")]
    kind = parts[0]
    port = parts[1] if len(parts) > 1 else "80"
    host = "127.0.0.1"
    for part in parts[2:]:
        if part.startswith("interface="):
            host = part.split("=", 1)[1] or host
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind serves loopback too
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    default_port = "443" if scheme == "https" else "80"
    netloc = host if port == default_port else f"{host}:{port}"
    return f"{scheme}://{netloc}/"


def public_url_problem(public_url: str, listeners: Sequence[str]) -> str | None:
    """
    A one-line warning when no listener serves C{public_url}'s scheme and
    port (on its address, when the URL names an address): people would be
    sent where this node does not answer. A unix: listener means a proxy in
    front, which may serve any URL, so it never warns.
    """
    if not public_url:
        return None
    wanted = urlsplit(public_url)
    try:
        port = wanted.port or (443 if wanted.scheme == "https" else 80)
    except ValueError:
        return None
    host = (wanted.hostname or "").lower()
    for endpoint in listeners:
        parts = [p.replace("\x00", ":") for p in endpoint.replace("\\:", "\x00").split(":")]
        if parts[0] == "unix":
            return None
        scheme = "https" if parts[0] == "ssl" else "http"
        interface = next((p[10:].lower() for p in parts[2:] if p.startswith("interface=")), "")
        anywhere = interface in ("", "0.0.0.0", "::") or not _is_address(host)  # noqa: S104
        if (
            scheme == wanted.scheme
            and parts[1:2] == [str(port)]
            and (anywhere or _same_address(interface, host))
        ):
            return None
    return (
        f"[node] public_url {public_url} is served by none of this node's listeners "
        f"({', '.join(listeners)}): check its scheme and port, unless a proxy in front "
        "forwards to them"
    )


def _is_address(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _same_address(a: str, b: str) -> bool:
    try:
        return ip_address(a) == ip_address(b)
    except ValueError:
        return False


# Parsing and validation.

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_value(where: str, value: object, annotation: Any) -> object:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            wanted = " or ".join(f'"{c}"' for c in choices)
            raise ConfigError(f"{where}: must be {wanted}, not {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return [_check_value(f"{where}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _build_table(annotation, where, value)
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ConfigError(
        f"{where}: expected {_TYPE_NAMES.get(annotation, annotation)}, got {_describe(value)}"
    )


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _build_section(cls: type[Any], name: str, table: object) -> Any:
    return _build_table(cls, f"[{name}]", table)


def _build_table(cls: type[Any], where: str, table: object) -> Any:
    """Build dataclass C{cls} from a TOML table (a section or an item of a list)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {_describe(table)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, object] = {}
    for key, value in table.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where} {key}: unknown key (known keys: {known})")
        values[key] = _check_value(f"{where} {key}", value, hints[key])
    return cls(**values)


def sections() -> Mapping[str, type[Any]]:
    """The sections a configuration file may have, by name."""
    hints = typing.get_type_hints(Settings)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(Settings)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])
    }


def parse(document: Mapping[str, object], source: str = "(string)") -> Settings:
    """Turn a parsed TOML document into L{Settings}, or raise L{ConfigError}."""
    known = sections()
    # Each value is an instance of its section's class, checked against the
    # field's type by _build_table; the mapping from name to class is known
    # only at run time (sections()), so the values are Any to mypy.
    built: dict[str, Any] = {}
    document = _retire_keys(document)
    for name, table in document.items():
        if name not in known:
            names = ", ".join(f"[{n}]" for n in known)
            raise ConfigError(f"[{name}]: unknown section (known sections: {names})")
        built[name] = _build_section(known[name], name, table)
    settings = Settings(**built, source=source)
    _check_semantics(settings)
    return settings


def _retire_keys(document: Mapping[str, object]) -> Mapping[str, object]:
    """
    Keys that were replaced: one that no longer means what it said is an
    error saying what to write instead; one that still does is dropped.
    """
    web = document.get("web")
    if not isinstance(web, dict) or "trust_forwarded_headers" not in web:
        return document
    if web["trust_forwarded_headers"] is not False:
        raise ConfigError(
            "[web] trust_forwarded_headers: no longer used; list the address ranges of "
            'your reverse proxies in [web] trusted_proxies instead (e.g. ["10.0.0.0/24"])'
        )
    # false, the old default: nothing is trusted, as with no trusted_proxies.
    web = {k: v for k, v in web.items() if k != "trust_forwarded_headers"}
    return {**document, "web": web}


def _check_semantics(settings: Settings) -> None:
    if not settings.web.listen:
        raise ConfigError("[web] listen: at least one endpoint is needed")
    if settings.web.hsts_max_age < 0:
        raise ConfigError("[web] hsts_max_age: must be 0 (not sent) or more seconds")
    for i, text in enumerate(settings.web.trusted_proxies):
        try:
            ip_network(text.strip())
        except ValueError:
            raise ConfigError(
                f"[web] trusted_proxies[{i}]: {text!r} is not an address range "
                "(write 10.0.0.0/24, or one address such as 192.0.2.7)"
            ) from None
    for i, endpoint in enumerate(settings.web.listen):
        kind = endpoint.split(":", 1)[0]
        if kind not in ("tcp", "ssl", "unix", "tcp6"):
            raise ConfigError(
                f"[web] listen[{i}]: {endpoint!r} is not a tcp:, tcp6:, ssl: or unix: endpoint"
            )
        if kind == "ssl" and not (settings.web.tls_certificate and settings.web.tls_private_key):
            raise ConfigError(
                f"[web] listen[{i}]: an ssl: listener needs [web] tls_certificate and "
                "tls_private_key"
            )
    public = settings.node.public_url
    if public and not public.startswith(("http://", "https://")):
        raise ConfigError(f"[node] public_url: {public!r} must start with http:// or https://")
    db = settings.database
    if not 1 <= db.port <= 65535:
        raise ConfigError(f"[database] port: {db.port} is not a TCP port")
    if db.pool_min < 1 or db.pool_max < db.pool_min:
        raise ConfigError("[database] pool_min/pool_max: need 1 <= pool_min <= pool_max")
    for key in ("connect_timeout", "read_timeout", "write_timeout"):
        if getattr(db, key) <= 0:
            raise ConfigError(f"[database] {key}: must be more than 0 seconds")
    if not 1 <= db.lock_wait_timeout < db.read_timeout:
        raise ConfigError(
            "[database] lock_wait_timeout: must be at least 1 second and less than "
            "read_timeout, so that a lock wait ends in an error the transaction is run again "
            "for, not in a connection given up for lost"
        )
    if not 0 <= db.failover_wait <= 60:
        raise ConfigError("[database] failover_wait: must be between 0 and 60 seconds")
    settings.control.check()
    # Each feature's section checks itself; then the rules that join sections.
    settings.accounts.check()
    settings.cluster.check()
    if settings.dbagent.enabled:
        _check_dbagent_host(settings)
    for section in (
        settings.dbagent,
        settings.workers,
        settings.balancer,
        settings.backup,
        settings.alerts,
        settings.upstream,
        settings.partners,
        settings.mail,
        settings.mfa,
    ):
        section.check()
    if settings.balancer.redirect_http_to_https and not settings.base_url.startswith("https://"):
        raise ConfigError(
            "[balancer] redirect_http_to_https: needs an https:// [node] public_url to redirect to"
        )


def _check_dbagent_host(settings: Settings) -> None:
    """What the database agent needs of the heartbeat: an inline member with its db group."""
    db = settings.dbagent
    cluster = settings.cluster
    if not cluster.enabled or cluster.role != "member":
        raise ConfigError("[dbagent] enabled: needs [cluster] enabled = true (role member)")
    if cluster.process != "inline":
        raise ConfigError('[dbagent] enabled: needs [cluster] process = "inline"')
    groups = {g.name: g for g in cluster.group}
    if db.group not in groups:
        raise ConfigError(f"[dbagent] group: no [[cluster.group]] named {db.group!r}")
    checks = {c.name: c.weight for c in groups[db.group].check}
    if checks.get(db.health_check) != 0:
        raise ConfigError(
            f"[dbagent] health_check: group {db.group!r} needs a check named "
            f"{db.health_check!r} with weight 0 ([[cluster.group.check]])"
        )


def load(path: str | os.PathLike[str] | None) -> Settings:
    """
    Read the configuration file at C{path}, or return the embedded default
    when C{path} is L{None}. Raise L{ConfigError} with one clear line when
    the file cannot be used.
    """
    if path is None:
        return Settings()
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: configuration file not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    return parse(document, source=str(path))


def master_secret(settings: Settings, create: bool) -> bytes:
    """
    The cluster's master secret. When no secret file is configured and
    C{create} is true, one is generated under the data directory on first
    start (mode 0600); a configured file that is missing is an error.
    """
    path = settings.secret_path
    key = "[secrets] secret_file"
    if create:
        # The data directory holds the database and the secret: private.
        Path(settings.node.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists() and create and not settings.secrets.secret_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(SECRET_BYTES) + "\n")
    text = read_secret_file(path, key)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{key}: {path} must hold hex digits") from None
    if len(value) < 16:
        raise ConfigError(f"{key}: {path} holds {len(value)} bytes; at least 16 are needed")
    return value


def check_files(settings: Settings) -> None:
    """
    Check that every file the configuration names can be read, so that a
    node refuses to start with one clear line rather than failing later.
    """
    for key, value in (
        ("[web] tls_certificate", settings.web.tls_certificate),
        ("[web] tls_private_key", settings.web.tls_private_key),
        ("[web] metrics_token_file", settings.web.metrics_token_file),
        ("[database] password_file", settings.database.password_file),
        ("[control] token_file", settings.control.token_file),
        ("[cluster] secret_file", settings.cluster.secret_file),
        ("[backup] key_file", settings.backup.key_file),
        ("[backup] secret_access_key_file", settings.backup.secret_access_key_file),
        ("[backup] source_password_file", settings.backup.source_password_file),
        ("[alerts] webhook_secret_file", settings.alerts.webhook_secret_file),
        ("[alerts] smtp_password_file", settings.alerts.smtp_password_file),
        ("[upstream] ca_bundle", settings.upstream.ca_bundle),
        ("[mail] password_file", settings.mail.password_file),
        ("[mail] ca_bundle", settings.mail.ca_bundle),
        *(
            (f"[[upstream.provider]] {p.name} client_secret_file", p.client_secret_file)
            for p in settings.upstream.provider
        ),
    ):
        if value:
            read_secret_file(settings.data_path(value), key)
    for name in ("privacy", "terms", "help"):
        # A page given as a file (not a URL) is read at every start.
        page = getattr(settings.web, f"{name}_page")
        if page and not page.startswith(("http://", "https://")):
            read_secret_file(settings.data_path(page), f"[web] {name}_page")
    if settings.web.metrics_token_file:
        metrics_token(settings)
    if settings.control.tcp:
        control_token(settings)


def metrics_token(settings: Settings) -> bytes:
    """The bearer token /metrics needs on the public listeners ([web] metrics_token_file)."""
    key = "[web] metrics_token_file"
    path = settings.data_path(settings.web.metrics_token_file)
    token = read_secret_file(path, key)
    if len(token) < METRICS_TOKEN_MIN:
        raise ConfigError(
            f"{key}: the token in {path} has {len(token)} characters; use at least "
            f"{METRICS_TOKEN_MIN} (e.g. openssl rand -hex 32)"
        )
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"{key}: the token in {path} must be printable ASCII without spaces")
    return token.encode("ascii")


# A guessable token would open every operator command to any local user.
CONTROL_TOKEN_MIN_BYTES = 32


def control_token(settings: Settings) -> bytes:
    """
    The token the TCP control port requires, from C{[control] token_file};
    L{ConfigError} when it cannot be read or is shorter than
    L{CONTROL_TOKEN_MIN_BYTES}.
    """
    path = settings.data_path(settings.control.token_file)
    token = read_secret_file(path, "[control] token_file").encode("utf-8")
    if len(token) < CONTROL_TOKEN_MIN_BYTES:
        raise ConfigError(
            f"[control] token_file: the token in {path} is {len(token)} bytes; at least "
            f"{CONTROL_TOKEN_MIN_BYTES} are needed (make one with: openssl rand -hex 32 > {path})"
        )
    return token


def _table_list_item(annotation: object) -> type[Any] | None:
    """The dataclass of a C{list[SomeSettings]} field (an array of tables), or None."""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            return item
    return None


def _example_table(header: str, name: str, cls: type[Any], lines: list[str]) -> None:
    lines.append(header)
    doc = (cls.__doc__ or "").strip()
    if doc:
        lines.append(f"# {doc}")
    hints = typing.get_type_hints(cls)
    nested: list[tuple[str, type[Any]]] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        item = _table_list_item(hints[f.name])
        if item is not None:
            nested.append((f"{name}.{f.name}", item))
            continue
        lines.append(f"# {f.metadata.get('doc', '')}")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"#{f.name} = {_toml(default)}")
    lines.append("")
    for nested_name, item in nested:
        # Arrays of tables are commented out whole: an example, not a default.
        _example_table(f"#[[{nested_name}]]", nested_name, item, lines)


EXAMPLE_HEADER = """\
# Clickpass configuration: every key, with its default and what it does.
#
# Run a node with:   twistd -n clickpass --config /etc/clickpass/node.toml
# With no --config at all, a node runs the embedded default shown here
# (one node, SQLite under ./clickpass-data/, HTTP on 127.0.0.1:8080).
#
# Relative paths are resolved against [node] data_dir. Unknown keys, wrong
# types and unreadable files stop the node with one line naming the problem.
# Generated from clickpass/config.py by:
#   python -m clickpass.config > conf/clickpass.example.toml
# (tests/unit/test_config.py fails when this file is out of date).

"""


def example_document() -> str:
    """Render every section and key with its default and documentation."""
    lines: list[str] = [EXAMPLE_HEADER]
    for name, cls in sections().items():
        _example_table(f"[{name}]", name, cls, lines)
    return "\n".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


__all__ = [
    "ConfigError",
    "Settings",
    "check_files",
    "control_token",
    "load",
    "master_secret",
    "metrics_token",
    "parse",
]


if __name__ == "__main__":
    print(example_document(), end="")

"""
Backups end to end, through the real scripts and a local S3 (moto): back up
a database holding data, restore it into an empty target, and every row is
identical, on SQLite and on MariaDB (where the restored server can also
join as a replica from the backup's GTID position). A corrupted or
truncated backup is refused and the target is left untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clickpass import config as configmod
from clickpass.storage.offline import migrate_offline
from tests.integration.backup.conftest import S3Server, backup_section
from tests.support.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

ROWS = [
    (1, "plain ascii", b"\x00\x01\x02", 0),
    (2, "unicode: żółw 🐢 'quoted' \"double\" \\ back", b"\xff" * 300, -(2**62)),
    (3, "", b"", 2**62),
    (4, "line\nbreak\ttab", None, None),
]


def cli(tool: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clickpass.backup.cli", tool, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


# ---------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------


def sqlite_node(tmp_path: Path, s3: S3Server, bucket: str) -> Path:
    data = tmp_path / "data"
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nname = "app1"\ndata_dir = "{data}"\n\n'
        + backup_section(tmp_path / "keys", s3, bucket, keep_daily=2, keep_weekly=1)
    )
    settings = configmod.load(config)
    configmod.master_secret(settings, create=True)
    migrate_offline(settings)
    db = sqlite3.connect(settings.sqlite_path)
    with db:
        db.execute("CREATE TABLE probe (id INTEGER PRIMARY KEY, name TEXT, data BLOB, n INTEGER)")
        db.executemany("INSERT INTO probe VALUES (?, ?, ?, ?)", ROWS)
        db.executemany(
            "INSERT INTO accounts (uid, email, password_hash, created) VALUES (?, ?, ?, ?)",
            [(f"uid{i}", f"person{i}@example.com", "x" * 60, 1_700_000_000 + i) for i in range(50)],
        )
    db.close()
    return config


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {t: db.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
    finally:
        db.close()


def test_sqlite_backup_restores_every_row(tmp_path: Path, s3_server: S3Server, bucket: str) -> None:
    """Back up, then restore into a new SQLite file: identical rows, config and secret."""
    config = sqlite_node(tmp_path, s3_server, bucket)
    settings = configmod.load(config)
    result = ok(cli("backup", config, "--json"))
    summary = json.loads(result.stdout)
    assert summary["backup"].startswith("app1/")
    assert set(summary["files"]) == {"database", "config", "secret"}
    status = json.loads((Path(settings.node.data_dir) / "backup-status.json").read_text())
    assert status["last_backup"] == summary["backup"]

    listing = ok(cli("restore", config, "--json", "list"))
    (entry,) = json.loads(listing.stdout)
    assert entry["backup"] == summary["backup"] and entry["complete"]

    target = tmp_path / "restored" / "clickpass.sqlite3"
    restored = ok(
        cli(
            "restore",
            config,
            "restore",
            "latest",
            "--node",
            "app1",
            "--sqlite-path",
            str(target),
            "--config-to",
            str(tmp_path / "restored.toml"),
            "--secret-to",
            str(tmp_path / "restored.key"),
        )
    )
    assert "outcome: restored" in restored.stdout
    original = sqlite_rows(settings.sqlite_path)
    assert original["probe"] == ROWS and len(original["accounts"]) == 50
    assert sqlite_rows(target) == original
    assert (tmp_path / "restored.toml").read_bytes() == config.read_bytes()
    assert (tmp_path / "restored.key").read_bytes() == settings.secret_path.read_bytes()

    again = cli("restore", config, "restore", "latest", "--sqlite-path", str(target))
    assert again.returncode == 1 and "already exists" in again.stderr


def objects(s3: S3Server, bucket: str) -> dict[str, bytes]:
    client: Any = s3.client()
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {
        o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing
    }


def replace(s3: S3Server, bucket: str, key: str, data: bytes) -> None:
    client: Any = s3.client()
    client.put_object(Bucket=bucket, Key=key, Body=data)


@pytest.fixture
def sqlite_backup(tmp_path: Path, s3_server: S3Server, bucket: str) -> Iterator[tuple[Path, str]]:
    config = sqlite_node(tmp_path, s3_server, bucket)
    ok(cli("backup", config))
    yield (
        config,
        next(k for k in objects(s3_server, bucket) if k.endswith("database.sqlite3.gz.enc")),
    )


def flip_middle(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x40
    return bytes(damaged)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(flip_middle, id="flipped-byte"),
        pytest.param(lambda d: d[: len(d) // 2], id="truncated-half"),
        pytest.param(lambda d: d[:-1], id="truncated-last-byte"),
        pytest.param(lambda d: d + b"\x00", id="extended"),
    ],
)
def test_damaged_sqlite_backup_is_refused(
    tmp_path: Path, s3_server: S3Server, bucket: str, sqlite_backup: tuple[Path, str], damage: Any
) -> None:
    """A damaged database object: verify and restore refuse (exit 3) and create nothing."""
    config, key = sqlite_backup
    replace(s3_server, bucket, key, damage(objects(s3_server, bucket)[key]))
    verify = cli("restore", config, "verify", "latest")
    assert verify.returncode == 3, verify.stderr
    assert "REFUSED" in verify.stderr and "Traceback" not in verify.stderr
    target = tmp_path / "never" / "clickpass.sqlite3"
    restore = cli("restore", config, "restore", "latest", "--sqlite-path", str(target))
    assert restore.returncode == 3, restore.stderr
    assert not target.exists() and not target.parent.exists()


def test_damaged_or_missing_manifest_is_refused(
    tmp_path: Path, s3_server: S3Server, bucket: str, sqlite_backup: tuple[Path, str]
) -> None:
    """A tampered manifest fails authentication; a missing one leaves no complete backup."""
    config, key = sqlite_backup
    manifest = key.rsplit("/", 1)[0] + "/manifest.enc"
    replace(s3_server, bucket, manifest, flip_middle(objects(s3_server, bucket)[manifest]))
    verify = cli("restore", config, "verify", "latest")
    assert verify.returncode == 3 and "manifest.enc" in verify.stderr
    client: Any = s3_server.client()
    client.delete_object(Bucket=bucket, Key=manifest)
    listing = ok(cli("restore", config, "list"))
    assert "INCOMPLETE" in listing.stdout
    verify = cli("restore", config, "verify", "latest")
    assert verify.returncode == 1 and "no complete backup" in verify.stderr


def test_wrong_key_is_refused(tmp_path: Path, sqlite_backup: tuple[Path, str]) -> None:
    """A backup read with another key is refused, not decrypted into garbage."""
    config, _ = sqlite_backup
    key_file = tmp_path / "keys" / "backup.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    verify = cli("restore", config, "verify", "latest")
    assert verify.returncode == 3 and "wrong key" in verify.stderr


def test_failed_backup_exits_nonzero_and_records_it(tmp_path: Path, s3_server: S3Server) -> None:
    """A bucket that does not exist: one line on stderr, exit 1, failure recorded."""
    config = sqlite_node(tmp_path, s3_server, "no-such-bucket")
    result = cli("backup", config)
    assert result.returncode == 1
    assert result.stderr.startswith("backup: FAILED:") and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    data = Path(configmod.load(config).node.data_dir)
    status = json.loads((data / "backup-status.json").read_text())
    assert "does not exist" in status["last_error"] and "last_success" not in status


# ---------------------------------------------------------------------------
# MariaDB
# ---------------------------------------------------------------------------


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[MariaDBServer]:
    """A MariaDB primary with a binary log and GTIDs, as production runs it."""
    server = MariaDBServer(
        tmp_path / "primary",
        extra_options=("--log-bin=mysql-bin", "--server-id=1", "--binlog-format=ROW"),
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[MariaDBServer]:
    """An empty MariaDB server to restore into."""
    server = MariaDBServer(tmp_path / "fresh", extra_options=("--server-id=2",))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def mysql_node(tmp_path: Path, s3: S3Server, bucket: str, primary: MariaDBServer) -> Path:
    data = tmp_path / "data"
    data.mkdir(parents=True)
    (data / "db-password").write_text(primary.password + "\n")
    (data / "backup-db-password").write_text("backup-pw\n")
    primary.admin_execute("CREATE USER 'backup'@'%' IDENTIFIED BY 'backup-pw'")
    primary.admin_execute(
        "GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, RELOAD, BINLOG MONITOR "
        "ON *.* TO 'backup'@'%'"
    )
    primary.admin_execute("CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-pw'")
    primary.admin_execute("GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'")
    config = tmp_path / "db1.toml"
    config.write_text(
        f'[node]\nname = "db1"\ndata_dir = "{data}"\n\n'
        f'[database]\nbackend = "mysql"\nhost = "127.0.0.1"\nport = {primary.port}\n'
        f'user = "{primary.user}"\npassword_file = "db-password"\nname = "{primary.database}"\n\n'
        + backup_section(
            tmp_path / "keys",
            s3,
            bucket,
            source_user="backup",
            source_password_file="backup-db-password",
        )
    )
    settings = configmod.load(config)
    configmod.master_secret(settings, create=True)
    migrate_offline(settings)
    connection = primary.connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE probe (id BIGINT PRIMARY KEY, name VARCHAR(200), data LONGBLOB, "
                "n BIGINT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )
            cursor.executemany("INSERT INTO probe VALUES (%s, %s, %s, %s)", ROWS)
            cursor.executemany(
                "INSERT INTO accounts (uid, email, password_hash, created) VALUES (%s, %s, %s, %s)",
                [(f"u{i}", f"p{i}@example.com", "y" * 60, 1_700_000_000 + i) for i in range(200)],
            )
        connection.commit()
    finally:
        connection.close()
    return config


def mysql_rows(server: MariaDBServer, database: str) -> dict[str, list[tuple[Any, ...]]]:
    connection = server.admin_connection(database=database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "ORDER BY table_name",
                (database,),
            )
            tables = [r[0] for r in cursor.fetchall()]
            rows = {}
            for table in tables:
                cursor.execute(f"SELECT * FROM `{table}` ORDER BY 1")
                rows[table] = [tuple(r) for r in cursor.fetchall()]
            return rows
    finally:
        connection.close()


@pytest.mark.mariadb
def test_mariadb_backup_restores_into_fresh_server_and_replicates(
    tmp_path: Path,
    s3_server: S3Server,
    bucket: str,
    primary: MariaDBServer,
    fresh_server: MariaDBServer,
) -> None:
    """
    A dump of a live primary (with its GTID position) restored into an
    empty server: every row identical; joined as a replica from that
    position, it then receives the primary's new writes and only those.
    """
    config = mysql_node(tmp_path, s3_server, bucket, primary)
    summary = json.loads(ok(cli("backup", config, "--json")).stdout)
    assert summary["database"] == "mysql" and summary["gtid"].startswith("0-1-")
    (tmp_path / "repl-pw").write_text("repl-pw\n")
    restored = ok(
        cli(
            "restore",
            config,
            "--json",
            "restore",
            "latest",
            "--socket",
            str(fresh_server.socket_path),
            "--user",
            "root",
            "--database",
            primary.database,
            "--replicate-from",
            f"127.0.0.1:{primary.port}",
            "--replication-user",
            "repl",
            "--replication-password-file",
            str(tmp_path / "repl-pw"),
        )
    )
    assert json.loads(restored.stdout)["tables"] >= 10
    original = mysql_rows(primary, primary.database)
    assert [r[:3] for r in original["probe"]] == [r[:3] for r in ROWS]
    assert len(original["accounts"]) == 200

    # New writes on the primary reach the restored replica, once each.
    connection = primary.connection()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO probe VALUES (5, 'after the backup', NULL, 5)")
    connection.commit()
    connection.close()
    expected = mysql_rows(primary, primary.database)
    deadline = time.monotonic() + 30
    while mysql_rows(fresh_server, primary.database) != expected:
        status = fresh_server.admin_execute("SHOW SLAVE STATUS")
        assert time.monotonic() < deadline, f"replica never caught up: {status}"
        time.sleep(0.1)
    assert len(expected["probe"]) == 5


@pytest.mark.mariadb
def test_damaged_mariadb_backup_leaves_target_untouched(
    tmp_path: Path,
    s3_server: S3Server,
    bucket: str,
    primary: MariaDBServer,
    fresh_server: MariaDBServer,
) -> None:
    """A truncated dump object is refused before the target server is even connected to."""
    config = mysql_node(tmp_path, s3_server, bucket, primary)
    ok(cli("backup", config))
    key = next(k for k in objects(s3_server, bucket) if k.endswith("database.sql.gz.enc"))
    replace(s3_server, bucket, key, objects(s3_server, bucket)[key][:-100])
    restore = cli(
        "restore",
        config,
        "restore",
        "latest",
        "--socket",
        str(fresh_server.socket_path),
        "--user",
        "root",
        "--database",
        "restored",
    )
    assert restore.returncode == 3 and "REFUSED" in restore.stderr, restore.stderr
    assert fresh_server.admin_execute("SHOW DATABASES LIKE 'restored'") == []


@pytest.mark.mariadb
def test_restore_refuses_a_database_holding_data(
    tmp_path: Path, s3_server: S3Server, bucket: str, primary: MariaDBServer
) -> None:
    """Restoring over a database that has tables is refused without --force."""
    config = mysql_node(tmp_path, s3_server, bucket, primary)
    ok(cli("backup", config))
    restore = cli(
        "restore",
        config,
        "restore",
        "latest",
        "--socket",
        str(primary.socket_path),
        "--user",
        "root",
        "--database",
        primary.database,
    )
    assert restore.returncode == 1 and "already holds" in restore.stderr

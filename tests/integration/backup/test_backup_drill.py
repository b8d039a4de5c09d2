"""
What an operator's restore drill (docs/backup.md, moto as S3) must find
true: a refused restore writes nothing, so the next attempt is not refused
for what the first left behind; restored files are private to their owner;
a wrong key is told apart from a damaged backup; unfinished multipart
uploads are aborted; a missing bucket and a hung S3 fail with one line,
the hung one within a bound.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clickpass import config as configmod
from clickpass.backup import archive
from clickpass.backup.store import PendingUpload, S3Store, StoreError
from clickpass.storage.offline import migrate_offline
from tests.integration.backup.conftest import S3Server
from tests.integration.backup.test_backup_restore import (
    flip_middle,
    objects,
    ok,
    replace,
    sqlite_node,
    sqlite_rows,
)

pytestmark = pytest.mark.integration


def cli(
    tool: str, config: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real command line, run with a umask of 022 as a login shell would have."""
    return subprocess.run(
        [sys.executable, "-m", "clickpass.backup.cli", tool, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=lambda: os.umask(0o022),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_restore_checks_every_target_before_writing_anything(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """
    --secret-to onto an existing file is refused before the database is
    written; once the operator moves that file away, the same command
    restores everything.
    """
    config = sqlite_node(tmp_path, s3_server, bucket)
    ok(cli("backup", config))
    target = tmp_path / "restored" / "clickpass.sqlite3"
    secret = tmp_path / "existing-secret.key"
    secret.write_bytes(b"an operator's secret, not to be overwritten\n")
    command = (
        "restore",
        "latest",
        "--sqlite-path",
        str(target),
        "--config-to",
        str(tmp_path / "restored.toml"),
        "--secret-to",
        str(secret),
    )
    refused = cli("restore", config, *command)
    assert refused.returncode == 1, refused.stderr
    assert "already exists" in refused.stderr and str(secret) in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not target.exists() and not target.parent.exists()
    assert not (tmp_path / "restored.toml").exists()
    assert secret.read_bytes() == b"an operator's secret, not to be overwritten\n"

    secret.unlink()
    ok(cli("restore", config, *command))
    assert sqlite_rows(target) == sqlite_rows(configmod.load(config).sqlite_path)


def test_restore_refuses_secret_to_when_the_backup_holds_none(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """A master secret the backup does not hold is refused before the database is written."""
    config = sqlite_node(tmp_path, s3_server, bucket)
    config.write_text(config.read_text() + "include_secret = false\n")
    ok(cli("backup", config))
    target = tmp_path / "restored" / "clickpass.sqlite3"
    refused = cli(
        "restore", config, "restore", "latest", "--sqlite-path", str(target),
        "--secret-to", str(tmp_path / "secret.key"),
    )  # fmt: skip
    assert refused.returncode == 1 and "holds no master secret" in refused.stderr
    assert not target.exists()


def test_restored_directory_and_files_are_private(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """
    Under a umask of 022, a restore creates its directories 0700 and the
    database, configuration and master secret 0600: they hold password
    hashes and the key to every per-site identifier.
    """
    config = sqlite_node(tmp_path, s3_server, bucket)
    ok(cli("backup", config))
    data = tmp_path / "new" / "data"
    ok(
        cli(
            "restore", config, "restore", "latest",
            "--sqlite-path", str(data / "clickpass.sqlite3"),
            "--config-to", str(tmp_path / "node.toml.restored"),
            "--secret-to", str(data / "secret.key"),
        )
    )  # fmt: skip
    assert mode(tmp_path / "new") == 0o700
    assert mode(data) == 0o700
    assert mode(data / "clickpass.sqlite3") == 0o600
    assert mode(data / "secret.key") == 0o600
    assert mode(tmp_path / "node.toml.restored") == 0o600
    assert sorted(p.name for p in data.iterdir()) == ["clickpass.sqlite3", "secret.key"]

    # A --config-to in a directory that does not exist yet: created 0700 too.
    ok(
        cli(
            "restore", config, "restore", "latest",
            "--sqlite-path", str(tmp_path / "other" / "clickpass.sqlite3"),
            "--config-to", str(tmp_path / "etc" / "node.toml"),
        )
    )  # fmt: skip
    assert mode(tmp_path / "etc") == 0o700
    assert mode(tmp_path / "etc" / "node.toml") == 0o600


@pytest.fixture
def backed_up(tmp_path: Path, s3_server: S3Server, bucket: str) -> Iterator[Path]:
    config = sqlite_node(tmp_path, s3_server, bucket)
    ok(cli("backup", config))
    yield config


def test_wrong_key_is_told_apart_from_damage(
    tmp_path: Path, s3_server: S3Server, bucket: str, backed_up: Path
) -> None:
    """
    Read with another key, the backup is refused as "wrong key" naming both
    key ids, not as damaged; a damaged manifest read with the right key is
    refused as damaged, without suggesting the key.
    """
    key_file = tmp_path / "keys" / "backup.key"
    right = key_file.read_text()
    key_file.write_text(os.urandom(32).hex() + "\n")
    wrong = cli("restore", backed_up, "verify", "latest")
    assert wrong.returncode == 3, wrong.stderr
    assert wrong.stderr.startswith("restore: REFUSED, wrong key:")
    assert "damaged" not in wrong.stderr

    key_file.write_text(right)
    manifest = next(k for k in objects(s3_server, bucket) if k.endswith("/manifest.enc"))
    replace(s3_server, bucket, manifest, flip_middle(objects(s3_server, bucket)[manifest]))
    damaged = cli("restore", backed_up, "verify", "latest")
    assert damaged.returncode == 3, damaged.stderr
    assert damaged.stderr.startswith("restore: REFUSED, the backup is damaged:")
    assert "another key" not in damaged.stderr


def test_backup_without_key_id_says_either_cause(
    tmp_path: Path, s3_server: S3Server, bucket: str, backed_up: Path
) -> None:
    """A backup that stores no key id (older ones) says it is damaged *or* read with another key."""
    client: Any = s3_server.client()
    key_id = next(k for k in objects(s3_server, bucket) if k.endswith("/key-id"))
    client.delete_object(Bucket=bucket, Key=key_id)
    (tmp_path / "keys" / "backup.key").write_text(os.urandom(32).hex() + "\n")
    result = cli("restore", backed_up, "verify", "latest")
    assert result.returncode == 3
    assert "damaged or was encrypted with another key" in result.stderr


def uploads(s3: S3Server, bucket: str) -> list[str]:
    client: Any = s3.client()
    return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def start_upload(s3: S3Server, bucket: str, key: str) -> None:
    """Begin a multipart upload and send one part, as an upload cut mid-way leaves it."""
    client: Any = s3.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    client.upload_part(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )


def test_retention_aborts_stale_unfinished_uploads(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """
    A backup aborts this node's multipart uploads left by a backup older
    than the grace period; a recent one (maybe still running), another
    node's and keys that are not a backup's are left alone.
    """
    config = sqlite_node(tmp_path, s3_server, bucket)
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stale = "clickpass/app1/20200101T000000Z-abcdef/database.sqlite3.gz.enc"
    keep = [
        f"clickpass/app1/{now}-123456/database.sqlite3.gz.enc",
        "clickpass/app2/20200101T000000Z-abcdef/database.sqlite3.gz.enc",
        "clickpass/app1/not-a-backup/file",
    ]
    for key in [stale, *keep]:
        start_upload(s3_server, bucket, key)
    assert uploads(s3_server, bucket) == sorted([stale, *keep])
    result = ok(cli("backup", config))
    assert "aborted 1 unfinished uploads" in result.stdout
    assert uploads(s3_server, bucket) == sorted(keep)


class CutStore(S3Store):
    """The real S3 store whose first file upload is cut mid-way, after one part went up."""

    def put_file(self, key: str, path: Path) -> None:
        upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        self._client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=path.read_bytes()[:1024],
        )
        raise StoreError(f"S3 upload of {key} failed: connection reset")


def test_a_backup_cut_mid_upload_aborts_its_upload(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """An upload that fails after its first part aborts its multipart upload; nothing is left."""
    settings = configmod.load(sqlite_node(tmp_path, s3_server, bucket))
    store = CutStore(
        endpoint=s3_server.endpoint,
        region="us-east-1",
        bucket=bucket,
        access_key_id="test",
        secret_access_key="test",
    )
    with pytest.raises(StoreError, match="connection reset"):
        archive.take_backup(settings, store=store)
    assert uploads(s3_server, bucket) == []


class NoUploadListing(S3Store):
    """The real S3 store with credentials that may not list multipart uploads."""

    def list_uploads(self, prefix: str) -> list[PendingUpload]:
        raise StoreError("S3 listing of unfinished uploads failed: AccessDenied: Access Denied")


def test_a_backup_stands_when_uploads_cannot_be_listed(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """
    Credentials without ListBucketMultipartUploads: the backup is complete
    and reported with a warning, not failed.
    """
    settings = configmod.load(sqlite_node(tmp_path, s3_server, bucket))
    store = NoUploadListing(
        endpoint=s3_server.endpoint,
        region="us-east-1",
        bucket=bucket,
        access_key_id="test",
        secret_access_key="test",
    )
    result = archive.take_backup(settings, store=store)
    assert "AccessDenied" in result.warning and result.aborted == []
    assert any(k.endswith(f"{result.id}/manifest.enc") for k in objects(s3_server, bucket))


def test_missing_bucket_is_one_clear_line(tmp_path: Path, s3_server: S3Server) -> None:
    """Backup and restore on a bucket that does not exist: one line saying to create it first."""
    config = sqlite_node(tmp_path, s3_server, "no-such-bucket")
    for result in (cli("backup", config), cli("restore", config, "list")):
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert "bucket 'no-such-bucket' does not exist" in line and "create it first" in line


@pytest.fixture
def hung_s3() -> Iterator[str]:
    """A loopback TCP server that accepts connections and never answers (a hung S3)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for connection in held:
            connection.close()


def test_hung_s3_fails_the_backup_within_a_bound(tmp_path: Path, hung_s3: str) -> None:
    """
    An S3 endpoint that accepts connections and never answers fails the
    backup within a bound set by [backup] s3_timeout (two attempts; here
    2 s, so well within a minute), before the database is even dumped,
    with one line, instead of holding it (and a `backup now`) for minutes.
    """
    config = tmp_path / "node.toml"
    key = tmp_path / "backup.key"
    key.write_text(os.urandom(32).hex() + "\n")
    (tmp_path / "s3-secret").write_text("test\n")
    config.write_text(
        f'[node]\nname = "app1"\ndata_dir = "{tmp_path / "data"}"\n\n'
        f'[backup]\nenabled = true\nkey_file = "{key}"\nendpoint = "{hung_s3}"\n'
        f'bucket = "b"\naccess_key_id = "test"\n'
        f'secret_access_key_file = "{tmp_path / "s3-secret"}"\ns3_timeout = 2\n'
    )
    migrate_offline(configmod.load(config))
    began = time.monotonic()
    result = cli("backup", config, timeout=90)
    took = time.monotonic() - began
    print(f"hung S3: backup failed after {took:.1f}s")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("backup: FAILED:") and "timeout" in line.lower()
    # At least the two attempts of s3_timeout each; well below the default
    # 20 s ones (an interpreter's start on a loaded machine is the rest).
    assert 4 <= took < 30

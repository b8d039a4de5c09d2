"""
Taking a backup and getting it back: the blocking pipeline behind
scripts/backup, scripts/restore and C{clickpass-ctl backup now}.

A backup is a consistent snapshot of the database (SQLite through its
online backup API; MariaDB through a single-transaction dump that records
its GTID position), the node's configuration file and, unless told not
to, the master secret. Each file is gzip-compressed, then encrypted
(L{clickpass.backup.crypto}), then uploaded; an encrypted manifest with the
size and SHA-256 of every file, before and after encryption, goes last.

Getting it back verifies everything first: every object is downloaded, its
checksum compared, decrypted, decompressed and checked again against the
manifest into a private scratch directory. Only when the whole backup has
proved good is the target touched, so a corrupted or truncated backup is
refused, never half-restored.

Everything here blocks (subprocesses, files, S3): run it in a thread or a
command-line tool, never on the reactor thread. It must never write the
backup key, a password or plaintext data anywhere but the scratch
directory it cleans up, and never overwrite a database that holds data
unless told to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from clickpass import config as configmod
from clickpass._version import __version__
from clickpass.backup import crypto
from clickpass.backup.crypto import BackupCorrupt, BackupUnauthentic
from clickpass.backup.store import (
    KEY_ID,
    MANIFEST,
    S3_CONNECT_TIMEOUT,
    ObjectStore,
    S3Store,
    StoredBackup,
    StoreError,
    delete_backup,
    list_backups,
    new_backup_id,
    stale_uploads,
    to_delete,
)
from clickpass.storage.client_programs import dump_gtid_position, option_file

READ_SIZE = 1 << 20
FORMAT = 1
STATUS_FILE = "backup-status.json"
_BINLOG = re.compile(rb"CHANGE MASTER TO MASTER_LOG_FILE='([^']+)',\s*MASTER_LOG_POS=(\d+)")


class BackupError(Exception):
    """A backup or restore cannot go on; the message is one line for the operator."""


class WrongKey(BackupError):
    """The backup was encrypted with another key than the one configured (its key id says so)."""


class DamagedBackup(BackupCorrupt):
    """A backup object fails its checks although the key is the right one."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a backup, as its manifest records it."""

    role: str
    object: str
    plain_size: int
    plain_sha256: str
    stored_size: int
    stored_sha256: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BackupResult:
    """What a finished backup reports."""

    node: str
    id: str
    manifest: dict[str, Any]
    deleted: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    warning: str = ""
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "backup": f"{self.node}/{self.id}",
            "database": self.manifest["database"]["backend"],
            "gtid": self.manifest["database"].get("gtid_pos", ""),
            "files": {f["role"]: f["plain_size"] for f in self.manifest["files"]},
            "stored_bytes": sum(f["stored_size"] for f in self.manifest["files"]),
            "seconds": round(self.seconds, 3),
            "deleted_by_retention": self.deleted,
            "unfinished_uploads_aborted": self.aborted,
            "warning": self.warning,
        }


# Streams: hash, compress, encrypt.


def _read_chunks(source: BinaryIO | IO[bytes]) -> Iterator[bytes]:
    while True:
        data = source.read(READ_SIZE)
        if not data:
            return
        yield data


def seal(key: bytes, object_name: str, role: str, chunks: Iterator[bytes], out: Path) -> FileEntry:
    """Compress and encrypt C{chunks} into C{out}; return the manifest entry."""
    plain_hash = hashlib.sha256()
    plain_size = 0
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)

    def compressed() -> Iterator[bytes]:
        nonlocal plain_size
        for data in chunks:
            plain_hash.update(data)
            plain_size += len(data)
            packed = compressor.compress(data)
            if packed:
                yield packed
        yield compressor.flush()

    with open(out, "wb") as f:
        crypto.encrypt_stream(key, object_name, compressed(), f)
    stored_hash = hashlib.sha256()
    with open(out, "rb") as readback:
        for data in _read_chunks(readback):
            stored_hash.update(data)
    return FileEntry(
        role=role,
        object=out.name,
        plain_size=plain_size,
        plain_sha256=plain_hash.hexdigest(),
        stored_size=out.stat().st_size,
        stored_sha256=stored_hash.hexdigest(),
    )


def unseal(key: bytes, object_name: str, entry: dict[str, Any], stored: Path, out: Path) -> None:
    """
    Check C{stored} against its manifest entry, decrypt and decompress it
    into C{out}, and check the plaintext too. L{BackupCorrupt} on any
    mismatch (and C{out} is removed).
    """
    size = stored.stat().st_size
    if size != entry["stored_size"]:
        raise BackupCorrupt(
            f"{object_name}: {size} bytes stored, the manifest says {entry['stored_size']} "
            "(truncated or replaced)"
        )
    digest = hashlib.sha256()
    with open(stored, "rb") as f:
        for data in _read_chunks(f):
            digest.update(data)
    if digest.hexdigest() != entry["stored_sha256"]:
        raise BackupCorrupt(f"{object_name}: checksum does not match the manifest (damaged)")
    plain_hash = hashlib.sha256()
    plain_size = 0
    decompressor = zlib.decompressobj(31)
    try:
        with open(stored, "rb") as source, open(out, "wb") as sink:
            for packed in crypto.decrypt_stream(key, object_name, source):
                try:
                    data = decompressor.decompress(packed)
                except zlib.error as e:
                    raise BackupCorrupt(f"{object_name}: does not decompress ({e})") from None
                plain_hash.update(data)
                plain_size += len(data)
                sink.write(data)
            if not decompressor.eof or decompressor.unused_data:
                raise BackupCorrupt(f"{object_name}: compressed stream is incomplete")
            sink.flush()
            os.fsync(sink.fileno())
        if plain_size != entry["plain_size"] or plain_hash.hexdigest() != entry["plain_sha256"]:
            raise BackupCorrupt(f"{object_name}: contents do not match the manifest")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        raise


# What is backed up.


@dataclass(frozen=True)
class MySQLSource:
    """Connection details of the MariaDB server a backup reads from."""

    host: str
    port: int
    socket: str
    user: str
    password: str
    database: str

    def describe(self) -> str:
        where = self.socket or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database}"

    def connect(self) -> Any:
        import pymysql

        options: dict[str, Any] = {
            "user": self.user,
            "password": self.password,
            "charset": "utf8mb4",
            "connect_timeout": 10,
            "autocommit": True,
        }
        if self.socket:
            options["unix_socket"] = self.socket
        else:
            options["host"] = self.host
            options["port"] = self.port
        return pymysql.connect(**options)

    @contextlib.contextmanager
    def defaults_file(self, directory: Path) -> Iterator[Path]:
        """A private option file for the client programs, so no password is on a command line."""
        with option_file(
            directory, self.user, self.password, self.socket, self.host, self.port
        ) as path:
            yield path


def mysql_source(settings: configmod.Settings) -> MySQLSource:
    """The server backups read from: [backup] source_* keys, defaulting to [database]."""
    db, backup = settings.database, settings.backup
    password_file = backup.source_password_file or db.password_file
    password = ""
    if password_file:
        key = (
            "[backup] source_password_file"
            if backup.source_password_file
            else "[database] password_file"
        )
        password = configmod.read_secret_file(settings.data_path(password_file), key)
    socket = backup.source_socket or ("" if backup.source_host else db.unix_socket)
    return MySQLSource(
        host=backup.source_host or db.host,
        port=backup.source_port or db.port,
        socket=socket,
        user=backup.source_user or db.user,
        password=password,
        database=db.name,
    )


def snapshot_sqlite(path: Path, out: Path) -> None:
    """A consistent copy of a live SQLite database, through its online backup API."""
    if not path.exists():
        raise BackupError(f"SQLite database {path} does not exist")
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(out)
        try:
            source.backup(target, pages=1024)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        source.close()


@dataclass
class DumpInfo:
    """What the dump told us about the replication position it was taken at."""

    gtid_pos: str = ""
    binlog_file: str = ""
    binlog_pos: int = 0
    server_read_only: bool = False


def dump_mysql(
    source: MySQLSource, program: str, work: Path, sink: Callable[[Iterator[bytes]], FileEntry]
) -> tuple[FileEntry, DumpInfo]:
    """
    Dump C{source}'s database in one transaction, streaming its output into
    C{sink}. The dump records the GTID position when the server keeps a
    binary log, so a restored copy can join as a replica.
    """
    import pymysql

    info = DumpInfo()
    try:
        connection = source.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT @@global.log_bin, @@global.read_only")
                log_bin, read_only = cursor.fetchone()
        finally:
            connection.close()
    except pymysql.err.MySQLError as e:
        raise BackupError(
            f"cannot connect to MariaDB {source.describe()} to back it up: {e.args[-1]}"
        ) from None
    info.server_read_only = bool(read_only)
    if shutil.which(program) is None:
        raise BackupError(
            f"the dump program {program!r} is not installed (Debian package mariadb-client)"
        )
    with source.defaults_file(work) as options:
        args = [
            program,
            f"--defaults-extra-file={options}",
            "--single-transaction",
            "--quick",
            "--hex-blob",
            "--skip-lock-tables",
            "--no-tablespaces",
            "--default-character-set=utf8mb4",
            "--triggers",
        ]
        if log_bin:
            args += ["--master-data=2", "--gtid"]
        args.append(source.database)
        stderr_path = work / "dump.stderr"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL
            )
            assert process.stdout is not None
            head = bytearray()
            tail = bytearray()

            def output() -> Iterator[bytes]:
                assert process.stdout is not None
                for data in _read_chunks(process.stdout):
                    if len(head) < 256 * 1024:
                        head.extend(data[: 256 * 1024 - len(head)])
                    tail.extend(data)
                    del tail[:-512]
                    yield data

            try:
                entry = sink(output())
            finally:
                process.stdout.close()
                code = process.wait()
        if code != 0:
            message = " ".join(stderr_path.read_text(errors="replace").split())[-400:]
            raise BackupError(f"{program} failed (exit {code}): {message or 'no message'}")
    if b"-- Dump completed" not in bytes(tail):
        raise BackupError(f"{program} output ends early (no completion line); backup refused")
    info.gtid_pos = dump_gtid_position(bytes(head))
    if m := _BINLOG.search(head):
        info.binlog_file = m.group(1).decode("ascii")
        info.binlog_pos = int(m.group(2))
    return entry, info


# The whole backup.


def _store(settings: configmod.Settings) -> S3Store:
    backup = settings.backup
    secret = ""
    if backup.secret_access_key_file:
        secret = configmod.read_secret_file(
            settings.data_path(backup.secret_access_key_file), "[backup] secret_access_key_file"
        )
    return S3Store(
        endpoint=backup.endpoint,
        region=backup.region,
        bucket=backup.bucket,
        access_key_id=backup.access_key_id,
        secret_access_key=secret,
        connect_timeout=min(S3_CONNECT_TIMEOUT, backup.s3_timeout),
        read_timeout=backup.s3_timeout,
    )


def open_store(settings: configmod.Settings) -> ObjectStore:
    """The configured bucket."""
    if not settings.backup.bucket:
        raise BackupError("[backup] bucket is not configured")
    return _store(settings)


def backup_key(settings: configmod.Settings) -> bytes:
    """The backup encryption key, or L{BackupError} naming the problem."""
    if not settings.backup.key_file:
        raise BackupError("[backup] key_file is not configured")
    try:
        return crypto.load_key(settings.data_path(settings.backup.key_file))
    except crypto.BackupKeyError as e:
        raise BackupError(f"[backup] key_file: {e}") from None


@contextlib.contextmanager
def scratch(settings: configmod.Settings, label: str) -> Iterator[Path]:
    """A private scratch directory under [backup] work_dir, removed afterwards."""
    base = settings.data_path(settings.backup.work_dir)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def take_backup(
    settings: configmod.Settings,
    store: ObjectStore | None = None,
    now: Callable[[], float] = time.time,
) -> BackupResult:
    """Take one backup, upload it, apply retention; return what was done."""
    began = time.monotonic()
    key = backup_key(settings)
    store = store if store is not None else open_store(settings)
    # Before the dump: a missing bucket or an unreachable S3 fails in seconds.
    store.check_bucket()
    node = settings.node.name
    created = dt.datetime.fromtimestamp(now(), dt.UTC)
    backup_id = new_backup_id(created, secrets.token_hex(3))
    base = f"{settings.backup.prefix}{node}/{backup_id}/"
    with scratch(settings, "backup") as work:
        entries, database = _seal_files(settings, key, f"{node}/{backup_id}/", work)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "node": node,
            "id": backup_id,
            "created": created.isoformat(),
            "clickpass_version": __version__,
            "config_source": settings.source,
            "database": database,
            "files": [e.to_json() for e in entries],
        }
        _upload(store, key, base, f"{node}/{backup_id}/", entries, manifest, work)
    result = BackupResult(node=node, id=backup_id, manifest=manifest)
    result.deleted, result.aborted, result.warning = apply_retention(settings, store, created)
    result.seconds = time.monotonic() - began
    return result


def _seal_files(
    settings: configmod.Settings, key: bytes, object_base: str, work: Path
) -> tuple[list[FileEntry], dict[str, Any]]:
    """
    Dump or snapshot the database, and seal it with the configuration (and
    the master secret when asked) into C{work}, each sealed under its object
    name below C{object_base}; return the sealed files and what the manifest
    says of the database.
    """
    entries: list[FileEntry] = []
    database: dict[str, Any] = {"backend": settings.database.backend}

    def sealer(role: str, name: str) -> Callable[[Iterator[bytes]], FileEntry]:
        def run(chunks: Iterator[bytes]) -> FileEntry:
            return seal(key, object_base + name, role, chunks, work / name)

        return run

    if settings.database.backend == "sqlite":
        snapshot = work / "snapshot.sqlite3"
        snapshot_sqlite(settings.sqlite_path, snapshot)
        with open(snapshot, "rb") as f:
            entries.append(sealer("database", "database.sqlite3.gz.enc")(_read_chunks(f)))
        snapshot.unlink()
        database["source"] = str(settings.sqlite_path)
    else:
        source = mysql_source(settings)
        entry, info = dump_mysql(
            source,
            settings.backup.dump_program,
            work,
            sealer("database", "database.sql.gz.enc"),
        )
        entries.append(entry)
        database.update(
            source=source.describe(),
            source_read_only=info.server_read_only,
            gtid_pos=info.gtid_pos,
            binlog_file=info.binlog_file,
            binlog_pos=info.binlog_pos,
        )
    config_path = Path(settings.source)
    if config_path.is_file():
        with open(config_path, "rb") as f:
            entries.append(sealer("config", "config.toml.gz.enc")(_read_chunks(f)))
    if settings.backup.include_secret and settings.secret_path.is_file():
        with open(settings.secret_path, "rb") as f:
            entries.append(sealer("secret", "secret.key.gz.enc")(_read_chunks(f)))
    return entries, database


def _upload(
    store: ObjectStore,
    key: bytes,
    base: str,
    object_base: str,
    entries: list[FileEntry],
    manifest: dict[str, Any],
    work: Path,
) -> None:
    """
    Upload the key's id, the sealed files, then the sealed manifest last (a
    backup without its manifest is not one); on any failure, remove what
    was uploaded.
    """
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    try:
        store.put_bytes(base + KEY_ID, (crypto.key_id(key) + "\n").encode("ascii"))
        for entry in entries:
            store.put_file(base + entry.object, work / entry.object)
        store.put_bytes(
            base + MANIFEST,
            crypto.encrypt_bytes(key, object_base + MANIFEST, manifest_bytes),
        )
    except BaseException:
        abort_uploads(store, base)
        raise


def abort_uploads(store: ObjectStore, base: str) -> list[str]:
    """
    Abort every unfinished multipart upload under C{base} (a backup cut
    short), so its parts do not stay billed and invisible. Best effort: the
    upload's own error is the one that matters, so a failure here is only
    left to retention and the bucket's lifecycle rule.
    """
    aborted = []
    try:
        for upload in store.list_uploads(base):
            store.abort_upload(upload)
            aborted.append(upload.key)
    except StoreError:
        pass
    return aborted


def apply_retention(
    settings: configmod.Settings, store: ObjectStore, now: dt.datetime
) -> tuple[list[str], list[str], str]:
    """
    Delete this node's backups that retention no longer keeps and abort its
    unfinished uploads left by backups cut short; return the backups' names,
    the aborted uploads' keys, and a warning when the uploads could not be
    looked at (the backup itself stands: credentials without
    ListBucketMultipartUploads, or a server without it, must not fail it).
    """
    prefix, node = settings.backup.prefix, settings.node.name
    backups = list_backups(store, prefix, node)
    doomed = to_delete(backups, now, settings.backup.keep_daily, settings.backup.keep_weekly)
    for backup in doomed:
        delete_backup(store, prefix, backup)
    aborted: list[str] = []
    warning = ""
    try:
        for upload in stale_uploads(store, prefix, node, now):
            store.abort_upload(upload)
            aborted.append(upload.key)
    except StoreError as e:
        warning = f"unfinished uploads not cleaned up (the bucket's lifecycle rule must): {e}"
    return [b.name for b in doomed], aborted, warning


# Status, for the node's watch and for operators.


def status_path(settings: configmod.Settings) -> Path:
    return settings.data_path(STATUS_FILE)


def read_status(settings: configmod.Settings) -> dict[str, Any]:
    """The last outcomes recorded by L{record_status} (empty when none)."""
    try:
        data = json.loads(status_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_status(
    settings: configmod.Settings, when: float, backup: str = "", error: str = ""
) -> None:
    """Record a success (C{backup}) or a failure (C{error}) in the data directory."""
    status = read_status(settings)
    if error:
        status.update(last_failure=when, last_error=error)
    else:
        status.update(last_success=when, last_backup=backup)
    path = status_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(status, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# Getting a backup back.


@dataclass
class VerifiedBackup:
    """A backup downloaded, checked and decrypted into a scratch directory."""

    manifest: dict[str, Any]
    files: dict[str, Path]


def find_backup(store: ObjectStore, prefix: str, node: str | None, name: str) -> StoredBackup:
    """
    The backup called C{name} (C{NODE/ID}, C{ID}, or C{latest}), complete
    ones only; L{BackupError} when there is none.
    """
    if "/" in name:
        node, name = name.split("/", 1)
    backups = [b for b in list_backups(store, prefix, node) if b.complete]
    if name == "latest":
        if not backups:
            raise BackupError(f"no complete backup found under {prefix}{node or ''}")
        return backups[-1]
    matches = [b for b in backups if b.id == name]
    if not matches:
        raise BackupError(f"no complete backup named {name!r} under {prefix}{node or ''}")
    if len(matches) > 1:
        nodes = ", ".join(b.node for b in matches)
        raise BackupError(f"backup {name!r} exists for several nodes ({nodes}); say NODE/ID")
    return matches[0]


def check_key(store: ObjectStore, key: bytes, prefix: str, backup: StoredBackup) -> bool:
    """
    Compare the key id stored with C{backup} with C{key}'s: L{WrongKey} when
    they differ, True when they match, False when the backup has none (taken
    before key ids were stored: a failure to decrypt is then either cause).
    """
    if KEY_ID not in backup.objects:
        return False
    stored = store.get_bytes(f"{prefix}{backup.name}/{KEY_ID}").decode("ascii", "replace").strip()
    mine = crypto.key_id(key)
    if stored != mine:
        raise WrongKey(
            f"backup {backup.name} was encrypted with the key whose id is {stored}; "
            f"[backup] key_file holds the key whose id is {mine}: use the right key"
        )
    return True


@contextlib.contextmanager
def _diagnosed(key_checked: bool) -> Iterator[None]:
    # With the key known right, an object that fails authentication is damaged.
    try:
        yield
    except BackupUnauthentic as e:
        if not key_checked:
            raise
        raise DamagedBackup(f"{e.where} (damaged: the key is the right one)") from None


def read_manifest(
    store: ObjectStore, key: bytes, prefix: str, backup: StoredBackup
) -> dict[str, Any]:
    """Check the key, then download and authenticate a backup's manifest."""
    name = f"{backup.node}/{backup.id}/{MANIFEST}"
    with _diagnosed(check_key(store, key, prefix, backup)):
        data = crypto.decrypt_bytes(key, name, store.get_bytes(prefix + name))
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BackupCorrupt(f"{name}: not a manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupCorrupt(f"{name}: manifest format {manifest.get('format')!r} is not supported")
    if manifest.get("id") != backup.id or manifest.get("node") != backup.node:
        raise BackupCorrupt(f"{name}: manifest belongs to another backup")
    return manifest


def fetch_and_verify(
    store: ObjectStore, key: bytes, prefix: str, backup: StoredBackup, work: Path
) -> VerifiedBackup:
    """
    Download every object of C{backup} into C{work}, check and decrypt each
    one against the manifest. Raise L{BackupCorrupt} at the first problem.
    """
    manifest = read_manifest(store, key, prefix, backup)
    # read_manifest refused a wrong key; a later failure is damage.
    key_checked = KEY_ID in backup.objects
    files: dict[str, Path] = {}
    for entry in manifest["files"]:
        object_name = f"{backup.node}/{backup.id}/{entry['object']}"
        if entry["object"] not in backup.objects:
            raise BackupCorrupt(f"{object_name}: missing from the bucket")
        stored = work / (entry["object"])
        store.get_file(prefix + object_name, stored)
        plain = work / f"{entry['role']}.plain"
        with _diagnosed(key_checked):
            unseal(key, object_name, entry, stored, plain)
        stored.unlink()
        files[entry["role"]] = plain
    if "database" not in files:
        raise BackupCorrupt(f"{backup.name}: the manifest lists no database file")
    return VerifiedBackup(manifest=manifest, files=files)


def check_new_file(path: Path, what: str) -> None:
    """L{BackupError} when C{path} exists: a restore never overwrites the C{what}."""
    if path.exists() or path.is_symlink():
        raise BackupError(f"{path} already exists; will not overwrite the {what}")


def check_sqlite_target(target: Path, force: bool = False) -> None:
    """L{BackupError} when C{target} exists (unless C{force}) or is no file."""
    if target.is_dir():
        raise BackupError(f"{target} is a directory; --sqlite-path names the database file")
    if target.exists() and not force:
        raise BackupError(f"{target} already exists; restore into a new path (or use --force)")


def make_private_dirs(directory: Path) -> None:
    """
    Create C{directory} and any missing parents 0700: a restored data
    directory holds password hashes and must not be readable by other users.
    Directories that already exist keep their modes.
    """
    missing = []
    for parent in (directory, *directory.parents):
        if parent.exists():
            break
        missing.append(parent)
    for path in reversed(missing):
        path.mkdir(mode=0o700)
        # mkdir's mode passes through the umask; say it exactly.
        path.chmod(0o700)


def copy_private(source: Path, target: Path) -> None:
    """Copy C{source} to the new file C{target}, created 0600 (never wider, whatever the umask)."""
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as sink, open(source, "rb") as f:
        os.fchmod(sink.fileno(), 0o600)
        shutil.copyfileobj(f, sink, READ_SIZE)
        sink.flush()
        os.fsync(sink.fileno())


def restore_sqlite(verified: VerifiedBackup, target: Path, force: bool = False) -> int:
    """
    Put the verified SQLite database at C{target} (atomically, 0600, in a
    directory created 0700 when missing). Refuse an existing target unless
    C{force}. Return the number of tables restored.
    """
    if verified.manifest["database"]["backend"] != "sqlite":
        raise BackupError("this backup holds a MariaDB dump, not a SQLite database")
    check_sqlite_target(target, force)
    make_private_dirs(target.parent)
    staged = target.with_name(f".{target.name}.restoring")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    copy_private(verified.files["database"], staged)
    connection = sqlite3.connect(staged)
    try:
        check = connection.execute("PRAGMA integrity_check").fetchone()
        tables = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        ).fetchone()[0]
    finally:
        connection.close()
    if not check or check[0] != "ok":
        staged.unlink()
        raise BackupCorrupt(f"the restored database fails SQLite's integrity check: {check}")
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(target) + suffix).unlink()
    os.replace(staged, target)
    return int(tables)


@dataclass(frozen=True)
class Primary:
    """The primary a restored server should replicate from."""

    host: str
    port: int
    user: str
    password: str


def restore_mysql(
    verified: VerifiedBackup,
    target: MySQLSource,
    client_program: str = "mariadb",
    force: bool = False,
    primary: Primary | None = None,
    scratch_dir: Path | None = None,
) -> int:
    """
    Load the verified dump into C{target}'s database (created if missing),
    which must hold no tables unless C{force}. With C{primary}, make the
    server a replica of it from the backup's GTID position. Return the
    number of tables restored.
    """
    manifest = verified.manifest
    if manifest["database"]["backend"] != "mysql":
        raise BackupError("this backup holds a SQLite database, not a MariaDB dump")
    gtid = manifest["database"].get("gtid_pos", "")
    if primary is not None and not gtid:
        raise BackupError(
            "this backup has no GTID position (its server kept no binary log); "
            "it cannot seed a replica"
        )
    if shutil.which(client_program) is None:
        raise BackupError(f"the client program {client_program!r} is not installed")
    _create_empty_database(target, force)
    work = scratch_dir or verified.files["database"].parent
    _load_dump(target, verified.files["database"], client_program, work)
    return _count_and_follow(target, primary, gtid)


def _create_empty_database(target: MySQLSource, force: bool) -> None:
    """Create C{target}'s database unless it exists and holds tables (unless C{force})."""
    import pymysql

    name = target.database
    try:
        connection = target.connect()
    except pymysql.err.MySQLError as e:
        raise BackupError(f"cannot connect to MariaDB {target.describe()}: {e.args[-1]}") from None
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (name,)
            )
            (count,) = cursor.fetchone()
            if count and not force:
                raise BackupError(
                    f"database {name!r} on {target.describe()} already holds {count} tables; "
                    "restore into an empty server (or use --force)"
                )
            quoted = name.replace("`", "``")
            cursor.execute(
                f"CREATE DATABASE IF NOT EXISTS `{quoted}` "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
    finally:
        connection.close()


def _load_dump(target: MySQLSource, dump_path: Path, client_program: str, work: Path) -> None:
    """Feed the dump to the client program, connected to C{target}'s database."""
    with target.defaults_file(work) as options, open(dump_path, "rb") as dump:
        result = subprocess.run(
            [client_program, f"--defaults-extra-file={options}", "--binary-mode", target.database],
            stdin=dump,
            capture_output=True,
            check=False,
        )
    if result.returncode != 0:
        message = " ".join(result.stderr.decode(errors="replace").split())[-400:]
        raise BackupError(f"{client_program} failed loading the dump: {message}")


def _count_and_follow(target: MySQLSource, primary: Primary | None, gtid: str) -> int:
    """
    Count the restored tables; with C{primary}, make the server its replica
    from the backup's GTID position.
    """
    connection = target.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                (target.database,),
            )
            (tables,) = cursor.fetchone()
            if primary is not None:
                cursor.execute("STOP SLAVE")
                cursor.execute("RESET SLAVE ALL")
                cursor.execute("SET GLOBAL gtid_slave_pos = %s", (gtid,))
                cursor.execute(
                    "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
                    "MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos",
                    (primary.host, primary.port, primary.user, primary.password),
                )
                cursor.execute("START SLAVE")
    finally:
        connection.close()
    return int(tables)


__all__ = [
    "BackupError",
    "BackupResult",
    "DamagedBackup",
    "FileEntry",
    "MySQLSource",
    "Primary",
    "VerifiedBackup",
    "WrongKey",
    "abort_uploads",
    "apply_retention",
    "backup_key",
    "check_key",
    "check_new_file",
    "check_sqlite_target",
    "copy_private",
    "fetch_and_verify",
    "find_backup",
    "make_private_dirs",
    "mysql_source",
    "open_store",
    "read_manifest",
    "read_status",
    "record_status",
    "restore_mysql",
    "restore_sqlite",
    "scratch",
    "seal",
    "take_backup",
    "unseal",
]

"""
The command lines behind scripts/backup and scripts/restore.

C{backup}: take one backup now, as cron would (one line on success, one
line on stderr and exit status 1 on failure; the outcome is recorded in
the data directory, where the node's backup watch sees it and alerts).

C{restore}: list the backups in the bucket, verify one (download, check,
decrypt, without touching anything), or restore one into a fresh SQLite
file or an empty MariaDB server (optionally made a replica of the current
primary from the backup's GTID position).

Errors are one line, never a traceback. This module must never restore a
backup it has not verified completely first, and never write any target
before it has checked every target it was given (a refused restore leaves
nothing behind to refuse the next attempt).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clickpass import config as configmod
from clickpass.backup import archive
from clickpass.backup.crypto import BackupCorrupt
from clickpass.backup.store import StoreError, list_backups

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 3


def _settings(path: str | None) -> configmod.Settings:
    settings = configmod.load(path)
    configmod.check_files(settings)
    return settings


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    sys.stderr.write(message.rstrip() + "\n")
    return code


def backup_main(argv: Sequence[str] | None = None) -> int:
    """scripts/backup: take one backup of this node now."""
    parser = argparse.ArgumentParser(
        prog="backup", description="Take one encrypted backup of this node and upload it."
    )
    parser.add_argument("--config", "-c", help="the node's configuration file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        settings = _settings(args.config)
    except configmod.ConfigError as e:
        return _fail(f"backup: configuration error: {e}")
    try:
        result = archive.take_backup(settings)
    except Exception as e:
        # Whatever went wrong, cron gets one line and the watch sees the failure.
        message = _one_line(e)
        _record(settings, error=message)
        return _fail(f"backup: FAILED: {message}")
    _record(settings, backup=f"{result.node}/{result.id}")
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"backup: {summary['backup']} uploaded ({summary['stored_bytes']} bytes stored, "
            f"{summary['seconds']}s"
            + (f", GTID {summary['gtid']}" if summary["gtid"] else "")
            + (f"; retention removed {len(result.deleted)}" if result.deleted else "")
            + (f"; aborted {len(result.aborted)} unfinished uploads" if result.aborted else "")
            + (f"; WARNING: {result.warning}" if result.warning else "")
            + ")"
        )
    return EXIT_OK


def _record(settings: configmod.Settings, backup: str = "", error: str = "") -> None:
    try:
        archive.record_status(settings, time.time(), backup=backup, error=error)
    except OSError as e:
        sys.stderr.write(f"backup: cannot record the outcome: {e}\n")


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    return " ".join((str(e) or type(e).__name__).split())


def restore_main(argv: Sequence[str] | None = None) -> int:
    """scripts/restore: list, verify and restore backups."""
    parser = argparse.ArgumentParser(
        prog="restore", description="List, verify and restore Clickpass backups."
    )
    parser.add_argument(
        "--config", "-c", help="a configuration whose [backup] section names the bucket and key"
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list the backups in the bucket")
    listing.add_argument("--node", help="only this node's backups (default: every node)")
    verify = sub.add_parser("verify", help="download, check and decrypt a backup; change nothing")
    verify.add_argument("name", help="NODE/ID, ID, or latest")
    verify.add_argument("--node", help="the node whose backups 'latest' or ID refer to")
    restore = sub.add_parser("restore", help="verify a backup, then restore it")
    restore.add_argument("name", help="NODE/ID, ID, or latest")
    restore.add_argument("--node", help="the node whose backups 'latest' or ID refer to")
    restore.add_argument("--force", action="store_true", help="overwrite a target holding data")
    restore.add_argument("--sqlite-path", help="SQLite backups: the file to create")
    restore.add_argument("--host", default="127.0.0.1", help="MariaDB backups: target server")
    restore.add_argument("--port", type=int, default=3306, help="target server port")
    restore.add_argument("--socket", default="", help="target server unix socket")
    restore.add_argument("--user", default="root", help="target server user")
    restore.add_argument("--password-file", help="file holding the target user's password")
    restore.add_argument("--database", help="target database (default: [database] name)")
    restore.add_argument(
        "--client-program", default="mariadb", help="MariaDB client that loads the dump"
    )
    restore.add_argument(
        "--replicate-from",
        metavar="HOST:PORT",
        help="make the restored server a replica of this primary from the backup's GTID",
    )
    restore.add_argument("--replication-user", default="repl", help="replication user")
    restore.add_argument(
        "--replication-password-file", help="file holding the replication user's password"
    )
    restore.add_argument("--config-to", help="also write the backed-up configuration here")
    restore.add_argument("--secret-to", help="also write the backed-up master secret here")
    args = parser.parse_args(argv)
    # Whatever a restore writes (database, directories, configuration,
    # master secret) is private to the user running it.
    os.umask(0o077)
    try:
        settings = _settings(args.config)
        if args.action == "restore":
            _check_targets_before_download(args)
        key = archive.backup_key(settings)
        store = archive.open_store(settings)
        prefix = settings.backup.prefix
        if args.action == "list":
            return _list(store, prefix, args)
        backup = archive.find_backup(store, prefix, args.node, args.name)
        with archive.scratch(settings, "restore") as work:
            verified = archive.fetch_and_verify(store, key, prefix, backup, work)
            if args.action == "verify":
                return _print(args, _described(backup, verified, "verified"))
            return _restore(settings, args, backup, verified, work)
    except archive.WrongKey as e:
        return _fail(f"restore: REFUSED, wrong key: {_one_line(e)}", EXIT_REFUSED)
    except archive.DamagedBackup as e:
        return _fail(f"restore: REFUSED, the backup is damaged: {_one_line(e)}", EXIT_REFUSED)
    except BackupCorrupt as e:
        # A backup with no stored key id: a failed authentication is either cause.
        return _fail(
            f"restore: REFUSED, the backup is damaged or was encrypted with another key: "
            f"{_one_line(e)}",
            EXIT_REFUSED,
        )
    except (archive.BackupError, StoreError, configmod.ConfigError, OSError) as e:
        return _fail(f"restore: {_one_line(e)}")
    except Exception as e:
        return _fail(f"restore: unexpected {type(e).__name__}: {_one_line(e)}")


def _print(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(", ".join(f"{k}: {v}" for k, v in result.items()))
    return EXIT_OK


def _described(backup: Any, verified: archive.VerifiedBackup, outcome: str) -> dict[str, Any]:
    database = verified.manifest["database"]
    return {
        "backup": backup.name,
        "outcome": outcome,
        "created": verified.manifest["created"],
        "database": database["backend"],
        "gtid": database.get("gtid_pos", ""),
        "files": ", ".join(sorted(verified.files)),
    }


def _list(store: Any, prefix: str, args: argparse.Namespace) -> int:
    backups = list_backups(store, prefix, args.node)
    rows = [
        {"backup": b.name, "complete": b.complete, "bytes": b.size, "objects": len(b.objects)}
        for b in backups
    ]
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    if not rows:
        print(f"no backups under {prefix}{args.node or ''}")
        return EXIT_OK
    for row in rows:
        state = "complete" if row["complete"] else "INCOMPLETE"
        print(f"{row['backup']}  {state:<10}  {row['bytes']:>12} bytes")
    return EXIT_OK


def _check_targets_before_download(args: argparse.Namespace) -> None:
    # Every file target, before anything is downloaded or written.
    if args.sqlite_path:
        archive.check_sqlite_target(Path(args.sqlite_path), force=args.force)
    if args.config_to:
        archive.check_new_file(Path(args.config_to), "configuration")
    if args.secret_to:
        archive.check_new_file(Path(args.secret_to), "master secret")


def _check_targets_against_backup(
    args: argparse.Namespace, verified: archive.VerifiedBackup
) -> None:
    # What the verified backup holds decides what else can be asked of it.
    if args.config_to and "config" not in verified.files:
        raise archive.BackupError("--config-to: this backup holds no configuration file")
    if args.secret_to and "secret" not in verified.files:
        raise archive.BackupError(
            "--secret-to: this backup holds no master secret (taken with include_secret = false)"
        )
    _check_targets_before_download(args)


def _write_new(path: str, source: Path) -> None:
    target = Path(path)
    archive.make_private_dirs(target.parent)
    archive.copy_private(source, target)


def _restore(
    settings: configmod.Settings,
    args: argparse.Namespace,
    backup: Any,
    verified: archive.VerifiedBackup,
    work: Path,
) -> int:
    _check_targets_against_backup(args, verified)
    backend = verified.manifest["database"]["backend"]
    if backend == "sqlite":
        if not args.sqlite_path:
            raise archive.BackupError("this is a SQLite backup: say where with --sqlite-path")
        tables = archive.restore_sqlite(verified, Path(args.sqlite_path), force=args.force)
    else:
        password = ""
        if args.password_file:
            password = configmod.read_secret_file(Path(args.password_file), "--password-file")
        target = archive.MySQLSource(
            host=args.host,
            port=args.port,
            socket=args.socket,
            user=args.user,
            password=password,
            database=args.database or settings.database.name,
        )
        primary = None
        if args.replicate_from:
            host, _, port = args.replicate_from.rpartition(":")
            if not host or not port.isdigit():
                raise archive.BackupError("--replicate-from must be HOST:PORT")
            replication_password = ""
            if args.replication_password_file:
                replication_password = configmod.read_secret_file(
                    Path(args.replication_password_file), "--replication-password-file"
                )
            primary = archive.Primary(host, int(port), args.replication_user, replication_password)
        tables = archive.restore_mysql(
            verified,
            target,
            client_program=args.client_program,
            force=args.force,
            primary=primary,
            scratch_dir=work,
        )
    if args.config_to:
        _write_new(args.config_to, verified.files["config"])
    if args.secret_to:
        _write_new(args.secret_to, verified.files["secret"])
    result = _described(backup, verified, "restored")
    result["tables"] = tables
    return _print(args, result)


def main() -> None:
    """Entry point: C{python -m clickpass.backup.cli backup|restore ...}."""
    if len(sys.argv) < 2 or sys.argv[1] not in ("backup", "restore"):
        sys.stderr.write("usage: python -m clickpass.backup.cli backup|restore [ARGS]\n")
        raise SystemExit(2)
    tool = backup_main if sys.argv[1] == "backup" else restore_main
    raise SystemExit(tool(sys.argv[2:]))


if __name__ == "__main__":
    main()

"""
Where backups live: an S3-compatible bucket, and the retention rule that
decides which backups to keep.

Layout in the bucket: C{<prefix><node>/<backup id>/<object>}; a backup is
complete once its C{manifest.enc} is there (it is uploaded last), so an
upload cut short leaves a backup that listing marks incomplete and that
retention removes.

The S3 client is boto3 (blocking): backups are blocking work anyway (a dump
program, compression, encryption of files on disk), so the whole pipeline
runs in a thread, never on the reactor. boto3 brings a proven SigV4
signer, multipart uploads for big files, retries, and works with any
S3-compatible service (AWS, MinIO, Ceph RGW, moto in the tests).

This module must never decide about data it cannot see: retention only
ever deletes backups of the node it was asked about, and never the newest
complete one.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

MANIFEST = "manifest.enc"
BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
INCOMPLETE_GRACE = dt.timedelta(hours=12)


class StoreError(Exception):
    """The object store failed; the message is one line for the operator."""


@dataclass(frozen=True)
class StoredBackup:
    """One backup as the bucket lists it."""

    node: str
    id: str
    complete: bool
    size: int
    objects: tuple[str, ...]

    @property
    def created(self) -> dt.datetime:
        return backup_time(self.id)

    @property
    def name(self) -> str:
        return f"{self.node}/{self.id}"


def backup_time(backup_id: str) -> dt.datetime:
    """The UTC time encoded in a backup id."""
    return dt.datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)


def new_backup_id(now: dt.datetime, suffix: str) -> str:
    """A sortable backup id: UTC time and a random suffix (6 hex digits)."""
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + suffix


def to_delete(
    backups: Sequence[StoredBackup], now: dt.datetime, keep_daily: int, keep_weekly: int
) -> list[StoredBackup]:
    """
    The backups retention removes: keep the newest complete backup of each
    of the C{keep_daily} most recent days that have one, and of each of the
    C{keep_weekly} most recent ISO weeks that have one; always keep the
    newest complete backup; drop incomplete backups once they are older
    than a grace period (an upload might still be running).
    """
    complete = sorted((b for b in backups if b.complete), key=lambda b: b.id, reverse=True)
    keep: set[str] = set()
    if complete:
        keep.add(complete[0].id)
    days: list[dt.date] = []
    weeks: list[tuple[int, int]] = []
    for backup in complete:
        day = backup.created.date()
        if day not in days:
            days.append(day)
            if len(days) <= keep_daily:
                keep.add(backup.id)
        iso = day.isocalendar()
        week = (iso.year, iso.week)
        if week not in weeks:
            weeks.append(week)
            if len(weeks) <= keep_weekly:
                keep.add(backup.id)
    doomed = [b for b in complete if b.id not in keep]
    doomed += [b for b in backups if not b.complete and now - b.created > INCOMPLETE_GRACE]
    return sorted(doomed, key=lambda b: b.id)


class ObjectStore(Protocol):
    """What backups need of a bucket."""

    def put_file(self, key: str, path: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_file(self, key: str, path: Path) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def list_keys(self, prefix: str) -> list[tuple[str, int]]: ...

    def delete_keys(self, keys: Iterable[str]) -> None: ...


class S3Store:
    """L{ObjectStore} on an S3-compatible bucket, through boto3 (blocking)."""

    def __init__(
        self,
        *,
        endpoint: str,
        region: str,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        timeout: float = 60.0,
    ) -> None:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        self.bucket = bucket
        self.endpoint = endpoint
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": 4, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error  # type: ignore[import-untyped]
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            error = e.response.get("Error", {})
            code = error.get("Code", "?")
            message = error.get("Message", "") or code
            raise StoreError(
                f"S3 {what} in bucket {self.bucket!r} at {self.endpoint or 'AWS'} failed: "
                f"{code}: {message}"
            ) from None
        except (BotoCoreError, Boto3Error) as e:
            raise StoreError(
                f"S3 {what} in bucket {self.bucket!r} at {self.endpoint or 'AWS'} failed: {e}"
            ) from None

    def put_file(self, key: str, path: Path) -> None:
        self._call(f"upload of {key}", self._client.upload_file, str(path), self.bucket, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            f"upload of {key}", self._client.put_object, Bucket=self.bucket, Key=key, Body=data
        )

    def get_file(self, key: str, path: Path) -> None:
        self._call(f"download of {key}", self._client.download_file, self.bucket, key, str(path))

    def get_bytes(self, key: str) -> bytes:
        answer = self._call(
            f"download of {key}", self._client.get_object, Bucket=self.bucket, Key=key
        )
        data: bytes = answer["Body"].read()
        return data

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        paginator = self._client.get_paginator("list_objects_v2")
        found: list[tuple[str, int]] = []

        def collect() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found.append((item["Key"], int(item["Size"])))

        self._call(f"listing of {prefix}", collect)
        return found

    def delete_keys(self, keys: Iterable[str]) -> None:
        batch = [{"Key": k} for k in keys]
        for start in range(0, len(batch), 1000):
            self._call(
                "delete",
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch[start : start + 1000], "Quiet": True},
            )


def list_backups(store: ObjectStore, prefix: str, node: str | None = None) -> list[StoredBackup]:
    """Every backup under C{prefix} (of one node, or of all), oldest first."""
    search = prefix + (f"{node}/" if node else "")
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for key, size in store.list_keys(search):
        rest = key[len(prefix) :].split("/")
        if len(rest) != 3 or not BACKUP_ID.match(rest[1]):
            continue
        groups.setdefault((rest[0], rest[1]), []).append((rest[2], size))
    backups = [
        StoredBackup(
            node=node_name,
            id=backup_id,
            complete=any(name == MANIFEST for name, _ in objects),
            size=sum(size for _, size in objects),
            objects=tuple(sorted(name for name, _ in objects)),
        )
        for (node_name, backup_id), objects in groups.items()
    ]
    return sorted(backups, key=lambda b: (b.id, b.node))


def delete_backup(store: ObjectStore, prefix: str, backup: StoredBackup) -> None:
    """Remove every object of C{backup}, the manifest first (so it is never half-listed)."""
    base = f"{prefix}{backup.node}/{backup.id}/"
    names = sorted(backup.objects, key=lambda n: n != MANIFEST)
    if MANIFEST in names:
        store.delete_keys([base + MANIFEST])
    store.delete_keys([base + n for n in names if n != MANIFEST])


__all__ = [
    "MANIFEST",
    "ObjectStore",
    "S3Store",
    "StoreError",
    "StoredBackup",
    "backup_time",
    "delete_backup",
    "list_backups",
    "new_backup_id",
    "to_delete",
]

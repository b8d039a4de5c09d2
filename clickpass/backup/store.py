"""
Where backups live: an S3-compatible bucket, and the retention rule that
decides which backups to keep.

Layout in the bucket: C{<prefix><node>/<backup id>/<object>}; a backup is
complete once its C{manifest.enc} is there (it is uploaded last), so an
upload cut short leaves a backup that listing marks incomplete and that
retention removes. A big file goes up as a multipart upload; one cut short
leaves parts that are no object (listing never shows them, the bucket bills
them): the backup aborts its own on failure, and retention aborts any
left under this node's backups once they are past the grace period.

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
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    # Types only (boto3-stubs, a dev dependency): boto3 itself ships none.
    from mypy_boto3_s3 import S3Client

MANIFEST = "manifest.enc"
KEY_ID = "key-id"
BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
INCOMPLETE_GRACE = dt.timedelta(hours=12)
# Every complete backup younger than this is kept whatever the daily rule
# says: a backup taken (or restored from) this morning must survive the
# "backup now" an operator runs this afternoon.
KEEP_RECENT = dt.timedelta(hours=24)
# Bounds on each S3 request: a hung endpoint (answers TCP, never HTTP) fails
# a request after about CONNECT + READ x ATTEMPTS seconds (~45 s), not after
# the minutes boto3's defaults allow; a healthy S3 answers well within them.
S3_CONNECT_TIMEOUT = 10.0
S3_READ_TIMEOUT = 20.0
S3_ATTEMPTS = 2


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
    newest complete backup and every one younger than L{KEEP_RECENT};
    drop incomplete backups once they are older than a grace period (an
    upload might still be running).
    """
    complete = sorted((b for b in backups if b.complete), key=lambda b: b.id, reverse=True)
    keep: set[str] = set()
    if complete:
        keep.add(complete[0].id)
    keep.update(b.id for b in complete if now - b.created < KEEP_RECENT)
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


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload begun and neither completed nor aborted."""

    key: str
    upload_id: str


class ObjectStore(Protocol):
    """What backups need of a bucket."""

    def check_bucket(self) -> None:
        """L{StoreError} saying so when the bucket does not exist or cannot be reached."""

    def put_file(self, key: str, path: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_file(self, key: str, path: Path) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def list_keys(self, prefix: str) -> list[tuple[str, int]]: ...

    def delete_keys(self, keys: Iterable[str]) -> None: ...

    def list_uploads(self, prefix: str) -> list[PendingUpload]: ...

    def abort_upload(self, upload: PendingUpload) -> None: ...


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
        connect_timeout: float = S3_CONNECT_TIMEOUT,
        read_timeout: float = S3_READ_TIMEOUT,
        attempts: int = S3_ATTEMPTS,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint = endpoint
        self._client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            error = e.response.get("Error", {})
            code = error.get("Code", "?")
            message = error.get("Message", "") or code
            # HEAD answers a missing bucket with a bare 404 (no body, no code).
            if code == "NoSuchBucket" or (code == "404" and what == "check"):
                raise StoreError(self._missing_bucket()) from None
            raise StoreError(
                f"S3 {what} in bucket {self.bucket!r} at {self.endpoint or 'AWS'} failed: "
                f"{code}: {message}"
            ) from None
        except (BotoCoreError, Boto3Error) as e:
            raise StoreError(
                f"S3 {what} in bucket {self.bucket!r} at {self.endpoint or 'AWS'} failed: {e}"
            ) from None

    def _missing_bucket(self) -> str:
        return (
            f"S3 bucket {self.bucket!r} does not exist at {self.endpoint or 'AWS'}; "
            "create it first (docs/backup.md)"
        )

    def check_bucket(self) -> None:
        self._call("check", self._client.head_bucket, Bucket=self.bucket)

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

    def list_uploads(self, prefix: str) -> list[PendingUpload]:
        paginator = self._client.get_paginator("list_multipart_uploads")
        found: list[PendingUpload] = []

        def collect() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Uploads", []):
                    # Filtered here too: not every S3-compatible server honours Prefix.
                    if item["Key"].startswith(prefix):
                        found.append(PendingUpload(item["Key"], item["UploadId"]))

        self._call(f"listing of unfinished uploads under {prefix}", collect)
        return found

    def abort_upload(self, upload: PendingUpload) -> None:
        self._call(
            f"abort of the unfinished upload of {upload.key}",
            self._client.abort_multipart_upload,
            Bucket=self.bucket,
            Key=upload.key,
            UploadId=upload.upload_id,
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


def stale_uploads(
    store: ObjectStore, prefix: str, node: str, now: dt.datetime
) -> list[PendingUpload]:
    """
    This node's unfinished multipart uploads that belong to a backup older
    than the grace period (no upload of it can still be running). Uploads
    under keys that are not a backup's are never touched.
    """
    stale = []
    for upload in store.list_uploads(f"{prefix}{node}/"):
        rest = upload.key[len(prefix) :].split("/")
        if len(rest) != 3 or not BACKUP_ID.match(rest[1]):
            continue
        if now - backup_time(rest[1]) > INCOMPLETE_GRACE:
            stale.append(upload)
    return stale


def delete_backup(store: ObjectStore, prefix: str, backup: StoredBackup) -> None:
    """Remove every object of C{backup}, the manifest first (so it is never half-listed)."""
    base = f"{prefix}{backup.node}/{backup.id}/"
    names = sorted(backup.objects, key=lambda n: n != MANIFEST)
    if MANIFEST in names:
        store.delete_keys([base + MANIFEST])
    store.delete_keys([base + n for n in names if n != MANIFEST])


__all__ = [
    "KEY_ID",
    "MANIFEST",
    "ObjectStore",
    "PendingUpload",
    "S3Store",
    "StoreError",
    "StoredBackup",
    "backup_time",
    "delete_backup",
    "list_backups",
    "new_backup_id",
    "stale_uploads",
    "to_delete",
]

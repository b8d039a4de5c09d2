"""
Static files (the application's CSS, JS and images) served by the front
from memory, with caching headers, so that they never cost a worker.

Files are read once when the front starts. This module must never read a
path built from a request: a request only selects a name from the table
built at start-up.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

STATIC_PREFIX = b"/static/"


class StaticFiles:
    """A flat directory of files, answered by name under C{/static/}."""

    def __init__(self, directory: Path, max_age: int) -> None:
        self._files: dict[bytes, tuple[bytes, bytes]] = {}
        self._max_age = max_age
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    self._add(path)

    def _add(self, path: Path) -> None:
        body = path.read_bytes()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode("ascii") + b'"'
        head = (
            b"Content-Type: "
            + content_type.encode("ascii")
            + b"\r\nCache-Control: public, max-age="
            + str(self._max_age).encode("ascii")
            + b"\r\nETag: "
            + etag
            + b"\r\nX-Content-Type-Options: nosniff\r\n"
        )
        self._files[path.name.encode("utf-8")] = (head, body)

    def __len__(self) -> int:
        return len(self._files)

    def lookup(self, path: bytes) -> tuple[bytes, bytes, bytes] | None:
        """
        For a request path under C{/static/}, the (etag, headers, body) of
        the file it names, or None.
        """
        name = path[len(STATIC_PREFIX) :].split(b"?", 1)[0]
        found = self._files.get(name)
        if found is None:
            return None
        head, body = found
        etag = head.split(b"ETag: ", 1)[1].split(b"\r\n", 1)[0]
        return etag, head, body

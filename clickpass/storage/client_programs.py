"""
MariaDB's client programs (C{mariadb}, C{mariadb-dump}) driven from Python,
for backups and for re-cloning a replica: credentials in a private option
file (never on a command line), and the GTID position a dump names.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

# What C{mariadb-dump --gtid --master-data=2} writes near its top.
_GTID_IN_DUMP = re.compile(rb"SET GLOBAL gtid_slave_pos\s*=\s*'([0-9,\-\s]*)'")


def _option_value(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@contextlib.contextmanager
def option_file(
    directory: Path,
    user: str,
    password: str,
    socket: str = "",
    host: str = "127.0.0.1",
    port: int = 3306,
) -> Iterator[Path]:
    """
    A private (0600) C{[client]} option file in C{directory} naming the
    server (its socket, else host and port over TCP) and the credentials,
    for C{--defaults-extra-file}; removed afterwards.
    """
    path = directory / f"client-{secrets.token_hex(4)}.cnf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    lines = ["[client]", f"user={_option_value(user)}", f"password={_option_value(password)}"]
    if socket:
        lines.append(f"socket={_option_value(socket)}")
    else:
        lines += [f"host={_option_value(host)}", f"port={port}", "protocol=TCP"]
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def dump_gtid_position(head: bytes) -> str:
    """The GTID position a dump's first bytes name (C{""} when they name none)."""
    found = _GTID_IN_DUMP.search(head)
    return "".join(found.group(1).decode("ascii").split()) if found else ""

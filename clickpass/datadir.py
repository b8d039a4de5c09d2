"""
The node's data directory kept private: it holds the SQLite database (with
every session hash, password hash and OpenID association secret), the
master secret and the control socket, so no other user on the host may read
it.

At start, before anything is created, the process's umask becomes 077 (the
workers inherit it), so every file the node makes is private whatever the
umask it was started with; files that must be private whatever happens
(the master secret, the SQLite database) are also created with explicit
modes. What an earlier start or an older release left open to others is
tightened: the directory to 0700, the master secret and the SQLite files to
0600, one warning line each. A directory or file that is open to others and
belongs to another user is not this node's to change: the node refuses to
start with one line saying what to do.

This module must never delete, move or read the files it protects.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from twisted.logger import Logger

from clickpass.config import ConfigError, Settings

PRIVATE_UMASK = 0o077

log = Logger()


def sqlite_files(database: Path) -> Iterator[Path]:
    """The SQLite database file and the companions SQLite keeps beside it."""
    yield database
    for suffix in ("-wal", "-shm", "-journal"):
        yield database.with_name(database.name + suffix)


def create_private_file(path: Path) -> None:
    """Create C{path} (and its directory) readable by its owner only, unless it exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def make_private(path: Path, key: str) -> bool:
    """
    Take every permission for group and others off C{path}, if it exists;
    return whether its mode changed. Raise L{ConfigError} naming C{key} when
    it is open to others but belongs to another user.
    """
    try:
        status = path.stat()
    except FileNotFoundError:
        return False
    mode = stat.S_IMODE(status.st_mode)
    if not mode & 0o077:
        return False
    if status.st_uid != os.geteuid():
        raise ConfigError(
            f"{key}: {path} is open to other users (mode {mode:04o}) and belongs to another "
            f"user; make it private (chmod go= {path}) or use a directory of this user's own"
        )
    os.chmod(path, mode & 0o700)
    log.warn(
        "made {path} private: mode {old} is now {new} (it was open to other users)",
        path=str(path),
        old=f"{mode:04o}",
        new=f"{mode & 0o700:04o}",
    )
    return True


def secure_data_dir(settings: Settings) -> None:
    """
    Set the umask to 077, create the data directory (0700) or make the one
    that exists private, and make private the master secret and SQLite
    files an earlier start left open. Call it before anything is created.
    """
    os.umask(PRIVATE_UMASK)
    data = Path(settings.node.data_dir)
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(data, "[node] data_dir")
    if not settings.secrets.secret_file:
        # Only the secret the node made itself: a configured one is the
        # operator's file, with the modes the operator gave it.
        make_private(settings.secret_path, "[secrets] secret_file")
    if settings.database.backend == "sqlite":
        for path in sqlite_files(settings.sqlite_path):
            make_private(path, "[database] path")

"""
The data directory as another user on the host meets it: a real node
started with a permissive umask on a directory that already existed open to
others leaves nothing in it that anyone but its own user can read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import NodeProcess, free_port, run_twistd, write_config

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    """Child processes started inside inherit C{value} as their umask."""
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def open_to_others(directory: Path) -> list[str]:
    """Everything under C{directory} (itself included) that group or others may use."""
    found = []
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue  # a lock file: its mode means nothing
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(directory.parent)} {mode:04o}")
    return found


def test_a_data_directory_open_to_others_is_made_private(tmp_path: Path) -> None:
    """
    A node started under umask 022 on a data directory that exists with mode
    0755 makes it 0700 and creates the database, its WAL files and the
    master secret readable by itself only, saying so in one log line. Files
    an older start left 0644 are tightened at the next start.
    """
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    port = free_port()
    config = write_config(tmp_path, port)
    with umask(0o022):
        node = NodeProcess(tmp_path, config, port=port).start()
    try:
        assert (data / "clickpass.sqlite3-wal").exists()
        assert open_to_others(data) == []
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert f"made {data} private: mode 0755 is now 0700" in node.log()
    finally:
        assert node.stop() == -signal.SIGTERM

    # What an older release left behind: all of it open to others again.
    data.chmod(0o755)
    for name in ("secret.key", "clickpass.sqlite3", "clickpass.sqlite3-wal"):
        if (data / name).exists():
            (data / name).chmod(0o644)
    again = write_config(tmp_path, port, name="again")  # same data, a log of its own
    with umask(0o022):
        node = NodeProcess(tmp_path, again, port=port).start()
    try:
        assert open_to_others(data) == []
        assert f"made {data / 'secret.key'} private: mode 0644 is now 0600" in node.log()
    finally:
        node.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_a_data_directory_of_another_user_open_to_others_is_refused(tmp_path: Path) -> None:
    """
    A data directory open to others that belongs to another user is not the
    node's to change: it refuses to start with one line naming [node]
    data_dir and the fix, and leaves the directory as it was.
    """
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    os.chown(data, 65534, 65534)
    result = run_twistd(tmp_path, write_config(tmp_path, free_port()))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1
    assert lines == [
        f"clickpass: configuration error: [node] data_dir: {data} is open to other users "
        f"(mode 0755) and belongs to another user; make it private (chmod go= {data}) or use "
        "a directory of this user's own"
    ], result.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o755
    assert list(data.iterdir()) == []

"""
The niceness of password hashing in a real node's worker: once a sign-in
has been checked, the worker holds a thread at [accounts] hash_nice (the
hashing thread), while the thread that serves requests (the reactor's,
the process's main thread) keeps the worker's own niceness.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.browser import Browser
from tests.support.node import running_node

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def niceness_by_thread(pid: int) -> dict[int, int]:
    """The niceness of each thread of process C{pid} (field 19 of /proc/PID/task/TID/stat)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        found[int(task.name)] = int(fields[16])
    return found


@pytest.mark.parametrize("nice", [7, 0])
def test_a_worker_hashes_at_hash_nice_and_serves_at_its_own(tmp_path: Path, nice: int) -> None:
    """
    With hash_nice = 7, a sign-in (checked, refused) leaves the worker with
    a thread at niceness 7 and its main thread at the niceness it started
    with; with hash_nice = 0 no thread of the worker is lowered.
    """
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with running_node(tmp_path, f"\n[accounts]\nhash_nice = {nice}\n", None, "nice") as node:
        node.ctl("user", "add", "ann@example.org", "--password-stdin", input=PASSWORD + "\n")
        assert Browser(node.url).sign_in("ann@example.org", "not the password").status_code == 401
        (worker,) = json.loads(node.ctl("--json", "workers").stdout)
        pid = int(worker["pid"])
        threads = niceness_by_thread(pid)
        assert threads[pid] == own, threads
        lowered = sorted(n for n in threads.values() if n != own)
        assert lowered == ([max(own, nice)] if nice > own else []), threads

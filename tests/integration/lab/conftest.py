"""
The whole lab (scripts/lab up with its database hosts) as a pytest fixture,
under a namespace prefix of its own, and the pieces the lab's database tests
share: the two lab servers seen as a L{Pair}, and a writer that runs in the
client namespace and writes through the real database VIP.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.integration.dbagent.cluster import Writer
from tests.integration.dbagent.pair import Pair
from tests.integration.heartbeat.conftest import load_lab
from tests.support.mariadb import MariaDBServer, MariaDBUnavailable, check_binaries

labmod = load_lab()

# The base of each lab's prefix (Lab.for_run adds 4 hex digits of its own per run,
# so concurrent runs never touch each other's labs, nor anyone's own lab).
PREFIX = os.environ.get("CLICKPASS_TEST_DBLAB_PREFIX", "cpd-")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_namespace(namespace: str) -> None:
    """Move the calling thread (only it) into a network namespace made by `ip netns`."""
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
    finally:
        os.close(fd)


@dataclass
class ClientWriter(Writer):
    """The loopback tests' writer, run in the client namespace against the database VIP."""

    namespace: str = ""
    host: str = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._in_namespace, daemon=True)
        self._thread.start()

    def _in_namespace(self) -> None:
        enter_namespace(self.namespace)
        self._run()

    def _connect(self) -> Any:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            autocommit=True,
            connect_timeout=1.0,
            read_timeout=self.timeout,
            write_timeout=self.timeout,
        )


class LabPair(Pair):
    """The lab's db1 and db2 servers, opened over their unix sockets (as the loopback Pair)."""

    def __init__(self, lab: Any) -> None:
        self.semisync = True
        self.repl_password = (lab.dir / "db1" / "data" / "repl.pw").read_text().strip()
        self.app_password = lab.password()
        self.servers = {
            host: MariaDBServer(
                Path(lab.mariadb_dir(host)),
                host=labmod.HOSTS[host],
                port=labmod.DB_PORT,
                user=labmod.DB_USER,
                password=self.app_password,
                database="app",
            )
            for host in labmod.DB_NODES
        }


def _check_possible() -> None:
    # Marked root+mariadb: a run that cannot give them deselects these tests
    # (-m "not root"); here they fail with the reason rather than pass unseen.
    if os.geteuid() != 0:
        pytest.fail("the lab needs root to create network namespaces", pytrace=False)
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"the lab needs {tool} (iproute2, curl)", pytrace=False)
    try:
        check_binaries()
    except MariaDBUnavailable as e:
        pytest.fail(str(e), pytrace=False)


def settle_db(lab: Any, timeout: float = 120.0, steady: float = 2.0) -> None:
    """
    Wait until db1 is the primary and db2 its replica, and both have stayed
    so for C{steady} seconds: the tests fault db1 and write their table there.
    Under load db1 may be taken for down after the lab came up and the pair
    swap: it is switched back with a planned switchover (lossless), as an
    operator would, and waited for again.
    """
    deadline = time.monotonic() + timeout
    since: float | None = None
    roles: tuple[str, str] = ("", "")
    while time.monotonic() < deadline:
        roles = (lab.db_role("db1"), lab.db_role("db2"))
        now = time.monotonic()
        if roles == ("primary", "replica"):
            since = since if since is not None else now
            if now - since >= steady:
                return
        else:
            since = None
            if roles == ("replica", "primary"):
                try:
                    lab.ctl("db2", "db", "switchover", timeout=10.0)
                except Exception as e:  # refused while roles change: asked again later
                    print(f"switchover back to db1 refused: {e}")
                time.sleep(2.0)
        time.sleep(0.2)
    raise AssertionError(f"the database pair did not settle (db1, db2: {roles})")


@pytest.fixture
def make_db_lab() -> Iterator[Any]:
    """Build a lab with its database hosts (options as Lab.up); always torn down afterwards."""
    _check_possible()
    labs: list[Any] = []

    def make(**options: Any) -> Any:
        lab = labmod.Lab.for_run(PREFIX)
        labs.append(lab)
        options.setdefault("db", True)
        options.setdefault("timeout", 120.0)
        lab.up(**options)
        if options["db"]:
            settle_db(lab)
        return lab

    yield make
    for lab in labs:
        lab.down()

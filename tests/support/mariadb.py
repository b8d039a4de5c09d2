"""
Private MariaDB servers for tests: the tests' name for
L{clickpass.storage.private_server}, which C{scripts/bench-balancer} uses
too. Never the machine's own MariaDB.
"""

from __future__ import annotations

from clickpass.storage.private_server import (
    FAST_OPTIONS,
    INSTALL_DB,
    MARIADBD,
    MariaDBServer,
    MariaDBUnavailable,
    check_binaries,
    free_port,
    running_server,
)

__all__ = [
    "FAST_OPTIONS",
    "INSTALL_DB",
    "MARIADBD",
    "MariaDBServer",
    "MariaDBUnavailable",
    "check_binaries",
    "free_port",
    "running_server",
]

"""
Private MariaDB servers for tests and benchmarks: each one a real
C{mariadbd} with its own data directory, loopback port, unix socket and pid
file, started from Debian's binaries and stopped (SIGTERM, then SIGKILL)
when the test or benchmark is done.

Several servers can run at once (replication tests start a primary and a
replica): every server takes its own directory and extra server options
(C{--log-bin}, C{--server-id}, ...), which override the fast defaults.

It lives in the package so that C{scripts/bench-balancer --database
mariadb} can start one without importing the tests; the tests reach it
through C{tests/support/mariadb.py}. The node never imports it. This module
must never touch the machine's own MariaDB (port 3306, its socket, its data
directory) and never listen beyond the address it is given (127.0.0.1
unless told otherwise).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pymysql

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"

# Small and quick: tests hold little data, and CI pays for every second of
# start-up. Extra options given to a server come after these and win.
FAST_OPTIONS: tuple[str, ...] = (
    "--skip-name-resolve",
    "--performance-schema=OFF",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--innodb-log-buffer-size=4M",
    "--innodb-data-file-path=ibdata1:10M:autoextend",
    "--innodb-use-native-aio=0",
    "--innodb-doublewrite=0",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
    "--max-connections=200",
)

# What mariadb-install-db must agree with when the server starts later.
_INSTALL_OPTIONS: tuple[str, ...] = (
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=32M",
    "--innodb-data-file-path=ibdata1:10M:autoextend",
    "--innodb-use-native-aio=0",
)

_RUNNING: weakref.WeakSet[MariaDBServer] = weakref.WeakSet()

_template_lock = threading.Lock()
_template: Path | None = None


def _template_datadir() -> Path:
    """
    A fresh data directory made by mariadb-install-db, once per process (in a
    private temporary directory, removed at exit): every server's first start
    copies it rather than running the bootstrap again (about 5 s each on a
    loaded 2-core machine, against half a second for the copy).
    """
    global _template
    with _template_lock:
        if _template is not None and (_template / "mysql").is_dir():
            return _template
        base = Path(tempfile.mkdtemp(prefix="clickpass-mariadb-template-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        (base / "tmp").mkdir()
        args = [
            INSTALL_DB,
            "--no-defaults",
            f"--datadir={base / 'data'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            # Its own temporary directory: bootstraps running at once in a
            # shared /tmp trip over each other's temporary tables.
            f"--tmpdir={base / 'tmp'}",
            *_user_option(),
            *_INSTALL_OPTIONS,
        ]
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=120, check=False, cwd=base
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()[-10:]
            raise MariaDBUnavailable(
                f"mariadb-install-db failed (exit {result.returncode}) for {base / 'data'}: "
                + " | ".join(output)
            )
        _template = base / "data"
        return _template


class MariaDBUnavailable(Exception):
    """The MariaDB binaries are missing or a server would not start; says which and why."""


def check_binaries() -> None:
    """Raise L{MariaDBUnavailable} naming what to install when the binaries are missing."""
    missing = [path for path in (MARIADBD, INSTALL_DB) if not os.access(path, os.X_OK)]
    if missing:
        raise MariaDBUnavailable(
            f"MariaDB binaries not found ({', '.join(missing)}): a private MariaDB server "
            "(the MariaDB tests, bench-balancer --database mariadb) needs Debian's "
            "mariadb-server package (apt-get install mariadb-server); scripts/test installs "
            "it when run as root"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on C{host} that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class MariaDBServer:
    """
    One private MariaDB server. L{start} initialises the data directory (on
    the first start only), starts C{mariadbd}, waits until it answers and
    creates the application database and user; L{stop} ends it. A later
    L{start} (or L{restart}) keeps the data directory and the port, as a
    server restarted under its clients would.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        extra_options: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "clickpass",
        password: str | None = None,
        database: str = "clickpass",
        start_timeout: float = 30.0,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.datadir = self.base_dir / "data"
        self.socket_path = self.base_dir / "mariadb.sock"
        self.pid_file = self.base_dir / "mariadb.pid"
        self.error_log = self.base_dir / "error.log"
        self.tmpdir = self.base_dir / "tmp"
        self.extra_options = tuple(extra_options)
        self.host = host
        self.port = port
        self._fixed_port = port != 0
        self.user = user
        self.password = password if password is not None else secrets.token_hex(12)
        self.database = database
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    # Life cycle.

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it accepts connections (bounded)."""
        check_binaries()
        if self.running:
            return
        began = time.monotonic()
        fresh = not (self.datadir / "mysql").is_dir()
        if fresh:
            self._install()
        # A port chosen for the first start is kept for every later one, as
        # a real server restarted under its clients would.
        choose = not self._fixed_port and fresh
        attempts = 3 if choose else 1
        for attempt in range(attempts):
            if choose:
                self.port = free_port(self.host)
            try:
                self._spawn_and_wait()
                break
            except MariaDBUnavailable:
                # Another process may have taken the port between our probe
                # and the server's bind; try another one.
                if attempt + 1 < attempts and "already in use" in self.log_tail():
                    continue
                raise
        if fresh:
            self._create_application_user()
        self.startup_seconds = time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait up to C{timeout} seconds, then SIGKILL. Safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        _RUNNING.discard(self)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # A stopped (SIGSTOP) server must be continued to hear SIGTERM.
                process.send_signal(signal.SIGCONT)
                process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same data directory and port."""
        self.stop()
        self.start()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send C{sig} to the server (SIGKILL, SIGSTOP, SIGCONT...) without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        if sig == signal.SIGKILL and self.process is not None:
            self.process.wait(10)
            self.process = None
            _RUNNING.discard(self)

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.error_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _install(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        # A copy of a data directory mariadb-install-db made once for this
        # process: byte for byte what it would make here, in a tenth of the
        # time (MariaDB's own test runner starts its servers so).
        shutil.copytree(_template_datadir(), self.datadir, symlinks=True)

    def command_line(self) -> list[str]:
        """The full mariadbd command line this server runs with."""
        return [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            *_user_option(),
            *FAST_OPTIONS,
            *self.extra_options,
        ]

    def _spawn_and_wait(self) -> None:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.error_log.unlink()
        self.process = subprocess.Popen(
            self.command_line(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.base_dir,
        )
        _RUNNING.add(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                _RUNNING.discard(self)
                raise MariaDBUnavailable(
                    f"mariadbd exited with status {code} while starting on port {self.port}; "
                    f"its log ({self.error_log}) ends: {self.log_tail()}"
                )
            if self.socket_path.exists():
                try:
                    self.admin_connection(connect_timeout=1).close()
                    return
                except pymysql.err.MySQLError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise MariaDBUnavailable(
                    f"mariadbd did not accept connections within {self.start_timeout:g}s "
                    f"on port {self.port}; its log ({self.error_log}) ends: {self.log_tail()}"
                )
            time.sleep(0.02)

    def _create_application_user(self) -> None:
        # The user may create and drop any database whose name starts with
        # its database's name, so tests can have one database each.
        pattern = self.database.replace("_", "\\_") + "%"
        self.admin_execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        self.admin_execute(
            f"CREATE USER IF NOT EXISTS '{self.user}'@'%%' IDENTIFIED BY %s", self.password
        )
        self.admin_execute(f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO '{self.user}'@'%'")

    # Connections.

    def admin_connection(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A root connection over the unix socket, autocommitting."""
        options: dict[str, Any] = {
            "unix_socket": str(self.socket_path),
            "user": "root",
            "password": "",
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": 5,
        }
        options.update(kwargs)
        return pymysql.connect(**options)

    def admin_execute(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Run one statement as root; return its rows (if any)."""
        connection = self.admin_connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params or None)
                return [tuple(row) for row in cursor.fetchall()]
        finally:
            connection.close()

    def connection(
        self, database: str | None = None, **kwargs: Any
    ) -> pymysql.connections.Connection[Any]:
        """A connection as the application user over TCP, as the node makes them."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": database or self.database,
            "charset": "utf8mb4",
            "connect_timeout": 5,
        }
        options.update(kwargs)
        return pymysql.connect(**options)

    def create_database(self, name: str) -> None:
        """Create database C{name} (which must start with the application database's name)."""
        self.admin_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")

    def drop_database(self, name: str) -> None:
        self.admin_execute(f"DROP DATABASE IF EXISTS `{name}`")

    def __repr__(self) -> str:
        return f"<MariaDBServer {self.host}:{self.port} pid={self.pid} dir={self.base_dir}>"


def _user_option() -> list[str]:
    # mariadbd refuses to run as root unless told to.
    return ["--user=root"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def running_server(base_dir: Path, **kwargs: Any) -> Iterator[MariaDBServer]:
    """A started server, stopped when the block ends (however it ends)."""
    server = MariaDBServer(base_dir, **kwargs)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@atexit.register
def _stop_leftovers() -> None:
    # A test run that dies before its finalizers ran must not leave
    # servers behind.
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=10)

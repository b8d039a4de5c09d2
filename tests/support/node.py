"""
Start a real Clickpass node (C{twistd -n clickpass}) for integration tests,
and drive it the way an operator would (clickpass-ctl).

A node is ready when its log says "ready: serving"; until then its log is
watched, and a node that exits early fails the test with its log's tail.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.mariadb import MariaDBServer

BIN = Path(sys.executable).parent
READY_LINE = "ready: serving"
# The bearer token /metrics needs on a test node's public listener
# ([web] metrics_token_file, written by write_config).
METRICS_TOKEN = "test-metrics-token-" + "0" * 32
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def metrics_token_file(directory: Path) -> Path:
    """Write the test nodes' metrics token under C{directory}; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "metrics-token"
    path.write_text(METRICS_TOKEN + "\n")
    path.chmod(0o600)
    return path


# What a node logs when a port in its configuration is taken.
PORT_TAKEN = "Address already in use"
# How many ports a node tries before a taken port fails its test.
PORT_ATTEMPTS = 5


class PortTaken(AssertionError):
    """A node could not listen: the port free_port chose was taken meanwhile."""


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now. Another
    process may take it before the caller listens on it: for a server in the
    test's own process, listen on port 0 and read the port back instead; a
    L{NodeProcess} told its port retries on another one (L{NodeProcess.start}).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def move_port(config: Path, old: int, new: int) -> None:
    """Rewrite every C{:old} port (listener, public URL) in C{config} as C{:new}."""
    text = re.sub(rf"(?<=:){old}(?!\d)", str(new), config.read_text())
    config.write_text(text)


# The [accounts] keys of a test node: password hashes that cost 32 KiB and
# one pass instead of the product's 64 MiB and three (a few milliseconds
# instead of a fifth of a second to several, on a loaded machine, for each
# sign-up, sign-in and check of an unknown address). Nothing a test node
# keeps is a real password.
CHEAP_HASHING = "hash_memory = 32\nhash_passes = 1\nhash_below_floor = true\n"


def cheap_hashing(extra: str) -> str:
    """
    C{extra}, a part of a node's configuration, with L{CHEAP_HASHING} in
    its [accounts] section (added if it has none), unless it sets
    hash_memory itself: a test about hashing's cost keeps the cost it sets.
    """
    if "hash_memory" in extra:
        return extra
    if re.search(r"^\[accounts\]$", extra, re.MULTILINE):
        return re.sub(
            r"^\[accounts\]\n", "[accounts]\n" + CHEAP_HASHING, extra, count=1, flags=re.MULTILINE
        )
    return extra + "\n[accounts]\n" + CHEAP_HASHING


def write_config(
    directory: Path, port: int, extra: str = "", name: str = "node1", workers: int = 1
) -> Path:
    """
    A node configuration serving on 127.0.0.1:C{port} with its data under
    C{directory}, with C{workers} worker processes (one: a test not about
    workers starts one; 0 is the product's default, one per CPU) unless
    C{extra} has a [workers] section of its own.
    """
    if "[workers]" not in extra:
        # Last, so that keys C{extra} adds to [web] stay in [web].
        extra += f"\n[workers]\ncount = {workers}\n"
    extra = cheap_hashing(extra)
    data = directory / "data"
    path = directory / f"{name}.toml"
    token = metrics_token_file(directory)
    path.write_text(
        f"""
[node]
name = "{name}"
data_dir = "{data}"
public_url = "http://127.0.0.1:{port}/"

[web]
listen = ["tcp:{port}:interface=127.0.0.1"]
metrics_token_file = "{token}"
"""
        + extra
    )
    return path


# The maildir of each node started here, by base URL: where a test's
# browser finds the links the node mailed (the embedded default writes
# mail to a maildir under the data directory).
MAILDIRS: dict[str, Path] = {}


def maildir_for(base_url: str) -> list[Path]:
    """
    Where mail from the node serving C{base_url} may be: every maildir of
    a node started here, that one first (nodes sharing a database share
    its outbox, and any of them may send a message).
    """
    own = MAILDIRS.get(base_url.rstrip("/") + "/")
    if own is None:
        return []
    return [own, *(m for m in MAILDIRS.values() if m != own)]


def data_dir_of(config: Path) -> Path | None:
    """The [node] data_dir a configuration file names, if it names one."""
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    value = data.get("node", {}).get("data_dir")
    return Path(value) if isinstance(value, str) else None


class NodeProcess:
    """One twistd process running a Clickpass node."""

    def __init__(
        self,
        workdir: Path,
        config: Path | None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.config = config
        self.log_path = workdir / f"{config.stem if config else 'default'}.log"
        self.env = {**os.environ, **(env or {})}
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's base URL (needs the port it was configured with)."""
        assert self.port is not None, "this node was started without a known port"
        return f"http://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        cmd = [str(BIN / "twistd"), "-n", "--pidfile=", "clickpass"]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd + list(self.args)

    def start(self, timeout: float = 30.0, wait_for: str = READY_LINE) -> NodeProcess:
        """
        Start the node and wait for C{wait_for} in its log. When the node
        was told its port (C{port}, from L{free_port}) and finds it taken,
        it is started again on another port (its configuration rewritten).
        """
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._start_once(timeout, wait_for)
            except PortTaken:
                if self.port is None or self.config is None:
                    raise
                new = free_port()
                move_port(self.config, self.port, new)
                self.port = new
        return self._start_once(timeout, wait_for)

    def _start_once(self, timeout: float, wait_for: str) -> NodeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        after = len(self.log())
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.wait_for_log(wait_for, timeout, after)
        data_dir = data_dir_of(self.config) if self.config is not None else None
        if self.port is not None and data_dir is not None:
            MAILDIRS[self.url] = data_dir / "mail"
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 30.0, after: int = 0) -> None:
        """Wait until C{text} appears in the log (after offset C{after})."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if self.process is not None and self.process.poll() is not None:
                error = PortTaken if PORT_TAKEN in self.log()[after:] else AssertionError
                raise error(
                    f"node exited with {self.process.returncode} before {text!r}:\n"
                    + self.log()[-4000:]
                )
            time.sleep(0.05)
        raise AssertionError(f"node did not log {text!r} within {timeout}s:\n" + self.log()[-4000:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop; return its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def ctl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        """Run clickpass-ctl against this node; return the CompletedProcess."""
        cmd = [str(BIN / "clickpass-ctl")]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        result = subprocess.run(
            cmd + list(args),
            cwd=self.workdir,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"clickpass-ctl {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result


def run_twistd(
    workdir: Path, config: Path | None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a node that is expected to refuse to start; return how it ended."""
    node = NodeProcess(workdir, config)
    return subprocess.run(
        node.command(),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mariadb_config(directory: Path, server: MariaDBServer, database: str) -> str:
    """A [database] section for a node on C{database} of C{server} (password in a file)."""
    password_file = directory / "db-password"
    password_file.write_text(server.password + "\n")
    password_file.chmod(0o600)
    return f"""
[database]
backend = "mysql"
host = "{server.host}"
port = {server.port}
user = "{server.user}"
name = "{database}"
password_file = "{password_file}"
"""


@contextlib.contextmanager
def running_node(
    directory: Path, extra: str, server: MariaDBServer | None, label: str, workers: int = 1
) -> Iterator[NodeProcess]:
    """
    A started node with its data under C{directory}: on SQLite, or (given
    C{server}) on a fresh database of that MariaDB server, dropped afterwards;
    with C{workers} worker processes (see L{write_config}).
    """
    port = free_port()
    database = None
    if server is not None:
        database = f"{server.database}_{label}{secrets.token_hex(4)}"
        server.create_database(database)
        extra += mariadb_config(directory, server, database)
    proc = NodeProcess(directory, write_config(directory, port, extra, workers=workers), port=port)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        if server is not None and database is not None:
            server.drop_database(database)

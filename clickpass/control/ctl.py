"""
clickpass-ctl: the operators' command line for a running node.

It speaks the control protocol (L{clickpass.control.protocol}) over the
node's unix socket, or over loopback TCP with a token, and prints the
answer as text or, with C{--json}, as JSON. Errors are one line on stderr
and a non-zero exit status.

Commands that need no running node (C{db migrate}) open the configured
storage themselves; C{help} lists the commands without one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clickpass import config as configmod

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class CtlError(Exception):
    """A one-line error for the operator."""


@dataclass
class Connection:
    """Where the node's control port is, and how to authenticate."""

    unix_path: str | None = None
    tcp: tuple[str, int] | None = None
    token: str | None = None
    timeout: float = 30.0

    def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"command": command, "args": args or {}}
        if self.token is not None:
            request["token"] = self.token
        try:
            if self.tcp is not None:
                sock = socket.create_connection(self.tcp, timeout=self.timeout)
                where = f"{self.tcp[0]}:{self.tcp[1]}"
            else:
                assert self.unix_path is not None
                where = self.unix_path
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.unix_path)
        except FileNotFoundError:
            raise CtlError(f"no node is listening on {where} (is it running?)") from None
        except ConnectionRefusedError:
            raise CtlError(f"connection refused at {where} (is the node running?)") from None
        except PermissionError:
            raise CtlError(f"permission denied opening {where}") from None
        except OSError as e:
            raise CtlError(f"cannot reach the control port at {where}: {e.strerror or e}") from None
        with sock:
            sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            buf = b""
            try:
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except TimeoutError:
                raise CtlError(
                    f"the node did not answer {command!r} within {self.timeout:g}s"
                ) from None
        if not buf:
            raise CtlError("the node closed the connection without answering")
        answer = json.loads(buf)
        if not answer.get("ok"):
            raise CtlError(str(answer.get("error", "unknown error")))
        return answer.get("result")


Formatter = Callable[[Any], str]


@dataclass
class Command:
    """One clickpass-ctl command: its words, its arguments, what it does."""

    words: tuple[str, ...]
    help: str
    run: Callable[[argparse.Namespace, Connection], Any]
    format: Formatter = field(default=lambda result: _format_plain(result))
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda p: None)
    needs_node: bool = True


COMMANDS: list[Command] = []


def command(
    *words: str,
    help: str,
    format: Formatter | None = None,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    needs_node: bool = True,
) -> Callable[[Callable[[argparse.Namespace, Connection], Any]], Callable[..., Any]]:
    """Register a clickpass-ctl command (decorator)."""

    def register(run: Callable[[argparse.Namespace, Connection], Any]) -> Callable[..., Any]:
        COMMANDS.append(
            Command(
                words,
                help,
                run,
                format or _format_plain,
                arguments or (lambda p: None),
                needs_node,
            )
        )
        return run

    return register


def _format_plain(result: Any) -> str:
    if result is None:
        return "ok"
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        width = max((len(str(k)) for k in result), default=0)
        return "\n".join(f"{k + ':':<{width + 1}} {_scalar(v)}" for k, v in result.items())
    if isinstance(result, list):
        return "\n".join(_scalar(v) for v in result)
    return str(result)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_scalar(v)}" for k, v in value.items())
    if value is None:
        return "-"
    return str(value)


def when(value: Any) -> str:
    """A UTC time to the second, for an operator ("-" when there is none)."""
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render rows as an aligned text table with the given columns."""
    cells = [[str(c) for c in columns]] + [[_scalar(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    )


# The commands of the node itself. Other modules add theirs by importing
# this module and using @command; they are imported in _load_commands().


def _format_status(result: dict[str, Any]) -> str:
    lines = [
        f"clickpass {result['version']} on node {result['node']}",
        f"uptime:    {result['uptime_seconds']:.0f}s",
        f"serving:   {result['public_url']}",
        f"listeners: {', '.join(result['listeners']) or '-'}",
        f"database:  {result['database']['backend']} "
        f"({'answers' if result['database']['answers'] else 'NOT ANSWERING'}"
        f"{'' if result['database']['answers'] else ': ' + str(result['database'].get('error'))})",
        f"schema:    version {result['database'].get('schema_version', '?')}",
    ]
    return "\n".join(lines)


@command(
    "status", help="show version, uptime, listeners and database health", format=_format_status
)
def _status(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("status")


def _email_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("email")


def _user_add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("email")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from the first line of standard input",
    )
    p.add_argument(
        "--verified",
        action="store_true",
        help="mark the address verified (you know it is the person's); otherwise it is "
        "released to no site until its owner confirms it",
    )


@command("user", "add", help="create an account", arguments=_user_add_arguments)
def _user_add(args: argparse.Namespace, conn: Connection) -> Any:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CtlError("no password on standard input")
    return conn.call(
        "user.add", {"email": args.email, "password": password, "verified": args.verified}
    )


@command(
    "user",
    "verify",
    help="mark an account's email address verified (you know it is the person's)",
    arguments=lambda p: _email_argument(p),
)
def _user_verify(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.verify", {"email": args.email})


@command(
    "user",
    "reset-link",
    help="print a single-use password reset link for an account (nothing is mailed)",
    arguments=lambda p: _email_argument(p),
)
def _user_reset_link(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.reset_link", {"email": args.email})


@command(
    "user",
    "disable",
    help="disable an account and end its sessions",
    arguments=lambda p: _email_argument(p),
)
def _user_disable(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("user.disable", {"email": args.email})


@command("db", "migrate", help="bring the database schema up to date", needs_node=False)
def _db_migrate(args: argparse.Namespace, conn: Connection) -> Any:
    from clickpass.storage.offline import migrate_offline

    settings = _settings(args)
    applied, version = migrate_offline(settings)
    if applied:
        return f"applied migrations {', '.join(map(str, applied))}; schema is at version {version}"
    return f"schema already at version {version}"


def _help_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node",
        action="store_true",
        help="also list the control-protocol commands the running node answers",
    )


def _format_help(result: dict[str, Any]) -> str:
    rows = result["commands"]
    width = max(len(name) for name in rows)
    lines = ["clickpass-ctl commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in rows.items()]
    if result.get("node") is not None:
        node_rows = result["node"]
        node_width = max((len(name) for name in node_rows), default=0)
        lines.append("the node's control-protocol commands:")
        lines += [f"  {name:<{node_width}}  {text}" for name, text in node_rows.items()]
    return "\n".join(lines)


@command(
    "help",
    help="list these commands (--node: and those the running node answers)",
    format=_format_help,
    arguments=_help_arguments,
    needs_node=False,
)
def _help(args: argparse.Namespace, conn: Connection) -> Any:
    # The listing itself needs no node, so it works when the node is down.
    commands = {" ".join(c.words): c.help for c in sorted(COMMANDS, key=lambda c: c.words)}
    node = _connection(args).call("help") if args.node else None
    return {"commands": commands, "node": node}


def _settings(args: argparse.Namespace) -> configmod.Settings:
    settings = configmod.load(args.config)
    configmod.check_files(settings)
    return settings


def _connection(args: argparse.Namespace) -> Connection:
    if args.socket:
        return Connection(unix_path=args.socket, timeout=args.timeout)
    settings = _settings(args)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not settings.control.token_file:
            raise CtlError("--tcp needs [control] token_file in the configuration")
        token = configmod.read_secret_file(
            settings.data_path(settings.control.token_file), "[control] token_file"
        )
        return Connection(tcp=(host or "127.0.0.1", int(port)), token=token, timeout=args.timeout)
    return Connection(unix_path=str(settings.control_socket), timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickpass-ctl", description="Operate a running Clickpass node."
    )
    parser.add_argument("--config", "-c", help="the node's configuration file (default: embedded)")
    parser.add_argument("--socket", help="control socket path (default: from the configuration)")
    parser.add_argument("--tcp", help="HOST:PORT of a loopback TCP control port (needs the token)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # A command's words before the last name nested groups (oidc keys list).
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for cmd in COMMANDS:
        parent = sub
        for depth in range(1, len(cmd.words)):
            prefix = cmd.words[:depth]
            if prefix not in groups:
                gp = parent.add_parser(prefix[-1], help=f"{' '.join(prefix)} commands")
                groups[prefix] = gp.add_subparsers(
                    dest="_".join(prefix) + "_command", metavar="SUBCOMMAND"
                )
                gp.set_defaults(_group=gp)
            parent = groups[prefix]
        p = parent.add_parser(cmd.words[-1], help=cmd.help)
        cmd.arguments(p)
        p.set_defaults(_command=cmd)
    return parser


# Modules whose @command registrations extend clickpass-ctl.
COMMAND_MODULES: tuple[str, ...] = (
    "clickpass.heartbeat.ctl",
    "clickpass.balancer.ctl",
    "clickpass.monitor.ctl",
    "clickpass.dbagent.ctl",
    "clickpass.mail.ctl",
    "clickpass.oidc.ctl",
    "clickpass.selfservice.ctl",
    "clickpass.mfa.ctl",
)


def _load_commands() -> None:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)


def main(argv: Sequence[str] | None = None) -> int:
    _load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd: Command | None = getattr(args, "_command", None)
    if cmd is None:
        group = getattr(args, "_group", None)
        (group or parser).print_help(sys.stderr)
        return EXIT_USAGE
    try:
        conn = _connection(args) if cmd.needs_node else Connection()
        result = cmd.run(args, conn)
    except (CtlError, configmod.ConfigError) as e:
        print(f"clickpass-ctl: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    text = json.dumps(result, indent=2, default=str) if args.json else cmd.format(result)
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # The reader stopped early (`clickpass-ctl ... | head`): it has what
        # it wanted. Point stdout at /dev/null so that Python's own flush at
        # exit does not raise again, and end as quietly as `git log | head`.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Connection", "CtlError", "command", "format_table", "main"]

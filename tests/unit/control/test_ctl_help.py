"""clickpass-ctl help: the documented listing of the commands, with no node needed."""

from __future__ import annotations

import pytest

from clickpass.control import ctl


def test_help_lists_every_command_without_a_node(capsys: pytest.CaptureFixture[str]) -> None:
    """`clickpass-ctl help` exits 0 and lists the commands, those of other modules included."""
    code = ctl.main(["--socket", "/nonexistent/ctl.sock", "help"])
    out = capsys.readouterr().out
    assert code == ctl.EXIT_OK
    lines = out.splitlines()
    assert lines[0] == "clickpass-ctl commands:"
    names = {line.split("  ")[1].strip() for line in lines[1:] if line.startswith("  ")}
    assert {"status", "user add", "db migrate", "backup now", "help"} <= names
    assert all(command.help in out for command in ctl.COMMANDS)


def test_help_node_reports_an_unreachable_node_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`help --node` with no node to ask fails with one line, not a traceback."""
    code = ctl.main(["--socket", "/nonexistent/ctl.sock", "help", "--node"])
    err = capsys.readouterr().err
    assert code == ctl.EXIT_ERROR
    assert len(err.strip().splitlines()) == 1 and err.startswith("clickpass-ctl:")

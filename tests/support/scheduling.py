"""
pytest-xdist's C{--dist loadgroup} (tests of one C{xdist_group} on one
worker), done so that it holds with pytest 9.2.

pytest-xdist 3.8 tells its scheduler a test's group by appending
C{@group} to the test's C{_nodeid} on the worker; pytest 9.2 keeps node ids
elsewhere, so the suffix never arrives and every test is scheduled alone
(pytest-xdist issue 1386): a module's shared node, browser or server was
started once on each worker instead of once. Here each worker writes the
groups it collected to a file of the run's own directory before it reports
its collection, and the controller's scheduler (L{GroupScheduling}) reads
them: the node ids stay as they are.

A pytest plugin (tests/conftest.py names it in C{pytest_plugins}): its hooks
are pytest-xdist's and do nothing in a run without workers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

# The key of a worker's input that names the run's directory of groups.
GROUPS_DIR = "clickpass_groups_dir"
_DIRECTORY = pytest.StashKey[Path]()


def group_of(item: pytest.Item) -> str | None:
    """The name of C{item}'s C{xdist_group} marker, or None."""
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


def groups_directory(config: pytest.Config) -> Path:
    """The controller's directory where workers leave their groups (made once per run)."""
    directory = config.stash.get(_DIRECTORY, None)
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="clickpass-xdist-groups-"))
        config.stash[_DIRECTORY] = directory
    return directory


def configure_node(node: Any) -> None:
    """Tell a worker, before it starts, where to leave its groups."""
    node.workerinput[GROUPS_DIR] = str(groups_directory(node.config))


def record_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker: write the groups of the tests it collected (node id: group)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or GROUPS_DIR not in workerinput:
        return
    groups = {item.nodeid: name for item in items if (name := group_of(item)) is not None}
    directory = Path(workerinput[GROUPS_DIR])
    partial = directory / f".{workerinput['workerid']}.json"
    partial.write_text(json.dumps(groups))
    partial.rename(directory / f"{workerinput['workerid']}.json")


def forget_groups(config: pytest.Config) -> None:
    """On the controller, at the end of the run: remove the directory of groups."""
    directory = config.stash.get(_DIRECTORY, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class GroupScheduling(LoadScopeScheduling):
    """
    Like pytest-xdist's LoadScopeScheduling, with one unit of work per
    group (the tests of a group go to one worker) and one per test outside
    any group (those go wherever a worker is free).
    """

    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        super().__init__(config, log)
        self._directory = groups_directory(config)
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:
            # Called once every worker has reported its collection, and so
            # has written its file; the workers collected the same tests.
            self._groups = {}
            for path in sorted(self._directory.glob("*.json")):
                self._groups.update(json.loads(path.read_text()))
        group = self._groups.get(nodeid)
        return nodeid if group is None else f"group {group}"


# The hooks.


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    configure_node(node)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """On a worker, before it reports its collection: leave the tests' groups for the scheduler."""
    record_groups(session.config, session.items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> GroupScheduling | None:
    if config.getvalue("dist") == "loadgroup":
        return GroupScheduling(config, log)
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    forget_groups(config)

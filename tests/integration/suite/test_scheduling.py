"""
The suite's own scheduling under pytest-xdist (tests/support/scheduling.py):
with C{--dist loadgroup}, the tests of one C{xdist_group} run on one worker,
so that what a module shares (a node, a browser) starts once; the tests of
no group go wherever a worker is free. Checked on a small suite of its own,
run by pytest with two workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[3]

CONFTEST = """
import pytest

pytest_plugins = ["tests.support.scheduling"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name.startswith("test_grouped"):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
"""

# Each test leaves the worker it ran on in a file named after itself.
MODULE = """
import os
import pytest


@pytest.mark.parametrize("n", range(8))
def test_it(n, request):
    name = request.node.nodeid.replace("/", "_").replace(":", "_")
    (request.config.rootpath / "ran" / name).write_text(os.environ["PYTEST_XDIST_WORKER"])
"""


def run_sample(tmp_path: Path, *options: str) -> dict[str, set[str]]:
    """Run the sample suite on two workers; return the workers each module ran on."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    for name in ("test_grouped_a", "test_grouped_b", "test_free"):
        (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "ran").mkdir()
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", *options],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    workers: dict[str, set[str]] = {}
    for path in (tmp_path / "ran").iterdir():
        workers.setdefault(path.name.split(".py")[0], set()).add(path.read_text())
    return workers


def test_the_tests_of_a_group_run_on_one_worker(tmp_path: Path) -> None:
    workers = run_sample(tmp_path, "--dist", "loadgroup")
    assert workers.keys() == {"test_grouped_a", "test_grouped_b", "test_free"}
    assert len(workers["test_grouped_a"]) == 1, workers
    assert len(workers["test_grouped_b"]) == 1, workers
    # Both workers took part: the groups were not put on one worker by chance.
    assert len(set().union(*workers.values())) == 2, workers

"""
Where the tests keep what a person (or CI) looks at after a run: the
browser tests' screenshots.

pytest's temporary directories are no place for them: they live under a
numbered /tmp/pytest-of-USER/pytest-N that changes with every run (the lab
pass of scripts/test is a run of its own, and so is every other pytest on
the machine), and only the last three are kept. So each test that takes
screenshots gets a directory of its own under C{test-artifacts/screenshots/}
in the checkout (C{$CLICKPASS_TEST_ARTIFACTS} to put it elsewhere), emptied
when the test starts: what is there is the last run of each test, and the
disk holds one set per test, however many runs.

It must never be imported by the product.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def artifacts_root() -> Path:
    """C{$CLICKPASS_TEST_ARTIFACTS}, or else test-artifacts/ in the checkout."""
    configured = os.environ.get("CLICKPASS_TEST_ARTIFACTS")
    return Path(configured) if configured else CHECKOUT / "test-artifacts"


def slug(nodeid: str) -> str:
    """A directory name for a test's node id: its path and name, parameters included."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", nodeid.replace(".py::", "__")).strip("_")


def screenshot_dir(nodeid: str) -> Path:
    """The test's screenshot directory, empty: this run's screenshots replace the last run's."""
    directory = artifacts_root() / "screenshots" / slug(nodeid)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory

"""
Where the browser tests keep their screenshots (tests/support/artifacts.py):
one directory per test under the artifacts' directory, which holds the last
run of each test and nothing older.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.artifacts import screenshot_dir


def test_a_tests_screenshots_replace_its_last_runs_and_no_other_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLICKPASS_TEST_ARTIFACTS", str(tmp_path))
    first = screenshot_dir("tests/integration/x/test_pages.py::test_pages[sqlite]")
    assert first.parent == tmp_path / "screenshots"
    (first / "home-phone.png").write_bytes(b"last run")
    other = screenshot_dir("tests/integration/x/test_pages.py::test_pages[mysql]")
    (other / "home-phone.png").write_bytes(b"kept")

    again = screenshot_dir("tests/integration/x/test_pages.py::test_pages[sqlite]")

    assert again == first
    assert list(again.iterdir()) == []
    assert (other / "home-phone.png").read_bytes() == b"kept"
    assert other != first

"""The lab (scripts/lab) as a pytest fixture, under its own namespace prefix."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
# The base of each lab's prefix: Lab.for_run makes every run's names its own.
PREFIX = os.environ.get("CLICKPASS_TEST_LAB_PREFIX", "cpt-")


def load_lab() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("clickpass_lab", str(ROOT / "scripts" / "lab"))
    spec = importlib.util.spec_from_loader("clickpass_lab", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


labmod = load_lab()


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root to create network namespaces")
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the lab needs {tool}")


@pytest.fixture
def make_lab() -> Iterator[Any]:
    """Build a lab with the given options; it is always torn down afterwards."""
    _skip_unless_possible()
    labs: list[Any] = []

    def make(**options: Any) -> Any:
        lab = labmod.Lab.for_run(PREFIX)
        labs.append(lab)
        lab.up(**options)
        return lab

    yield make
    for lab in labs:
        lab.down()

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


def _fail_unless_possible() -> None:
    # A lab test that cannot run fails with the reason (CI runs as root):
    # a skip would let it pass unseen. The same words as the lab's conftest.
    if os.geteuid() != 0:
        pytest.fail("the lab needs root to create network namespaces", pytrace=False)
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"the lab needs {tool} (iproute2, curl)", pytrace=False)


@pytest.fixture
def make_lab() -> Iterator[Any]:
    """Build a lab with the given options; it is always torn down afterwards."""
    _fail_unless_possible()
    labs: list[Any] = []

    def make(**options: Any) -> Any:
        lab = labmod.Lab.for_run(PREFIX)
        labs.append(lab)
        lab.up(**options)
        return lab

    yield make
    for lab in labs:
        lab.down()

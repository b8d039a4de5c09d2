"""
Another revision of this repository, checked out for a benchmark to run
next to the work tree (C{--revision}, C{--against}): C{git archive} into a
directory, its C extensions built in place, run with C{PYTHONPATH}.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The repository this tree is (devtools/ sits at its top).
ROOT = Path(__file__).resolve().parents[1]


def build_extensions(tree: Path) -> None:
    """
    Build C{tree}'s C extensions in place, if its C{setup.py} declares any:
    a revision run from C{PYTHONPATH} is not installed, so nothing else
    compiles them, and later revisions import them (the front's
    C{clickpass.balancer._http1}). Older revisions have none.
    """
    setup = tree / "setup.py"
    if not setup.is_file() or "ext_modules" not in setup.read_text():
        return
    built = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise RuntimeError(f"building the C extensions in {tree} failed:\n{built.stderr[-2000:]}")


def checkout(revision: str, into: Path) -> Path:
    """
    This repository's C{revision}, checked out (without history) under
    C{into}, with its C extensions built.
    """
    tree = into / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    build_extensions(tree)
    return tree


__all__ = ["ROOT", "build_extensions", "checkout"]

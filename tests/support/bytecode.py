"""
Compile the product's modules to bytecode once, before the tests start the
processes that import them.

The tests start a few hundred Python processes (nodes, their workers,
clickpass-ctl, the scripts). Where the environment sets
C{PYTHONDONTWRITEBYTECODE} (some development shells and sandboxes do), no
process writes the C{.pyc} of the modules it compiles, so every one of them
compiles the whole of C{clickpass} again: about a fifth of a node's CPU
time to ready (tests/support/measure_node_start.py). Bytecode written here
is read by every later process whatever that variable says; C{compileall}
rewrites only what is out of date, and writes each file atomically, so
concurrent sessions do not trip over each other.
"""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What the processes the tests start import from the checkout.
TREES = ("clickpass", "devtools", "twisted/plugins")


def compile_product() -> bool:
    """Bring the C{.pyc} of every module under L{TREES} up to date; False if one failed."""
    ok = True
    for tree in TREES:
        ok = bool(compileall.compile_dir(ROOT / tree, quiet=2)) and ok
    return ok

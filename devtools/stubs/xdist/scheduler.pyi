# The part of pytest-xdist 3.8's scheduler that tests/support/scheduling.py
# subclasses (its source: xdist/scheduler/loadscope.py).
from typing import Any

import pytest

class LoadScopeScheduling:
    def __init__(self, config: pytest.Config, log: Any | None = None) -> None: ...
    def _split_scope(self, nodeid: str) -> str: ...

def __getattr__(name: str) -> Any: ...

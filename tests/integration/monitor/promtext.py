"""
A strict reader of the Prometheus text format (version 0.0.4) for tests:
every line must be a HELP, a TYPE or a well-formed sample of a declared
metric, or reading fails; then samples are looked up by name and labels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count")}


def _value(text: str) -> float:
    if text in ("+Inf", "-Inf"):
        return math.inf if text[0] == "+" else -math.inf
    return float(text)


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            raise ValueError(f"bad labels {text!r}")
        value = match.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        out.append((match.group(1), value))
        position = match.end()
    return tuple(sorted(out))


@dataclass
class Page:
    """One /metrics page, read."""

    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def parse(text: str) -> Page:
    page = Page()
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if name in page.types:
                raise ValueError(f"line {number}: {name} declared twice")
            page.types[name] = kind
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"line {number}: not a sample: {line!r}")
        name = match.group(1)
        base = name
        for suffix in _SUFFIXES.get(page.types.get(name.rsplit("_", 1)[0], ""), ()):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
        if base not in page.types:
            raise ValueError(f"line {number}: {name} has no TYPE line before it")
        key = (name, _labels(match.group(3) or ""))
        if key in page.samples:
            raise ValueError(f"line {number}: {line!r} repeats a series")
        page.samples[key] = _value(match.group(4))
    return page


__all__ = ["Page", "parse"]

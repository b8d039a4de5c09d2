"""
What every settings section needs, and nothing else: the error a bad
configuration raises, the helper that puts a key's documentation in its
field's metadata (from which conf/clickpass.example.toml is generated), and
reading a secret from a file.

Features' settings modules import only this module; it must never import
any part of Clickpass.
"""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """
    The configuration cannot be used. The message is one line that names
    the key or file at fault and says what is wrong.
    """


def doc(text: str) -> dict[str, str]:
    """A field's metadata carrying its documentation."""
    return {"doc": text}


def read_secret_file(path: Path, key: str) -> str:
    """
    Read the first line of a secret file, or raise L{ConfigError} naming
    C{key} and the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{key}: file {path} not found") from None
    except PermissionError:
        raise ConfigError(f"{key}: file {path} not readable (permission denied)") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise ConfigError(f"{key}: {path} is not a text file") from None
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not line:
        raise ConfigError(f"{key}: file {path} is empty")
    return line

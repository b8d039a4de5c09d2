"""
Reading what a node mailed: the messages its delivery wrote to the maildir
under its data directory (the embedded default, with no [mail] section),
and the links in them.

Nothing here sends or deletes mail.
"""

from __future__ import annotations

import email
import re
import time
from email.message import Message
from pathlib import Path

from tests.support.node import NodeProcess, data_dir_of

LINK = re.compile(r"(https?://[^\s<>\"']+)")


def maildir_of(node: NodeProcess) -> Path:
    """The maildir a node writes to (under the data directory its configuration names)."""
    data_dir = data_dir_of(node.config) if node.config is not None else None
    return (data_dir or node.workdir / "data") / "mail"


def text_of(message: Message) -> str:
    """The plain-text part of C{message}."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode("utf-8")
    raise AssertionError("no text part in the message")


def messages_to(maildir: Path, to: str) -> list[Message]:
    """Every message delivered to C{to}, oldest first (by file time)."""
    found = []
    for path in sorted((maildir / "new").glob("*"), key=lambda p: (p.stat().st_mtime, p.name)):
        message = email.message_from_bytes(path.read_bytes())
        if message["To"] == to:
            found.append(message)
    return found


def wait_for_message(
    maildir: Path | list[Path], to: str, subject: str, count: int = 1, timeout: float = 60.0
) -> Message:
    """
    Wait for the C{count}-th message to C{to} whose subject holds
    C{subject}, in C{maildir} (or any of several); return it.
    """
    maildirs = maildir if isinstance(maildir, list) else [maildir]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        matching = [
            m
            for directory in maildirs
            if (directory / "new").is_dir()
            for m in messages_to(directory, to)
            if subject in str(m["Subject"])
        ]
        if len(matching) >= count:
            return matching[count - 1]
        time.sleep(0.1)
    raise AssertionError(f"no message {count} to {to} about {subject!r} within {timeout}s")


def link_in(message: Message, path: str) -> str:
    """The path and query of the link to C{path} (e.g. C{"verify"}) in C{message}."""
    for link in LINK.findall(text_of(message)):
        rest = link.split("://", 1)[1]
        local = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        if local.startswith("/" + path + "?"):
            return local
    raise AssertionError(f"no /{path} link in:\n{text_of(message)}")

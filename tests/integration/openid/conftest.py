"""Fixtures for the OpenID interop tests: a real node, relying-party sites."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.openid.harness import Person, RelyingPartySite
from tests.support.node import NodeProcess, free_port, write_config

# The relying parties of these tests live on loopback; let the provider's
# relying-party discovery reach them.
OPENID_CONFIG = """
[openid]
allow_private_rp_discovery = true
rp_discovery_timeout = 5.0
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One running node (SQLite, free port, its own data directory) for a test module."""
    tmp = tmp_path_factory.mktemp("openid-node")
    port = free_port()
    proc = NodeProcess(tmp, write_config(tmp, port, OPENID_CONFIG), port=port)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def rp_site() -> Iterator[RelyingPartySite]:
    """A relying party's realm on 127.0.0.1, publishing its return_to in XRDS."""
    site = RelyingPartySite("127.0.0.1").start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="module")
def other_site() -> Iterator[RelyingPartySite]:
    """A second relying party, on another host name (localhost)."""
    site = RelyingPartySite("localhost").start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture
def person(node: NodeProcess) -> Person:
    """A new person (not signed up yet) with a fresh browser."""
    return Person(node.url, f"p{secrets.token_hex(4)}@example.com")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path

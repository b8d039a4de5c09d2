"""Fixtures for the mail tests: a throwaway CA whose server certificate names 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tlsca import TestCA, make_ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("smtp-ca"))


@pytest.fixture
def other_ca(tmp_path: Path) -> TestCA:
    """A second CA, which signed nothing the server presents."""
    return make_ca(tmp_path / "other-ca")

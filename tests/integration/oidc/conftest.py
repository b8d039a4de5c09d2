"""
Fixtures for the OpenID Connect provider's tests: a real node on each
storage backend, partner sites made in its database, clients registered
with clickpass-ctl, and people with a cookie-keeping browser.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.oidc.harness import Provider
from tests.support.mariadb import MariaDBServer
from tests.support.node import running_node

# The OpenID 2.0 relying parties of the tests that compare both protocols
# live on loopback: let the provider's relying-party discovery reach them.
OPENID_CONFIG = """
[openid]
allow_private_rp_discovery = true
rp_discovery_timeout = 5.0
"""


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)],
)
def provider(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Provider]:
    """
    One running node for a test module, on SQLite and on MariaDB, with the
    module's C{NODE_CONFIG} when it has one (else L{OPENID_CONFIG}).
    """
    config = getattr(request.module, "NODE_CONFIG", OPENID_CONFIG)
    tmp = tmp_path_factory.mktemp("oidc-node")
    server: MariaDBServer | None = None
    if request.param == "mysql":
        server = request.getfixturevalue("mariadb_server")
    with running_node(tmp, config, server, "oidcop") as node:
        yield Provider(node)

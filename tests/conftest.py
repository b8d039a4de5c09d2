"""
Fixtures shared by every test directory.

Keep it organised by section; a fixture used by one directory only belongs
in that directory's conftest.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads

from clickpass.storage import migrations
from clickpass.storage.sql import AdbapiStorage
from tests.support import interrupt
from tests.support.artifacts import screenshot_dir
from tests.support.bytecode import compile_product
from tests.support.deferreds import block_on
from tests.support.logged_errors import ErrorCollector, collecting_errors
from tests.support.mariadb import MariaDBServer, MariaDBUnavailable
from tests.support.storage import DatabaseTarget

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

# pytest-xdist's --dist loadgroup, done so that it holds with pytest 9.2.
pytest_plugins = ["tests.support.scheduling"]

# ---------------------------------------------------------------------------
# Bytecode: compiled once here, not by every process a test starts.
# ---------------------------------------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    """
    Compile the product before any test starts a process that imports it
    (L{tests.support.bytecode}); on the controller only, under pytest-xdist.
    """
    if not hasattr(session.config, "workerinput"):
        compile_product()


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """
    Let Ctrl-C stop the run even while a test waits on the reactor (after
    pytest-twisted has set its own SIGINT handler: L{tests.support.interrupt}).
    """
    interrupt.install()


# ---------------------------------------------------------------------------
# Tiers: every test gets exactly one of unit, integration, lab, bench.
# ---------------------------------------------------------------------------

TIERS = ("unit", "integration", "lab", "bench")
# Markers that say a test starts real processes or servers.
STARTS_PROCESSES = ("integration", "mariadb", "perl")


def tier_of(item: pytest.Item) -> str:
    """
    The tier of C{item}, from where it lives and what it is marked with:
    C{bench} for the benchmark smoke tests (C{test_bench_*.py}), C{lab} for
    tests that build network namespaces (marked C{root}), C{integration} for
    the rest of C{tests/integration} and for any test that starts a process
    or a server (a MariaDB parameter of a unit test, say), C{unit} otherwise.
    """
    path = item.path
    if path.name.startswith("test_bench_"):
        return "bench"
    if item.get_closest_marker("root") is not None:
        return "lab"
    if "integration" in path.parts or any(
        item.get_closest_marker(name) is not None for name in STARTS_PROCESSES
    ):
        return "integration"
    return "unit"


# Integration tests that measure failover timings (see pytest_collection_modifyitems).
ALONE_DIRECTORY = "dbagent"


@pytest.hookimpl(tryfirst=True)
def walks_another_language_on_mariadb(item: pytest.Item) -> bool:
    """
    Whether C{item} is a combination that C{other_languages_on_sqlite}
    (tests/support/languages.py) leaves out: a language other than English
    on the MariaDB node of the fixture the marker names.
    """
    marker = item.get_closest_marker("other_languages_on_sqlite")
    callspec = getattr(item, "callspec", None)
    if marker is None or callspec is None:
        return False
    params = callspec.params
    return bool(params.get("language", "en") != "en" and params.get(marker.args[0]) == "mysql")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Mark each test with its tier (before C{-m} selects), so that
    C{pytest -m unit} (C{scripts/test --quick}) runs the fast tier alone.

    Under pytest-xdist (C{--dist loadgroup}): lab tests share the machine's
    namespaces and fixed lab names, so they all go to one worker, one at a
    time; the tests of one integration module go to one worker together, so
    that a node or server the module shares is started once, not once per
    worker; unit tests go wherever a worker is free.

    Walks in other languages than English on a MariaDB node are left out
    (C{other_languages_on_sqlite}): never collected, not skipped.
    """
    left_out = [item for item in items if walks_another_language_on_mariadb(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not walks_another_language_on_mariadb(item)]
    for item in items:
        tier = tier_of(item)
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "integration" and ALONE_DIRECTORY in item.path.parts:
            # The database agent's failover tests time sub-second role
            # changes on loopback: scripts/test runs them with the lab tier.
            item.add_marker(pytest.mark.alone)
        if item.get_closest_marker("xdist_group") is not None:
            continue
        if tier == "lab":
            item.add_marker(pytest.mark.xdist_group("lab"))
        elif tier != "unit":
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


# ---------------------------------------------------------------------------
# Errors logged by the code under test fail the test, unless it expects them.
# ---------------------------------------------------------------------------


@pytest.fixture
def logged_errors() -> Iterator[ErrorCollector]:
    """
    The errors (failures, tracebacks) logged while the test runs, for a test
    that provokes them and checks them itself; asking for it is the opt-out.
    """
    with collecting_errors() as collector:
        yield collector


@pytest.fixture(autouse=True)
def fail_on_logged_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Fail a unit test whose code logged a failure through Twisted's global
    log publisher (C{log.failure}, C{log.err}, an unhandled error in a
    Deferred) that it did not expect. Opt out with
    C{@pytest.mark.logs_errors("why")} or by asking for the L{logged_errors}
    fixture. Integration tests are left out: their code under test runs in
    child processes (whose logs they read), and what runs in-process there
    (database agents, outboxes) is driven through faults that log on purpose.
    """
    if (
        request.node.get_closest_marker("unit") is None
        or request.node.get_closest_marker("logs_errors") is not None
        or "logged_errors" in request.fixturenames
    ):
        yield
        return
    with collecting_errors() as collector:
        yield
    if collector.events:
        pytest.fail(
            "the code under test logged an error it was not expected to (if the test"
            " provokes it, mark it @pytest.mark.logs_errors or use the logged_errors"
            " fixture):\n" + collector.report(),
            pytrace=False,
        )


def global_reactor() -> IReactorThreads:
    """The reactor pytest-twisted runs (tests may name it; the library never does)."""
    from twisted.internet import reactor as running

    return cast(IReactorThreads, running)


@pytest.fixture
def reactor() -> IReactorThreads:
    """The running reactor, for code under test that takes one."""
    return global_reactor()


# ---------------------------------------------------------------------------
# Storage: a private MariaDB server, and a fresh database on either backend.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """A real headless Chromium, one per test module (tests/support/chromium.py)."""
    from tests.support.chromium import chromium

    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    """
    An empty directory for the test's screenshots, kept after the run under
    test-artifacts/screenshots/ (tests/support/artifacts.py); its path is printed.
    """
    directory = screenshot_dir(request.node.nodeid)
    print(f"screenshots: {directory}")
    return directory


# The session's server never syncs to disk (no fsync at commit, none of
# the files, every table in the shared tablespace, so that a test's
# database is made and dropped without creating and syncing a file per
# table): each MariaDB test makes a database and migrates it, and on this
# disk those syncs were a third or more of its setup. Nothing a test checks
# survives a crash of this server; the replication and failover tests
# start servers of their own, with their own durability.
NO_SYNC_OPTIONS = (
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-flush-method=nosync",
    "--innodb-file-per-table=0",
)


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """
    One private MariaDB server for the whole run, on a free loopback port.
    Missing binaries fail the test: a backend silently skipped is a backend
    not tested.
    """
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"), extra_options=NO_SYNC_OPTIONS)
    try:
        try:
            server.start()
        except MariaDBUnavailable as e:
            pytest.fail(str(e), pytrace=False)
        yield server
    finally:
        server.stop()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("mysql", marks=[pytest.mark.mariadb, pytest.mark.integration]),
    ]
)
def database_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseTarget]:
    """
    A fresh, empty database, once on SQLite and once on MariaDB (a database
    of its own on the session's server, dropped afterwards).
    """
    if request.param == "sqlite":
        target = DatabaseTarget("sqlite", tmp_path, global_reactor())
    else:
        server: MariaDBServer = request.getfixturevalue("mariadb_server")
        target = DatabaseTarget(
            "mysql",
            tmp_path,
            global_reactor(),
            server,
            f"{server.database}_t{secrets.token_hex(6)}",
        )
        server.create_database(target.database)
    try:
        yield target
    finally:
        target.close()


@pytest.fixture
def storage_backend(database_target: DatabaseTarget) -> AdbapiStorage:
    """A fresh, migrated AdbapiStorage, once on SQLite and once on MariaDB."""
    storage = database_target.open()
    block_on(Deferred.fromCoroutine(migrations.migrate(storage, 1_700_000_000)))
    return storage

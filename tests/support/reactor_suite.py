"""
Twisted's own reactor tests (TCP, UNIX sockets, TLS, file descriptor sets,
system events), built for L{clickpass.epoll_reactor.LeanEpollReactor}: the suites
Twisted runs against its epoll reactor.

C{python -m tests.support.reactor_suite} runs them with trial's runner and
exits 0 only when every one passed and none was skipped. It runs in a
process of its own (C{tests/unit/test_epoll_reactor.py}) because these tests swap
the global reactor's class and state while they run. C{REACTOR_UNDER_TEST}
names another reactor class to run them against, for comparison.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

from twisted.internet.test import test_core, test_fdset, test_tcp, test_time, test_tls, test_unix
from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.trial.reporter import VerboseTextReporter
from twisted.trial.runner import TestLoader, TrialRunner
from twisted.trial.unittest import TestSuite

REACTOR = os.environ.get("REACTOR_UNDER_TEST", "clickpass.epoll_reactor.LeanEpollReactor")

BUILDERS: list[type[ReactorBuilder]] = [
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_unix.UNIXTestsBuilder,
    test_unix.UNIXPortTestsBuilder,
    test_unix.UnixClientTestsBuilder,
    test_tls.SSLClientTestsMixin,
    test_tls.TLSPortTestsBuilder,
    test_tls.AbortSSLConnectionTests,
    test_fdset.ReactorFDSetTestsBuilder,
    test_core.SystemEventTestsBuilder,
    test_time.TimeTestsBuilder,
]

# Twisted skips this one for its epoll reactor by class name ("cannot detect
# lost file descriptors": closing a descriptor removes it from the epoll set
# without an event), so it cannot pass for an epoll reactor of another name.
NOT_FOR_EPOLL = {"test_lostFileDescriptor"}


def test_classes() -> list[type]:
    """One trial TestCase class per builder, for L{REACTOR}."""
    classes: list[type] = []
    for builder in BUILDERS:
        ours = type(builder.__name__, (builder,), {"_reactors": [REACTOR]})
        made: dict[str, type] = ours.makeTestCaseClasses()  # type: ignore[attr-defined]
        classes.extend(made.values())
    return classes


def _flatten(suite: Any) -> Iterator[Any]:
    for test in suite:
        if isinstance(test, TestSuite) or hasattr(test, "_tests"):
            yield from _flatten(test)
        else:
            yield test


def suite() -> TestSuite:
    loader = TestLoader()
    tests = [
        test
        for cls in test_classes()
        for test in _flatten(loader.loadClass(cls))
        if test.id().rsplit(".", 1)[-1] not in NOT_FOR_EPOLL
    ]
    return TestSuite(tests)


def main() -> int:
    runner = TrialRunner(VerboseTextReporter, stream=sys.stdout, workingDirectory="_trial_temp")
    result: Any = runner.run(suite())
    print(f"ran {result.testsRun}, skipped {len(result.skips)}")
    return 0 if result.wasSuccessful() and not result.skips else 1


if __name__ == "__main__":
    sys.exit(main())

"""
systemd's service notification protocol (sd_notify(3)) for a node run as a
C{Type=notify} unit (conf/systemd/clickpass.service): C{READY=1} once the
node serves, C{WATCHDOG=1} from the reactor at half the unit's
C{WatchdogSec} (so a reactor that stops turning gets the node restarted),
and C{STOPPING=1} when it stops.

systemd passes the socket in C{NOTIFY_SOCKET} (a path, or C{@name} in the
abstract namespace) and the watchdog interval in C{WATCHDOG_USEC} (for the
process C{WATCHDOG_PID} names, when set). Without C{NOTIFY_SOCKET} (not
under systemd) every call here does nothing.

This module must never raise into the node nor block its reactor: each
message is one non-blocking datagram to a local socket, and a failure to
send is logged, not propagated.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def _address(value: str) -> str | bytes:
    # A leading "@" names a socket in the abstract namespace (a NUL byte on the wire).
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class SystemdNotifier(Service):
    """Tells systemd the node is ready, alive (watchdog) and stopping."""

    log = Logger()

    def __init__(
        self, reactor: IReactorTime, notify_socket: str | None, watchdog_seconds: float | None
    ) -> None:
        self.setName("systemd")
        self.reactor = reactor
        self.notify_socket = notify_socket or None
        self.watchdog_seconds = watchdog_seconds if notify_socket else None
        self._socket: socket.socket | None = None
        self._watchdog: LoopingCall | None = None
        self._failures = 0

    @classmethod
    def from_environment(
        cls, reactor: IReactorTime, environ: Mapping[str, str], pid: int
    ) -> SystemdNotifier:
        """
        The notifier systemd's environment asks for (C{NOTIFY_SOCKET},
        C{WATCHDOG_USEC}, C{WATCHDOG_PID}); one that does nothing without it.
        """
        watchdog: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(pid)):
            watchdog = int(usec) / 1_000_000
        return cls(reactor, environ.get("NOTIFY_SOCKET"), watchdog)

    @property
    def enabled(self) -> bool:
        return self.notify_socket is not None

    def startService(self) -> None:
        super().startService()
        if self.notify_socket is None:
            return
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        if self.watchdog_seconds is not None:
            # Half the interval, as sd_watchdog_enabled(3) advises: one late
            # turn of a busy reactor must not get the node killed.
            self._watchdog = LoopingCall(self.notify, "WATCHDOG=1")
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.watchdog_seconds / 2, now=True).addErrback(
                lambda f: self.log.failure("systemd watchdog stopped", f)
            )
            self.log.info(
                "systemd watchdog: every {interval}s (WatchdogSec {seconds}s)",
                interval=self.watchdog_seconds / 2,
                seconds=self.watchdog_seconds,
            )

    def stopService(self) -> None:
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        self.notify("STOPPING=1")
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def ready(self, status: str = "") -> None:
        """The node serves: C{READY=1} (and a one-line C{STATUS=})."""
        fields = ["READY=1"]
        if status:
            fields.append("STATUS=" + " ".join(status.split()))
        self.notify(*fields)

    def notify(self, *fields: str) -> bool:
        """Send C{fields} (C{KEY=value}) as one message; whether it was sent."""
        if self._socket is None or self.notify_socket is None:
            return False
        try:
            self._socket.sendto("\n".join(fields).encode(), _address(self.notify_socket))
        except OSError as e:
            # Log the first failure and every hundredth: a watchdog at 2 Hz
            # against a vanished socket must not flood the journal.
            if self._failures % 100 == 0:
                self.log.warn(
                    "cannot notify systemd at {socket}: {error}",
                    socket=self.notify_socket,
                    error=str(e),
                )
            self._failures += 1
            return False
        return True


def notifier_for_this_process(reactor: IReactorTime) -> SystemdNotifier:
    """The notifier for this process's environment (what the node uses)."""
    return SystemdNotifier.from_environment(reactor, os.environ, os.getpid())


__all__ = ["SystemdNotifier", "notifier_for_this_process"]

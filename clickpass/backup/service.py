"""
The node's side of backups: C{backup.now} on the control port (the backup
runs in a thread, never on the reactor), and the watch that raises alerts
when the last backup failed (C{backup.failed}) or when no backup has
succeeded for longer than C{[backup] max_age} (C{backup.stale}).

The watch reads the outcome file the backup pipeline writes in the data
directory, whether the backup ran here or from cron (scripts/backup with
the same configuration), so both are watched the same way.

This module must never run the backup pipeline on the reactor thread and
never let a failing backup, or a failing alert, stop the node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from clickpass import config as configmod
from clickpass.backup import archive
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.monitor.alerts import Alerts
from clickpass.monitor.metrics import Registry

FAILED = "backup.failed"
STALE = "backup.stale"


@dataclass(frozen=True)
class Verdict:
    """What the watch concludes from the recorded outcomes."""

    failed: str | None
    stale: str | None


def judge(status: dict[str, Any], now: float, watching_since: float, max_age: float) -> Verdict:
    """
    Pure: given the recorded outcomes, is the last backup a failure, and is
    the last success too old? With no success on record, the clock starts
    when the watch started (a new node is not stale at once).
    """
    success = _number(status.get("last_success"))
    failure = _number(status.get("last_failure"))
    failed = None
    if failure is not None and (success is None or failure > success):
        failed = str(status.get("last_error") or "unknown error")
    stale = None
    reference = success if success is not None else watching_since
    if now - reference > max_age:
        hours = (now - reference) / 3600
        if success is None:
            stale = f"no successful backup recorded in the {hours:.1f} hours since the node started"
        else:
            stale = (
                f"no successful backup for {hours:.1f} hours (last: {status.get('last_backup')})"
            )
    return Verdict(failed, stale)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class BackupService(Service):
    """Backups on demand and the watch over their outcomes."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: configmod.Settings,
        alerts: Alerts,
        metrics: Registry | None = None,
        take_backup: Callable[[configmod.Settings], archive.BackupResult] = archive.take_backup,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.setName("backup")
        self.reactor = reactor
        self.settings = settings
        self.alerts = alerts
        self._take_backup = take_backup
        self._wall_clock = wall_clock
        self._loop: LoopingCall | None = None
        self._running: Deferred[Any] | None = None
        self.watching_since = 0.0
        self.last_verdict = Verdict(None, None)
        registry = metrics or Registry()
        self._runs = registry.counter(
            "clickpass_backup_runs_total", "Backups run by this node, by outcome.", ("outcome",)
        )
        self._last_success = registry.gauge(
            "clickpass_backup_last_success_timestamp_seconds",
            "When the last successful backup finished (Unix time; 0: none recorded).",
            aggregate="max",
        )
        self._last_success.set_function(
            lambda: _number(archive.read_status(self.settings).get("last_success")) or 0.0
        )

    def register_commands(self, registry: CommandRegistry) -> None:
        registry.register("backup.now", self._cmd_now, "take an encrypted backup now and upload it")
        registry.register("backup.status", self._cmd_status, "the last backup outcomes")

    # The watch.

    def startService(self) -> None:
        super().startService()
        self.watching_since = self.reactor.seconds()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(self.settings.backup.check_interval, now=True).addErrback(
            lambda f: self.log.failure("backup watch stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def check(self) -> Verdict:
        """Compare the recorded outcomes with the clock; raise or resolve the alerts."""
        # A small local JSON file: reading it here is quicker than a thread hop.
        status = archive.read_status(self.settings)
        verdict = judge(
            status, self.reactor.seconds(), self.watching_since, self.settings.backup.max_age
        )
        self.last_verdict = verdict
        if verdict.failed is not None:
            self.alerts.raise_(
                FAILED, f"backup failed: {verdict.failed}", {"error": verdict.failed}
            )
        else:
            self.alerts.resolve(FAILED)
        if verdict.stale is not None:
            self.alerts.raise_(
                STALE, verdict.stale, {"max_age_seconds": self.settings.backup.max_age}
            )
        else:
            self.alerts.resolve(STALE)
        return verdict

    # backup.now

    async def backup_now(self) -> dict[str, Any]:
        """Take a backup in a thread; record its outcome and update the alerts."""
        if self._running is not None:
            raise CommandError("a backup is already running on this node; try again when it ends")
        pool = self.reactor.getThreadPool()
        self._running = deferToThreadPool(self.reactor, pool, self._take_backup, self.settings)
        try:
            result: archive.BackupResult = await self._running
        except Exception as e:
            message = " ".join((str(e) or type(e).__name__).split())
            self._runs.inc(outcome="failed")
            self.log.error("backup failed: {error}", error=message)
            await self._record(error=message)
            self.check()
            raise CommandError(f"backup failed: {message}") from None
        finally:
            self._running = None
        self._runs.inc(outcome="ok")
        summary = result.summary()
        self.log.info(
            "backup {backup} uploaded ({size} bytes in {seconds}s)",
            backup=summary["backup"],
            size=summary["stored_bytes"],
            seconds=summary["seconds"],
        )
        if result.warning:
            self.log.warn(
                "backup {backup}: {warning}", backup=summary["backup"], warning=result.warning
            )
        await self._record(backup=summary["backup"])
        self.check()
        return summary

    async def _record(self, backup: str = "", error: str = "") -> None:
        pool = self.reactor.getThreadPool()
        try:
            await deferToThreadPool(
                self.reactor,
                pool,
                archive.record_status,
                self.settings,
                self._wall_clock(),
                backup,
                error,
            )
        except OSError as e:
            self.log.error("cannot record the backup outcome: {error}", error=str(e))

    async def _cmd_now(self, args: Any) -> dict[str, Any]:
        return await self.backup_now()

    def _cmd_status(self, args: Any) -> dict[str, Any]:
        status = archive.read_status(self.settings)
        verdict = self.check()
        return {
            "running": self._running is not None,
            "last_success": status.get("last_success"),
            "last_backup": status.get("last_backup"),
            "last_failure": status.get("last_failure"),
            "last_error": status.get("last_error"),
            "failed": verdict.failed is not None,
            "stale": verdict.stale is not None,
            "max_age_seconds": self.settings.backup.max_age,
        }


__all__ = ["FAILED", "STALE", "BackupService", "Verdict", "judge"]

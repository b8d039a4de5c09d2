"""The node's backup watch: when it raises backup.failed and backup.stale, and when not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from clickpass import config as configmod
from clickpass.backup.service import BackupService, judge
from clickpass.monitor.alerts import Alerts

HOUR = 3600.0


def test_judge() -> None:
    """A failure newer than the last success fails; no success within max_age is stale."""
    now = 100 * HOUR
    fresh = {"last_success": now - HOUR, "last_backup": "n/1"}
    assert judge(fresh, now, 0, 26 * HOUR) == judge({}, now, now - HOUR, 26 * HOUR)
    assert judge(fresh, now, 0, 26 * HOUR).failed is None
    assert judge(fresh, now, 0, 26 * HOUR).stale is None
    old = {"last_success": now - 30 * HOUR, "last_backup": "n/1"}
    assert "30.0 hours" in str(judge(old, now, 0, 26 * HOUR).stale)
    assert "since the node started" in str(judge({}, now, now - 27 * HOUR, 26 * HOUR).stale)
    failed = {**fresh, "last_failure": now - 60, "last_error": "NoSuchBucket"}
    assert judge(failed, now, 0, 26 * HOUR).failed == "NoSuchBucket"
    recovered = {**failed, "last_success": now - 30}
    assert judge(recovered, now, 0, 26 * HOUR).failed is None


def make(tmp_path: Path) -> tuple[BackupService, Alerts, Clock, Path]:
    clock = Clock()
    clock.advance(1_000_000)
    settings = configmod.parse(
        {"node": {"data_dir": str(tmp_path)}, "backup": {"max_age": 7200, "check_interval": 60}}
    )
    alerts = Alerts(clock, "n", [], group_wait=1)
    alerts.startService()
    service = BackupService(clock, settings, alerts)
    service.startService()
    return service, alerts, clock, tmp_path / "backup-status.json"


def write(path: Path, **status: Any) -> None:
    path.write_text(json.dumps(status))


def test_watch_quiet_while_backups_succeed(tmp_path: Path) -> None:
    """Hourly successes for a day: no alert at any point."""
    _service, alerts, clock, status = make(tmp_path)
    for _ in range(24):
        write(status, last_success=clock.seconds(), last_backup="n/x")
        for _ in range(60):
            clock.advance(60)
            assert alerts.active == {}
    assert alerts.sent == []


def test_watch_raises_and_resolves(tmp_path: Path) -> None:
    """A recorded failure raises backup.failed; silence past max_age raises backup.stale."""
    _service, alerts, clock, status = make(tmp_path)
    write(status, last_success=clock.seconds(), last_backup="n/x")
    clock.advance(60)
    write(
        status,
        last_success=clock.seconds() - 60,
        last_backup="n/x",
        last_failure=clock.seconds(),
        last_error="boom",
    )
    clock.advance(60)
    assert set(alerts.active) == {"backup.failed"}
    for _ in range(120):
        clock.advance(60)
    assert set(alerts.active) == {"backup.failed", "backup.stale"}
    write(status, last_success=clock.seconds(), last_backup="n/y", last_failure=1.0)
    clock.advance(60)
    assert alerts.active == {}
    clock.advance(1)  # the gathering window closes
    statuses = [(e.status, e.key) for b in alerts.sent for e in b.events]
    assert statuses == [
        ("firing", "backup.failed"),
        ("firing", "backup.stale"),
        ("resolved", "backup.failed"),
        ("resolved", "backup.stale"),
    ]


def test_no_backup_ever_is_stale_after_max_age(tmp_path: Path) -> None:
    """A node with backups enabled that never backs up alerts once max_age has passed."""
    _service, alerts, clock, _ = make(tmp_path)
    for _ in range(119):
        clock.advance(60)
    assert alerts.active == {}
    clock.advance(120)
    assert set(alerts.active) == {"backup.stale"}

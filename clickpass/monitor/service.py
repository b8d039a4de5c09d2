"""
The node's monitoring part: the alerts service, the metrics registry (with
the heartbeat's and the database agent's metrics when those run here, see
L{clickpass.monitor.sources}), and (when [backup] is enabled) the backup
service, put into the node's tree with their control commands.

Other subsystems reach them through the node: C{node.monitoring.alerts}
(L{clickpass.monitor.alerts.Alerts}) and C{node.monitoring.metrics}
(L{clickpass.monitor.metrics.Registry}).

This module must never start anything itself: it only builds services for
the node to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import IServiceCollection

from clickpass import config as configmod
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.monitor.alerts import Alerts
from clickpass.monitor.metrics import Registry


@dataclass
class Monitoring:
    """What the node keeps of its monitoring part."""

    alerts: Alerts
    metrics: Registry
    backup: Any = None
    # clickpass.monitor.sources.HeartbeatStatus, when [cluster] is enabled.
    heartbeat: Any = None


def install_monitoring(
    parent: IServiceCollection,
    reactor: Any,
    settings: configmod.Settings,
    commands: CommandRegistry,
) -> Monitoring:
    """Build the alerts (and backup) services under C{parent}; register their commands."""
    metrics = Registry()
    alerts = Alerts.from_settings(reactor, settings)
    alerts.setServiceParent(parent)
    firing = metrics.gauge(
        "clickpass_alerts_firing", "Alerts firing on this node.", ("key",), aggregate="max"
    )
    firing.set_function(lambda: {(key,): 1.0 for key in alerts.active})
    monitoring = Monitoring(alerts=alerts, metrics=metrics)
    # The heartbeat and the database agent are built after this (the node
    # adds them next), so their metrics find them through the node when read.
    if settings.cluster.enabled:
        from clickpass.monitor.sources import HeartbeatStatus, install_heartbeat_metrics

        heartbeat = HeartbeatStatus(reactor, lambda: getattr(parent, "cluster", None))
        install_heartbeat_metrics(metrics, heartbeat)
        if settings.cluster.process == "child":
            heartbeat.setServiceParent(parent)
        monitoring.heartbeat = heartbeat
    if settings.dbagent.enabled:
        from clickpass.monitor.sources import install_dbagent_metrics

        install_dbagent_metrics(
            metrics, lambda: getattr(getattr(parent, "dbagent", None), "agent", None)
        )

    def list_alerts(args: Any) -> list[dict[str, Any]]:
        return alerts.describe()

    async def test_alerts(args: Any) -> dict[str, str]:
        if not alerts.channels:
            raise CommandError("no alert channel is configured (see the [alerts] section)")
        return await alerts.send_test()

    commands.register("alerts.list", list_alerts, "the alerts firing on this node")
    commands.register("alerts.test", test_alerts, "send a test notification through every channel")
    if settings.backup.enabled:
        from clickpass.backup.service import BackupService

        backup = BackupService(reactor, settings, alerts, metrics)
        backup.register_commands(commands)
        backup.setServiceParent(parent)
        monitoring.backup = backup
    return monitoring


__all__ = ["Monitoring", "install_monitoring"]

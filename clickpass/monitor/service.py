"""
The node's monitoring part: the alerts service, the metrics registry (with
the heartbeat's and the database agent's metrics when those run here, see
L{clickpass.monitor.sources}), with their control commands. (Backups,
which report here, are built by the node.)

The node builds them first and passes C{monitoring.alerts}
(L{clickpass.monitor.alerts.Alerts}) and C{monitoring.metrics}
(L{clickpass.monitor.metrics.Registry}) to the parts that raise alerts or
add metrics.

This module must never start anything itself, nor put services into a
tree: it only builds them for the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clickpass import config as configmod
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.monitor.alerts import Alerts
from clickpass.monitor.metrics import Registry
from clickpass.monitor.sources import (
    HeartbeatStatus,
    HeartbeatView,
    install_dbagent_metrics,
    install_heartbeat_metrics,
)


@dataclass
class Monitoring:
    """What the node keeps of its monitoring part."""

    alerts: Alerts
    metrics: Registry
    # When [cluster] is enabled.
    heartbeat: HeartbeatStatus | None = None


def build_monitoring(
    reactor: Any, settings: configmod.Settings, commands: CommandRegistry
) -> Monitoring:
    """
    The alerts service and the node's metrics registry, with the alerts'
    commands; the caller puts the service into its tree.
    """
    metrics = Registry()
    alerts = Alerts.from_settings(reactor, settings)
    firing = metrics.gauge(
        "clickpass_alerts_firing", "Alerts firing on this node.", ("key",), aggregate="max"
    )
    firing.set_function(lambda: {(key,): 1.0 for key in alerts.active})
    monitoring = Monitoring(alerts=alerts, metrics=metrics)

    def list_alerts(args: Any) -> list[dict[str, Any]]:
        return alerts.describe()

    async def test_alerts(args: Any) -> dict[str, str]:
        if not alerts.channels:
            raise CommandError("no alert channel is configured (see the [alerts] section)")
        return await alerts.send_test()

    commands.register("alerts.list", list_alerts, "the alerts firing on this node")
    commands.register("alerts.test", test_alerts, "send a test notification through every channel")
    return monitoring


def heartbeat_metrics(
    monitoring: Monitoring, reactor: Any, settings: configmod.Settings, cluster: HeartbeatView
) -> HeartbeatStatus:
    """
    The heartbeat's metrics in the node's registry, read from C{cluster}
    (the node's ClusterService); the L{HeartbeatStatus} returned is a
    service for the node's tree when the heartbeat runs in its own process.
    """
    heartbeat = HeartbeatStatus(reactor, cluster)
    install_heartbeat_metrics(monitoring.metrics, heartbeat)
    monitoring.heartbeat = heartbeat
    return heartbeat


def dbagent_metrics(monitoring: Monitoring, agent: Any) -> None:
    """The database agent's metrics in the node's registry, read from C{agent} (a DbAgent)."""
    install_dbagent_metrics(monitoring.metrics, lambda: agent)


__all__ = ["Monitoring", "build_monitoring", "dbagent_metrics", "heartbeat_metrics"]

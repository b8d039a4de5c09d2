"""
The database agent's place in the node: [dbagent] settings that cannot work
are one-line configuration errors, the db group's VIP and notifier are
wrapped (other groups are not), and the alerts follow the agent's role.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from twisted.internet.task import Clock

from clickpass import config
from clickpass.dbagent.agent import VipGate
from clickpass.dbagent.machine import Role
from clickpass.dbagent.service import (
    ALERT_DEGRADED,
    ALERT_FAILOVER,
    ALERT_QUARANTINED,
    DbHost,
    agent_config,
)
from clickpass.heartbeat.wire import State

DOCUMENT: dict[str, Any] = {
    "cluster": {
        "enabled": True,
        "process": "inline",
        "secret_file": "cluster.key",
        "group": [
            {
                "name": "db",
                "vip": "10.0.0.200/24",
                "interface": "eth0",
                "priority": 200,
                "peers": ["10.0.0.22"],
                "check": [{"name": "database", "weight": 0}],
            },
            {"name": "app", "vip": "10.0.0.100/24", "interface": "eth0", "peers": ["10.0.0.22"]},
        ],
    },
    "dbagent": {"enabled": True, "peer_host": "10.0.0.22"},
}


def document(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOCUMENT)
    for path, value in changes.items():
        section, key = path.split("__")
        doc[section][key] = value
    return doc


def test_a_working_dbagent_section_parses() -> None:
    """The documented shape is accepted."""
    settings = config.parse(document())
    assert settings.dbagent.enabled and settings.dbagent.group == "db"
    assert agent_config(settings).catchup_wait == settings.dbagent.catchup_wait == 10.0


def test_every_dbagent_key_reaches_the_agent() -> None:
    """
    The agent runs by the [dbagent] section itself: every key, set to a
    value other than its default, arrives unchanged (the pid file resolved
    against data_dir), with the node's name.
    """
    values: dict[str, Any] = {
        "check_interval": 0.2,
        "check_timeout": 0.4,
        "check_fall": 3,
        "fence_timeout": 1.5,
        "fence_wait": 2.5,
        "promote_timeout": 11.0,
        "rejoin_interval": 0.6,
        "flap_period": 1800.0,
        "degrade_after": 4.0,
        "catchup_wait": 12.0,
        "server_pid_file": "mariadb.pid",
    }
    doc = document(**{f"dbagent__{key}": value for key, value in values.items()})
    doc["node"] = {"name": "db7", "data_dir": "/srv/clickpass"}
    settings = config.parse(doc)
    agent = agent_config(settings)
    assert agent.node == "db7"
    assert agent.server_pid_file == "/srv/clickpass/mariadb.pid"
    for key, value in values.items():
        if key != "server_pid_file":
            assert getattr(agent, key) == value, key
    for f in dataclasses.fields(settings.dbagent):
        if f.name != "server_pid_file":
            assert getattr(agent, f.name) == getattr(settings.dbagent, f.name), f.name


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cluster__process": "child"}, 'process = "inline"'),
        ({"cluster__enabled": False}, "[cluster] enabled"),
        ({"dbagent__group": "database"}, "no [[cluster.group]] named 'database'"),
        ({"dbagent__health_check": "mariadb"}, "check named 'mariadb' with weight 0"),
        ({"dbagent__peer_host": ""}, "[dbagent] peer_host"),
        ({"dbagent__check_fall": 0}, "[dbagent] check_fall"),
        ({"dbagent__catchup_wait": -1.0}, "[dbagent] catchup_wait: must not be negative"),
    ],
)
def test_settings_that_cannot_work_are_one_line_errors(
    changes: dict[str, Any], message: str
) -> None:
    """Each mistake names the key and what is needed, on one line."""
    with pytest.raises(config.ConfigError) as caught:
        config.parse(document(**changes))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@dataclass
class FakeCluster:
    engine: Any = None
    health: list[tuple[str, bool]] = field(default_factory=list)

    def set_health(self, name: str, ok: bool) -> None:
        self.health.append((name, ok))


@dataclass
class FakeAlerts:
    active: dict[str, str] = field(default_factory=dict)
    raised: list[str] = field(default_factory=list)

    def raise_(self, key: str, summary: str, details: dict[str, Any] | None = None) -> None:
        self.active[key] = summary
        self.raised.append(key)

    def resolve(self, key: str) -> None:
        self.active.pop(key, None)


@dataclass
class Inner:
    calls: list[str] = field(default_factory=list)

    def notify(self, group: str, state: State) -> None:
        self.calls.append(f"{group} {state.name}")


def host() -> tuple[DbHost, FakeCluster, FakeAlerts]:
    settings = config.parse(document())
    cluster = FakeCluster()
    alerts = FakeAlerts()
    return DbHost(Clock(), settings, cluster, alerts), cluster, alerts


def test_only_the_db_group_is_wrapped() -> None:
    """The db group's VIP goes through the agent's gate and its changes reach the agent."""
    h, _, _ = host()
    groups = {g.name: g for g in h.settings.cluster.group}
    inner_vip = object()
    assert h.wrap_vip(groups["app"], inner_vip) is inner_vip
    gate = h.wrap_vip(groups["db"], inner_vip)
    assert isinstance(gate, VipGate) and h.agent.vip is gate
    hooks = Inner()
    assert h.wrap_notifier(groups["app"], hooks) is hooks
    follow = h.wrap_notifier(groups["db"], hooks)
    follow.notify("db", State.BACKUP)
    assert hooks.calls == ["db BACKUP"] and h.agent.group == State.BACKUP


def test_alerts_follow_the_role() -> None:
    """Degraded and quarantined raise while they last; an automatic promotion raises once."""
    h, _, alerts = host()
    h.agent.core.role = Role.DEGRADED
    h._alerts()
    assert ALERT_DEGRADED in alerts.active
    h.agent.core.role = Role.PRIMARY
    h.agent.counters["promoted"] += 1
    h.agent.last_promotion = "automatic"
    h._alerts()
    h._alerts()
    assert ALERT_DEGRADED not in alerts.active
    assert alerts.raised.count(ALERT_FAILOVER) == 1
    h.agent.core.role = Role.QUARANTINED
    h._alerts()
    assert ALERT_QUARANTINED in alerts.active
    h.agent.core.role = Role.REPLICA
    h._alerts()
    assert ALERT_QUARANTINED not in alerts.active


def test_a_bootstrap_is_not_a_failover_alert() -> None:
    """Starting the first primary raises nothing."""
    h, _, alerts = host()
    h.agent.counters["promoted"] += 1
    h.agent.last_promotion = "bootstrap"
    h.agent.core.role = Role.PRIMARY
    h._alerts()
    assert alerts.raised == []

"""Tests for the [cluster] configuration: groups as a list of tables, one-line errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from clickpass import config
from clickpass.heartbeat.settings import HealthCheckSettings

DOCUMENT: dict[str, Any] = {
    "cluster": {
        "enabled": True,
        "secret_file": "cluster.key",
        "witness": "10.77.0.30",
        "group": [
            {
                "name": "app",
                "vip": "10.77.0.100/24",
                "interface": "eth0",
                "priority": 150,
                "peers": ["10.77.0.12", "10.77.0.13:5999"],
                "advert_interval": 0.1,
                "check": [{"name": "workers", "weight": 0}, {"name": "db", "weight": -50}],
            },
            {"name": "db", "vip": "10.77.0.200/24", "interface": "eth0", "peers": ["10.77.0.22"]},
        ],
    }
}


def parse(change: Any = None) -> config.Settings:
    document = copy.deepcopy(DOCUMENT)
    if change is not None:
        change(document)
    return config.parse(document)


def test_groups_and_checks_are_built_as_dataclasses() -> None:
    """[[cluster.group]] and [[cluster.group.check]] become typed, frozen settings."""
    settings = parse()
    app, db = settings.cluster.group
    assert app.priority == 150 and app.advert_interval == 0.1
    assert app.check[1] == HealthCheckSettings(name="db", weight=-50)
    assert db.priority == 100 and db.preempt is True


def test_default_has_the_cluster_disabled() -> None:
    """With no [cluster] section the heartbeat is off and nothing is required."""
    assert config.parse({}).cluster.enabled is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["cluster"]["group"][0].update(priority="high"),
            "[cluster] group[0] priority: expected an integer, got the string 'high'",
        ),
        (
            lambda d: d["cluster"]["group"][0]["check"][0].update(colour=1),
            "[cluster] group[0] check[0] colour: unknown key",
        ),
        (lambda d: d["cluster"].update(group=[1]), "[cluster] group[0]: expected a table"),
        (lambda d: d["cluster"]["group"][0].update(priority=255), "priority: must be 1 to 254"),
        (
            lambda d: d["cluster"]["group"][0].update(advert_interval=0.01),
            "advert_interval: must be 0.05 to 40 seconds",
        ),
        (lambda d: d["cluster"]["group"][1].update(name="app"), "configured twice"),
        (lambda d: d["cluster"]["group"][0].update(vip="10.77.0.100"), "give the prefix length"),
        (lambda d: d["cluster"]["group"][0].update(peers=["nowhere"]), "not HOST or HOST:PORT"),
        (lambda d: d["cluster"].update(secret_file=""), "needs a shared secret file"),
        (lambda d: d["cluster"].update(group=[]), "at least one [[cluster.group]]"),
        (lambda d: d["cluster"].update(process="thread"), '"child" or "inline"'),
        (lambda d: d["cluster"].update(node_slow_factor=20), "node_slow_factor: must be 1 to 10"),
        (lambda d: d["cluster"].update(node_slow_factor=0.5), "node_slow_factor: must be 1 to 10"),
    ],
)
def test_bad_values_give_one_line(change: Any, message: str) -> None:
    """Each mistake is reported as one line naming the key."""
    with pytest.raises(config.ConfigError) as info:
        parse(change)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_witness_role_needs_no_vip() -> None:
    """A witness's groups name peers but carry no VIP or interface."""
    settings = config.parse(
        {
            "cluster": {
                "enabled": True,
                "role": "witness",
                "secret_file": "k",
                "group": [{"name": "app", "peers": ["10.77.0.11", "10.77.0.12"]}],
            }
        }
    )
    assert settings.cluster.role == "witness"

"""
The production shape in conf/production/: each file loads with the real
configuration loader, and together they make the shape docs/operations.md
describes (every app node MASTER of its own VIP and BACKUP of the others',
a witness that votes in every group, a database pair behind one VIP).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clickpass import config
from clickpass.config import Settings
from clickpass.heartbeat.settings import ClusterGroupSettings

PRODUCTION = Path(__file__).resolve().parents[2] / "conf" / "production"
APPS = ("app1", "app2")
DBS = ("db1", "db2")
HOSTS = (*APPS, *DBS, "witness")


@pytest.fixture(scope="module")
def shape() -> dict[str, Settings]:
    return {host: config.load(PRODUCTION / f"{host}.toml") for host in HOSTS}


def groups(settings: Settings) -> dict[str, ClusterGroupSettings]:
    return {g.name: g for g in settings.cluster.group}


def test_the_directory_holds_the_five_servers() -> None:
    """conf/production/ has one file per server of the shape, and nothing else."""
    assert sorted(p.stem for p in PRODUCTION.glob("*.toml")) == sorted(HOSTS)


@pytest.mark.parametrize("host", HOSTS)
def test_each_file_loads_and_names_its_node(host: str) -> None:
    """Each file passes the node's own loader and checks, and names the node it is for."""
    settings = config.load(PRODUCTION / f"{host}.toml")
    assert settings.node.name == host
    assert settings.node.data_dir == "/var/lib/clickpass"
    assert settings.cluster.enabled


def test_every_app_node_owns_one_vip_and_stands_by_for_the_others(
    shape: dict[str, Settings],
) -> None:
    """
    One group per app node, named after it, on every app node: the owner has
    the highest priority (and preempts, to take its VIP back), the others
    lower and distinct, so the VIP of a dead node goes to one survivor.
    """
    for owner in APPS:
        members = {host: groups(shape[host])[owner] for host in APPS}
        vips = {g.vip for g in members.values()}
        assert len(vips) == 1
        priorities = {host: g.priority for host, g in members.items()}
        assert max(priorities, key=lambda h: priorities[h]) == owner
        assert len(set(priorities.values())) == len(APPS)
        assert all(g.preempt for g in members.values())
    own_vips = [groups(shape[host])[host].vip for host in APPS]
    assert len(set(own_vips)) == len(APPS)


def test_group_peers_and_the_witness_agree(shape: dict[str, Settings]) -> None:
    """
    Each member's peers are the other members' heartbeat addresses, every
    member names the witness, and the witness has each group with every member.
    """
    bind = {host: shape[host].cluster.bind for host in HOSTS}
    witness = shape["witness"]
    assert witness.cluster.role == "witness"
    members = {name: APPS for name in APPS} | {"db": DBS}
    assert set(groups(witness)) == set(members)
    for name, hosts in members.items():
        assert sorted(groups(witness)[name].peers) == sorted(bind[h] for h in hosts)
        for host in hosts:
            assert shape[host].cluster.witness == bind["witness"]
            others = sorted(bind[h] for h in hosts if h != host)
            assert sorted(groups(shape[host])[name].peers) == others
            interval = groups(witness)[name].advert_interval
            assert groups(shape[host])[name].advert_interval == interval
    secret_files = {shape[h].cluster.secret_file for h in HOSTS}
    assert len(secret_files) == 1


def test_app_nodes_serve_one_name_from_the_database_vip(shape: dict[str, Settings]) -> None:
    """
    Every app node has the same public URL and master secret, listens on every
    address (its own VIP and any it takes over) and uses MariaDB through the
    database group's VIP.
    """
    db_vip = groups(shape["db1"])["db"].vip.split("/")[0]
    assert {shape[h].node.public_url for h in APPS} == {"https://login.example.com/"}
    assert len({shape[h].secrets.secret_file for h in (*APPS, *DBS)}) == 1
    for host in APPS:
        settings = shape[host]
        assert settings.database.backend == "mysql"
        assert settings.database.host == db_vip
        assert all(":interface=0.0.0.0" in e for e in settings.web.listen)


def test_the_database_pair_moves_its_vip_with_the_primary(shape: dict[str, Settings]) -> None:
    """
    db1 and db2 run the agent on the "db" group, each pointing at the other's
    server; the group never preempts (a returning old primary stays replica).
    """
    for host, other in (("db1", "db2"), ("db2", "db1")):
        settings = shape[host]
        assert settings.dbagent.enabled
        assert settings.dbagent.peer_host == settings.cluster.group[0].peers[0]
        assert settings.dbagent.peer_host == shape[other].cluster.bind
        assert not groups(settings)["db"].preempt
    assert groups(shape["db1"])["db"].vip == groups(shape["db2"])["db"].vip

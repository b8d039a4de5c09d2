"""
The systemd units in conf/systemd/: checked by systemd's own
`systemd-analyze verify` (with /opt/clickpass pointed at this checkout, so
the programs they start exist), and read for the properties the
operations guide promises: Type=notify with a watchdog, restart on
failure, its own user, the hardening and only the heartbeat's capabilities.
The sysctl.d drop-in beside them is read as sysctl does, for exactly the
ARP settings the heartbeat checks before parking a VIP on lo.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from clickpass.heartbeat.actions import ARP_QUIET_SYSCTLS, arp_quiet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
UNITS = ROOT / "conf" / "systemd"
NAMES = ("clickpass.service", "clickpass-backup.service", "clickpass-backup.timer")


def unit(name: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return {section: dict(parser[section]) for section in parser.sections()}


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the three units: exit 0 and not one warning about them."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd, in scripts/test)"
    for name in NAMES:
        text = (UNITS / name).read_text().replace("/opt/clickpass", str(ROOT))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(f"./{name}" for name in NAMES)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    complaints = [line for line in result.stderr.splitlines() if "clickpass" in line]
    assert result.returncode == 0 and complaints == [], result.stderr


def test_a_broken_unit_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported against the unit's file."""
    text = (UNITS / "clickpass.service").read_text().replace("/opt/clickpass", str(ROOT))
    (tmp_path / "clickpass.service").write_text(text.replace("NoNewPrivileges", "NoNewPrivilege"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "./clickpass.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "NoNewPrivilege" in result.stderr


def test_node_unit_promises() -> None:
    """Type=notify with a watchdog, restarts on failure, own user, hardening, three capabilities."""
    service = unit("clickpass.service")["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "30s" and service["Restart"] == "on-failure"
    assert "twistd --nodaemon --pidfile= clickpass" in service["ExecStart"]
    assert service["User"] == service["Group"] == "clickpass"
    assert service["StateDirectory"] == "clickpass" and service["StateDirectoryMode"] == "0700"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    capabilities = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_NICE"}
    assert set(service["AmbientCapabilities"].split()) == capabilities
    assert set(service["CapabilityBoundingSet"].split()) == capabilities


def test_backup_units() -> None:
    """The timer starts the backup daily; the backup runs unprivileged, with no capability."""
    timer = unit("clickpass-backup.timer")
    assert timer["Timer"]["Unit"] == "clickpass-backup.service"
    assert (
        timer["Timer"]["Persistent"] == "true" and timer["Install"]["WantedBy"] == "timers.target"
    )
    service = unit("clickpass-backup.service")["Service"]
    assert service["Type"] == "oneshot" and service["ExecStart"].startswith(
        "/opt/clickpass/scripts/backup "
    )
    assert service["User"] == "clickpass" and service["CapabilityBoundingSet"] == ""
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"


def sysctl_drop_in(text: str) -> dict[str, str]:
    """
    A sysctl.d file as sysctl(8) reads it: blank lines and comments (C{#} or
    C{;}) skipped, every other line C{key = value}; anything else fails.
    """
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        key, equals, value = stripped.partition("=")
        key, value = key.strip(), value.strip()
        assert equals and key and value, f"line {number} is not KEY = VALUE: {line!r}"
        assert " " not in key and key not in settings, f"line {number}: bad or repeated {key!r}"
        settings[key] = value
    return settings


def test_arp_drop_in_sets_what_the_heartbeat_checks() -> None:
    """
    clickpass-arp.conf parses as a sysctl.d file and sets exactly the
    settings the heartbeat's ARP check names, with values it accepts: a
    host with it may park a handed-off VIP on lo.
    """
    settings = sysctl_drop_in((UNITS / "clickpass-arp.conf").read_text())
    assert settings == {key: str(value) for key, value in ARP_QUIET_SYSCTLS.items()}
    values = {key: int(value) for key, value in settings.items()}
    assert arp_quiet("eth0", values.get)
    # The check reads these very names: without the drop-in's values it refuses.
    assert not arp_quiet("eth0", {key: 0 for key in values}.get)


def test_a_broken_drop_in_is_caught() -> None:
    """The parse above can fail: a line with no value, a repeated key."""
    with pytest.raises(AssertionError, match="line 2 is not KEY = VALUE"):
        sysctl_drop_in("# comment\nnet.ipv4.conf.all.arp_ignore\n")
    with pytest.raises(AssertionError, match="repeated"):
        sysctl_drop_in("a.b = 1\na.b = 2\n")

"""
scripts/_venv.sh decides when the scripts may install into the virtualenv:
an environment installed with more extras than a script needs is used as
it is, the scripts cron and services run (backup, monitor) never
install anything nor reach for the network, and an environment another
checkout installed Clickpass into is not re-pointed at this one unless
asked. The benchmarks run on the same environment (CLICKPASS_VENV).

Each test points CLICKPASS_VENV at a throwaway environment whose
bin/python records how it is called and runs the real interpreter, except
that it refuses pip: an attempt to install shows up in its log and fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def setup_hash() -> str:
    """The hash _venv.sh computes, computed the same way (same shell, same glob order)."""
    result = subprocess.run(
        ["bash", "-c", "cat setup.py pyproject.toml clickpass/balancer/csrc/* | sha256sum"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()[0]


def fake_venv(tmp_path: Path, stamp: str | None) -> tuple[Path, Path]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "python-calls.log"
    python = venv / "bin" / "python"
    python.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {log}\n'
        'if [ "${1:-}" = -m ] && [ "${2:-}" = pip ]; then echo "pip refused" >&2; exit 1; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    if stamp is not None:
        (venv / ".clickpass-installed").write_text(stamp + "\n")
    return venv, log


def run_script(name: str, venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / name), *args],
        env={**os.environ, "CLICKPASS_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def pip_calls(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip")]


@pytest.mark.parametrize("script", ["backup", "restore", "monitor"])
def test_an_environment_with_more_extras_is_used_as_it_is(tmp_path: Path, script: str) -> None:
    """
    The environment scripts/test installed (extras "dev") serves the
    operator's scripts, which need no extras: no reinstall, no pip.
    """
    venv, log = fake_venv(tmp_path, f"{setup_hash()} dev")
    result = run_script(script, venv, "--help")
    assert result.returncode == 0, result.stderr
    assert "installing" not in result.stderr and "warning" not in result.stderr
    assert pip_calls(log) == []
    assert (venv / ".clickpass-installed").read_text() == f"{setup_hash()} dev\n"


def test_run_accepts_a_dev_environment_too(tmp_path: Path) -> None:
    """scripts/run does not reinstall an environment holding more extras than it needs."""
    venv, log = fake_venv(tmp_path, f"{setup_hash()} dev")
    # twistd is absent from the fake environment: reaching the exec is enough.
    result = run_script("run", venv, "--help")
    assert "installing" not in result.stderr
    assert pip_calls(log) == []


def test_cron_scripts_never_reinstall_a_stale_environment(tmp_path: Path) -> None:
    """
    An environment installed from another setup.py: scripts/backup warns in
    one line and uses it as it is; it never runs pip nor rewrites the stamp.
    """
    venv, log = fake_venv(tmp_path, "0" * 64 + " dev")
    result = run_script("backup", venv, "--help")
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "installing" not in result.stderr
    assert pip_calls(log) == []
    assert (venv / ".clickpass-installed").read_text() == "0" * 64 + " dev\n"


def test_cron_scripts_never_install_a_missing_environment(tmp_path: Path) -> None:
    """With no installed environment, scripts/backup fails with one line saying how to install."""
    venv, log = fake_venv(tmp_path, None)
    result = run_script("backup", venv, "--help")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "no installed environment" in line and "_venv.sh" in line
    assert pip_calls(log) == []


def test_test_setup_installs_when_an_extra_is_missing(tmp_path: Path) -> None:
    """An environment without the "dev" extra is installed into when scripts/test needs it."""
    venv, log = fake_venv(tmp_path, setup_hash())
    result = subprocess.run(
        ["bash", "-c", "source scripts/_venv.sh dev"],
        cwd=ROOT,
        env={**os.environ, "CLICKPASS_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0  # pip is refused by the fake interpreter
    assert "installing" in result.stderr
    assert pip_calls(log) != []


def record_source(venv: Path, source: Path) -> Path:
    """Record, as pip does (PEP 610), that the environment's Clickpass is an editable
    install of C{source}; the record's path."""
    info = venv / "lib" / "python3.11" / "site-packages" / "clickpass-0.1.0.dist-info"
    info.mkdir(parents=True)
    record = info / "direct_url.json"
    record.write_text(json.dumps({"dir_info": {"editable": True}, "url": source.as_uri()}))
    return record


def source_venv(venv: Path, extras: str, **env: str) -> subprocess.CompletedProcess[str]:
    """What scripts/test does: source _venv.sh (here with a stale stamp: it wants to install)."""
    return subprocess.run(
        ["bash", "-c", f"source scripts/_venv.sh {extras}"],
        cwd=ROOT,
        env={**os.environ, "CLICKPASS_VENV": str(venv), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_environment_installed_from_another_checkout_is_not_repointed(
    tmp_path: Path,
) -> None:
    """
    A stale environment whose editable Clickpass comes from another checkout
    (a git worktree sharing the main checkout's through CLICKPASS_VENV): the
    scripts stop with one line naming both directories and the way to do it
    anyway; no pip, the stamp and the install record stay as they were.
    """
    other = tmp_path / "main checkout"
    other.mkdir()
    venv, log = fake_venv(tmp_path, "0" * 64 + " dev")
    record = record_source(venv, other)
    before = record.read_text()
    for result in (run_script("run", venv, "--help"), source_venv(venv, "dev")):
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert f"from {other}, not from this checkout ({ROOT})" in line
        assert "CLICKPASS_VENV_REPOINT=1" in line
        assert "installing into" not in result.stderr
    assert pip_calls(log) == []
    assert (venv / ".clickpass-installed").read_text() == "0" * 64 + " dev\n"
    assert record.read_text() == before


def test_repointing_another_checkouts_environment_when_asked(tmp_path: Path) -> None:
    """With CLICKPASS_VENV_REPOINT=1 the environment is installed from this checkout."""
    other = tmp_path / "main"
    other.mkdir()
    venv, log = fake_venv(tmp_path, "0" * 64 + " dev")
    record_source(venv, other)
    result = source_venv(venv, "dev", CLICKPASS_VENV_REPOINT="1")
    assert result.returncode != 0  # pip is refused by the fake interpreter
    assert "installing into" in result.stderr and "not from this checkout" not in result.stderr
    assert pip_calls(log) != []


def test_an_environment_installed_from_this_checkout_is_updated(tmp_path: Path) -> None:
    """An environment installed from this checkout (named through a symlink, too) is
    re-installed when stale, as before: nothing to ask."""
    link = tmp_path / "checkout"
    link.symlink_to(ROOT)
    venv, log = fake_venv(tmp_path, "0" * 64 + " dev")
    record_source(venv, link)
    result = source_venv(venv, "dev")
    assert "installing into" in result.stderr and "not from this checkout" not in result.stderr
    assert pip_calls(log) != []


@pytest.mark.parametrize(
    ("script", "call"),
    [
        ("bench-balancer", "-m devtools.bench_balancer --help"),
        ("bench-oidc", "-m devtools.bench_oidc --help"),
        ("bench-signin-flood", "-m devtools.bench_signin_flood --help"),
        ("bench-worker", "-m devtools.bench_worker --help"),
        ("bench-db-failover", f"{ROOT}/scripts/bench-db-failover --help"),
    ],
)
def test_benchmarks_run_on_the_environment_clickpass_venv_names(
    tmp_path: Path, script: str, call: str
) -> None:
    """The benchmarks run on CLICKPASS_VENV's interpreter, like the other scripts."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "python-calls.log"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/bash\necho "$*" >> {log}\n')
    python.chmod(0o755)
    result = run_script(script, venv, "--help")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [call]

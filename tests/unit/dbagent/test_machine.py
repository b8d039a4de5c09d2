"""
The database agent's role machine, driven input by input: only PROMOTING
reaches a writable state, every way out of PRIMARY or DEGRADED goes through
fencing, and no (state, input) pair raises.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from clickpass.dbagent import machine
from clickpass.dbagent.machine import AgentCore, AgentInputs, Role

INPUTS = (
    "server_up",
    "server_down",
    "elected",
    "demoted",
    "done",
    "failed",
    "errant",
    "peer_gone",
    "peer_back",
    "retry",
    "release",
    "reclone",
)


@dataclass
class Recorder:
    """The machine's outputs, in order."""

    calls: list[tuple[str, object]] = field(default_factory=list)

    def fence(self) -> None:
        self.calls.append(("fence", None))

    def rejoin(self, force: bool) -> None:
        self.calls.append(("rejoin", force))

    def promote(self) -> None:
        self.calls.append(("promote", None))

    def semisync(self, on: bool) -> None:
        self.calls.append(("semisync", on))

    def quarantine(self) -> None:
        self.calls.append(("quarantine", None))

    def copy_primary(self) -> None:
        self.calls.append(("copy_primary", None))

    def writable(self, on: bool) -> None:
        self.calls.append(("writable", on))

    def entered(self, role: Role) -> None:
        self.calls.append(("entered", role))

    def actions(self) -> list[tuple[str, object]]:
        return [c for c in self.calls if c[0] != "entered"]


def new() -> tuple[AgentInputs, AgentCore, Recorder]:
    recorder = Recorder()
    inputs, core = machine.build(recorder)
    return inputs, core, recorder


def feed(inputs: AgentInputs, *names: str) -> None:
    for name in names:
        getattr(inputs, name)()


def role(core: AgentCore) -> Role:
    return core.role


# The shortest path from STARTING to each state.
PATHS: dict[Role, tuple[str, ...]] = {
    Role.STARTING: (),
    Role.DOWN: ("server_down",),
    Role.FENCING: ("server_up",),
    Role.FENCED: ("server_up", "done"),
    Role.REJOINING: ("server_up", "done", "retry"),
    Role.REPLICA: ("server_up", "done", "retry", "done"),
    Role.PROMOTING: ("server_up", "done", "retry", "done", "elected"),
    Role.PRIMARY: ("server_up", "done", "retry", "done", "elected", "done"),
    Role.DEGRADED: ("server_up", "done", "retry", "done", "elected", "done", "peer_gone"),
    Role.DEMOTING: ("server_up", "done", "retry", "done", "elected", "done", "demoted"),
    Role.QUARANTINED: ("server_up", "done", "retry", "errant"),
    Role.RECLONING: ("server_up", "done", "retry", "errant", "reclone"),
}


@pytest.mark.parametrize("target", list(PATHS), ids=lambda r: r.value)
def test_every_state_is_reachable(target: Role) -> None:
    """Each role has a path from STARTING (the table above is right)."""
    inputs, core, _ = new()
    feed(inputs, *PATHS[target])
    assert role(core) == target


@pytest.mark.parametrize(
    ("start", "name"),
    list(itertools.product(PATHS, INPUTS)),
    ids=lambda v: str(getattr(v, "value", v)),
)
def test_no_input_raises_and_only_promoting_makes_writable(start: Role, name: str) -> None:
    """Any input in any state is answered; writable is entered only from PROMOTING or DEGRADED."""
    inputs, core, recorder = new()
    feed(inputs, *PATHS[start])
    before = len(recorder.calls)
    getattr(inputs, name)()
    after = role(core)
    if after.writable and not start.writable:
        assert start == Role.PROMOTING
        assert ("writable", True) in recorder.calls[before:]
    if start.writable and not after.writable:
        # Out of PRIMARY/DEGRADED: writes stop first, then the fence runs.
        assert after == Role.DEMOTING
        assert recorder.actions()[-2:] == [("writable", False), ("fence", None)]


def test_bootstrap_and_failover_path_calls_the_right_actions() -> None:
    """Up -> fence -> rejoin -> replica -> elected -> promote -> writable."""
    inputs, core, recorder = new()
    feed(inputs, "server_up", "done", "retry", "done", "elected", "done")
    assert role(core) == Role.PRIMARY
    assert recorder.actions() == [
        ("fence", None),
        ("rejoin", False),
        ("promote", None),
        ("writable", True),
    ]


def test_a_fenced_host_may_be_elected_to_bootstrap() -> None:
    """A pair with no primary: FENCED + elected goes to PROMOTING."""
    inputs, core, recorder = new()
    feed(inputs, "server_up", "done", "elected")
    assert role(core) == Role.PROMOTING
    assert recorder.actions()[-1] == ("promote", None)


def test_a_failed_promotion_fences_again() -> None:
    """A promotion that fails never leaves the host writable: it is fenced."""
    inputs, core, recorder = new()
    feed(inputs, *PATHS[Role.PROMOTING], "failed")
    assert role(core) == Role.FENCING
    assert ("writable", True) not in recorder.calls
    assert recorder.actions()[-1] == ("fence", None)


def test_demoted_or_server_down_while_primary_fences() -> None:
    """Losing the election or the local server makes the primary read-only via fencing."""
    for event in ("demoted", "server_down"):
        inputs, core, _ = new()
        feed(inputs, *PATHS[Role.PRIMARY], event)
        assert role(core) == Role.DEMOTING
        feed(inputs, "done")
        assert role(core) == Role.FENCED


def test_degraded_turns_semisync_off_and_back_on() -> None:
    """peer_gone: semi-sync off (DEGRADED); peer_back: on again (PRIMARY)."""
    inputs, core, recorder = new()
    feed(inputs, *PATHS[Role.PRIMARY], "peer_gone")
    assert role(core) == Role.DEGRADED
    assert recorder.actions()[-1] == ("semisync", False)
    feed(inputs, "peer_back")
    assert role(core) == Role.PRIMARY
    assert recorder.actions()[-1] == ("semisync", True)


def test_quarantine_waits_for_the_operator_and_forces_the_next_rejoin() -> None:
    """Errant: quarantined, deaf to retries and elections; release rejoins with force once."""
    inputs, core, recorder = new()
    feed(inputs, *PATHS[Role.QUARANTINED])
    assert recorder.actions()[-1] == ("quarantine", None)
    feed(inputs, "retry", "elected", "done", "peer_back")
    assert role(core) == Role.QUARANTINED
    feed(inputs, "release")
    assert role(core) == Role.REJOINING
    assert recorder.actions()[-1] == ("rejoin", True)
    feed(inputs, "failed", "retry")
    assert recorder.actions()[-1] == ("rejoin", False)


def test_broken_replication_goes_back_to_fenced_and_divergence_to_quarantine() -> None:
    """A replica whose applier stopped rejoins; one refused by the primary is quarantined."""
    inputs, core, _ = new()
    feed(inputs, *PATHS[Role.REPLICA], "failed")
    assert role(core) == Role.FENCED
    inputs, core, _ = new()
    feed(inputs, *PATHS[Role.REPLICA], "errant")
    assert role(core) == Role.QUARANTINED


def test_late_inputs_are_ignored() -> None:
    """An election while fencing, or a stray done while REPLICA, changes nothing."""
    inputs, core, recorder = new()
    feed(inputs, "server_up")
    calls = len(recorder.calls)
    feed(inputs, "elected", "peer_gone", "release")
    assert role(core) == Role.FENCING
    assert len(recorder.calls) == calls


def test_reclone_from_quarantine_rejoins_when_done_and_is_held_when_it_fails() -> None:
    """reclone: RECLONING; done: an ordinary rejoin (no force); failed: quarantined again."""
    inputs, core, recorder = new()
    feed(inputs, *PATHS[Role.QUARANTINED], "reclone")
    assert role(core) == Role.RECLONING
    assert recorder.actions()[-1] == ("copy_primary", None)
    feed(inputs, "retry", "elected", "release", "reclone")
    assert role(core) == Role.RECLONING  # deaf to everything but its own outcome
    feed(inputs, "done")
    assert role(core) == Role.REJOINING
    assert recorder.actions()[-1] == ("rejoin", False)
    inputs, core, recorder = new()
    feed(inputs, *PATHS[Role.REPLICA], "reclone", "failed")
    assert role(core) == Role.QUARANTINED
    assert recorder.actions()[-1] == ("quarantine", None)


def test_a_writable_or_promoting_host_is_never_recloned() -> None:
    """reclone in PROMOTING, PRIMARY or DEGRADED changes nothing."""
    for start in (Role.PROMOTING, Role.PRIMARY, Role.DEGRADED):
        inputs, core, recorder = new()
        feed(inputs, *PATHS[start])
        calls = len(recorder.calls)
        feed(inputs, "reclone")
        assert role(core) == start
        assert len(recorder.calls) == calls

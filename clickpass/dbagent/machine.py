"""
The database agent's state machine, one per database host.

States: STARTING, DOWN (the local server does not answer), FENCING,
FENCED (read-only, not replicating, waiting to rejoin), REJOINING, REPLICA,
PROMOTING, PRIMARY (writable, lossless semi-sync), DEGRADED (writable alone:
the group agreed the replica is gone), DEMOTING (a primary leaving its role),
QUARANTINED (errant transactions; an operator decides) and RECLONING (an
operator had the local data replaced by a copy of the primary's).

The inputs are decisions already taken by L{clickpass.dbagent.agent}
("elected", "the fence is done", "the replica is back"); the outputs call
the injected L{AgentActions}, which start the slow work outside the machine
and report back with another input.

This module must never do I/O or read a clock, and every (state, input)
pair has an answer, so no input can raise. Two rules hold in every path:
only PROMOTING reaches a writable state, and every way out of PRIMARY or
DEGRADED goes through fencing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from automat import TypeMachineBuilder


class Role(enum.Enum):
    STARTING = "starting"
    DOWN = "down"
    FENCING = "fencing"
    FENCED = "fenced"
    REJOINING = "rejoining"
    REPLICA = "replica"
    PROMOTING = "promoting"
    PRIMARY = "primary"
    DEGRADED = "degraded"
    DEMOTING = "demoting"
    QUARANTINED = "quarantined"
    RECLONING = "recloning"

    @property
    def writable(self) -> bool:
        return self in (Role.PRIMARY, Role.DEGRADED)


class AgentInputs(Protocol):
    def server_up(self) -> None:
        "The local server answers (after not answering, or at start)."

    def server_down(self) -> None:
        "The local server stopped answering (checks failed C{fall} times)."

    def elected(self) -> None:
        "The db group made this host MASTER, and an automatic failover is allowed."

    def demoted(self) -> None:
        "The db group is no longer MASTER here."

    def done(self) -> None:
        "The running operation (fence, rejoin, promotion, semi-sync change) succeeded."

    def failed(self) -> None:
        "The running operation failed or timed out."

    def errant(self) -> None:
        "The rejoin found transactions the primary lacks."

    def peer_gone(self) -> None:
        "The group agrees the replica is gone: the primary may go on alone."

    def peer_back(self) -> None:
        "The replica is back and acknowledging: lossless again."

    def retry(self) -> None:
        "A periodic nudge: try the pending step again (rejoin from FENCED)."

    def release(self) -> None:
        "The operator released a quarantine (rejoin --force)."

    def reclone(self) -> None:
        "The operator asked for the local data to be replaced by a copy of the primary's."


class AgentActions(Protocol):
    def fence(self) -> None: ...

    def rejoin(self, force: bool) -> None: ...

    def promote(self) -> None: ...

    def semisync(self, on: bool) -> None: ...

    def quarantine(self) -> None: ...

    def copy_primary(self) -> None: ...

    def writable(self, on: bool) -> None: ...

    def entered(self, role: Role) -> None: ...


@dataclass
class AgentCore:
    actions: AgentActions
    role: Role = Role.STARTING
    force_next_rejoin: bool = False

    def enter(self, role: Role) -> None:
        self.role = role
        self.actions.entered(role)


builder = TypeMachineBuilder(AgentInputs, AgentCore)
starting = builder.state("starting")
down = builder.state("down")
fencing = builder.state("fencing")
fenced = builder.state("fenced")
rejoining = builder.state("rejoining")
replica = builder.state("replica")
promoting = builder.state("promoting")
primary = builder.state("primary")
degraded = builder.state("degraded")
demoting = builder.state("demoting")
quarantined = builder.state("quarantined")
recloning = builder.state("recloning")

_defined: set[tuple[str, str]] = set()


def _mark(state_name: str, *inputs: str) -> None:
    for name in inputs:
        _defined.add((state_name, name))


def _start_fence(inputs: AgentInputs, core: AgentCore) -> None:
    core.enter(Role.FENCING)
    core.actions.fence()


def _to_down(inputs: AgentInputs, core: AgentCore) -> None:
    core.enter(Role.DOWN)


def _start_rejoin(inputs: AgentInputs, core: AgentCore) -> None:
    force, core.force_next_rejoin = core.force_next_rejoin, False
    core.enter(Role.REJOINING)
    core.actions.rejoin(force)


# STARTING and DOWN: a server that (re)appears is fenced before anything else.
starting.upon(AgentInputs.server_up).to(fencing)(_start_fence)
starting.upon(AgentInputs.server_down).to(down)(_to_down)
down.upon(AgentInputs.server_up).to(fencing)(_start_fence)
_mark("starting", "server_up", "server_down")
_mark("down", "server_up")


# FENCING
fencing.upon(AgentInputs.done).to(fenced)(lambda i, core: core.enter(Role.FENCED))
fencing.upon(AgentInputs.failed).to(down)(_to_down)
fencing.upon(AgentInputs.server_down).to(down)(_to_down)
_mark("fencing", "done", "failed", "server_down")


# FENCED: read-only; rejoin when nudged.
fenced.upon(AgentInputs.retry).to(rejoining)(_start_rejoin)
fenced.upon(AgentInputs.server_down).to(down)(_to_down)
_mark("fenced", "retry", "server_down", "elected")


# REJOINING
rejoining.upon(AgentInputs.done).to(replica)(lambda i, core: core.enter(Role.REPLICA))
rejoining.upon(AgentInputs.failed).to(fenced)(lambda i, core: core.enter(Role.FENCED))


@rejoining.upon(AgentInputs.errant).to(quarantined)
def _quarantine(inputs: AgentInputs, core: AgentCore) -> None:
    core.enter(Role.QUARANTINED)
    core.actions.quarantine()


rejoining.upon(AgentInputs.server_down).to(down)(_to_down)
_mark("rejoining", "done", "failed", "errant", "server_down")


# REPLICA


@replica.upon(AgentInputs.elected).to(promoting)
def _promote(inputs: AgentInputs, core: AgentCore) -> None:
    core.enter(Role.PROMOTING)
    core.actions.promote()


# A FENCED host is elected only to bootstrap a pair that has no primary;
# the promotion checks the peer is read-only and not ahead before it acts.
fenced.upon(AgentInputs.elected).to(promoting)(_promote)
replica.upon(AgentInputs.server_down).to(down)(_to_down)
# A replica whose replication broke (the check says so) goes back to FENCED
# and rejoins; one whose history cannot go on from the primary's (a GTID
# error: 1236 from the primary, 1950 out-of-order in the applier) is errant.
replica.upon(AgentInputs.failed).to(fenced)(lambda i, core: core.enter(Role.FENCED))
replica.upon(AgentInputs.errant).to(quarantined)(_quarantine)
_mark("replica", "elected", "server_down", "failed", "errant")


# PROMOTING: the only way to a writable state.


@promoting.upon(AgentInputs.done).to(primary)
def _promoted(inputs: AgentInputs, core: AgentCore) -> None:
    core.enter(Role.PRIMARY)
    core.actions.writable(True)


@promoting.upon(AgentInputs.peer_gone).to(promoting)
def _promoting_alone(inputs: AgentInputs, core: AgentCore) -> None:
    # Recorded by the agent; the promotion itself chose semi-sync or not.
    return None


promoting.upon(AgentInputs.failed).to(fencing)(_start_fence)
promoting.upon(AgentInputs.demoted).to(fencing)(_start_fence)
promoting.upon(AgentInputs.server_down).to(fencing)(_start_fence)
_mark("promoting", "done", "peer_gone", "failed", "demoted", "server_down")


# PRIMARY and DEGRADED: every way out goes through fencing.


def _demote(inputs: AgentInputs, core: AgentCore) -> None:
    core.actions.writable(False)
    core.enter(Role.DEMOTING)
    core.actions.fence()


@primary.upon(AgentInputs.peer_gone).to(degraded)
def _go_alone(inputs: AgentInputs, core: AgentCore) -> None:
    core.enter(Role.DEGRADED)
    core.actions.semisync(False)


primary.upon(AgentInputs.demoted).to(demoting)(_demote)
primary.upon(AgentInputs.server_down).to(demoting)(_demote)
_mark("primary", "peer_gone", "demoted", "server_down")


@degraded.upon(AgentInputs.peer_back).to(primary)
def _lossless_again(inputs: AgentInputs, core: AgentCore) -> None:
    core.enter(Role.PRIMARY)
    core.actions.semisync(True)


degraded.upon(AgentInputs.demoted).to(demoting)(_demote)
degraded.upon(AgentInputs.server_down).to(demoting)(_demote)
_mark("degraded", "peer_back", "demoted", "server_down")


# DEMOTING: a former primary being fenced.
demoting.upon(AgentInputs.done).to(fenced)(lambda i, core: core.enter(Role.FENCED))
demoting.upon(AgentInputs.failed).to(down)(_to_down)
_mark("demoting", "done", "failed")


# QUARANTINED: only an operator lets it out.


@quarantined.upon(AgentInputs.release).to(rejoining)
def _released(inputs: AgentInputs, core: AgentCore) -> None:
    core.force_next_rejoin = True
    _start_rejoin(inputs, core)


quarantined.upon(AgentInputs.server_down).to(down)(_to_down)
_mark("quarantined", "release", "server_down")


# RECLONING: from a host that is not (and is not becoming) writable. Done:
# the copy holds the primary's history, so the ordinary rejoin follows.
# Failed: the data may be half-copied, so it is held for the operator.


def _start_reclone(inputs: AgentInputs, core: AgentCore) -> None:
    core.enter(Role.RECLONING)
    core.actions.copy_primary()


quarantined.upon(AgentInputs.reclone).to(recloning)(_start_reclone)
replica.upon(AgentInputs.reclone).to(recloning)(_start_reclone)
fenced.upon(AgentInputs.reclone).to(recloning)(_start_reclone)
_mark("quarantined", "reclone")
_mark("replica", "reclone")
_mark("fenced", "reclone")
recloning.upon(AgentInputs.done).to(rejoining)(_start_rejoin)
recloning.upon(AgentInputs.failed).to(quarantined)(_quarantine)
recloning.upon(AgentInputs.server_down).to(down)(_to_down)
_mark("recloning", "done", "failed", "server_down")


# Everything else is ignored: a late "done", an election while fencing, and so on.
_STATES = {
    "starting": starting,
    "down": down,
    "fencing": fencing,
    "fenced": fenced,
    "rejoining": rejoining,
    "replica": replica,
    "promoting": promoting,
    "primary": primary,
    "degraded": degraded,
    "demoting": demoting,
    "quarantined": quarantined,
    "recloning": recloning,
}
_INPUT_NAMES = (
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
for _state_name, _state in _STATES.items():
    for _input_name in _INPUT_NAMES:
        if (_state_name, _input_name) not in _defined:
            _state.upon(getattr(AgentInputs, _input_name)).loop().returns(None)

_factory = builder.build()


def build(actions: AgentActions) -> tuple[AgentInputs, AgentCore]:
    """A new machine in STARTING, and its core (which tells the current role)."""
    core = AgentCore(actions)
    return _factory(core), core


__all__ = ["AgentActions", "AgentCore", "AgentInputs", "Role", "build"]

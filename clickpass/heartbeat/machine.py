"""
The state machine of one heartbeat group, in the spirit of VRRP (RFC 5798).

States: INIT, BACKUP, CANDIDATE (waiting for the witness's vote), MASTER,
HANDOVER (a planned switchover: still holding the VIP, advertising priority
0 until the peer is MASTER), FAULT and STOPPED. Inputs are already-decided
events ("a stronger master was heard", "the master-down timer fired"); the
decisions that need numbers (priorities, timers, preemption rules) live in
L{clickpass.heartbeat.group}, which feeds this machine.

This module must never do I/O or read a clock: every output calls the
injected L{GroupActions}, and every (state, input) pair has a defined
answer, so no input can raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from automat import TypeMachineBuilder

from clickpass.heartbeat.wire import State


class GroupInputs(Protocol):
    """What can happen to a group."""

    def start(self) -> None:
        "The group starts (from INIT)."

    def master_down(self) -> None:
        "The master-down timer fired and no witness vote is needed."

    def seek_vote(self) -> None:
        "The master-down timer fired and the witness must agree first."

    def vote_granted(self) -> None:
        "The witness agreed to our takeover."

    def vote_refused(self) -> None:
        "The witness refused, or did not answer in time."

    def heard_stronger_master(self) -> None:
        "A master that outranks us advertised."

    def heard_weaker_master(self) -> None:
        "A master we outrank advertised, and we may not (or need not) preempt it."

    def preempt(self) -> None:
        "A master we outrank advertised and preemption is allowed now."

    def heard_resign(self) -> None:
        "The master advertised priority 0: it is leaving."

    def fault(self) -> None:
        "A health check that faults the group failed."

    def recovered(self) -> None:
        "Every faulting health check passes again."

    def switchover(self) -> None:
        "The operator asked the master to hand the VIP to its peer."

    def handover_timeout(self) -> None:
        "No peer took over during a switchover."

    def step_down(self) -> None:
        "Lost quorum (nobody hears us): leave MASTER (or CANDIDATE) for BACKUP."

    def step_aside(self) -> None:
        "Maintenance: leave MASTER (or CANDIDATE) for BACKUP, a planned move."

    def shutdown(self) -> None:
        "The node is stopping cleanly."


class GroupActions(Protocol):
    """The side effects the machine asks for; implemented outside it."""

    def arm_down_timer(self, resign: bool) -> None: ...

    def cancel_down_timer(self) -> None: ...

    def send_advert(self) -> None: ...

    def send_resign(self) -> None: ...

    def take_vip(self) -> None: ...

    def release_vip(self) -> None: ...

    def hand_off_vip(self) -> None: ...

    def announce(self) -> None: ...

    def request_vote(self) -> None: ...

    def arm_handover_timer(self) -> None: ...

    def cancel_handover_timer(self) -> None: ...

    def entered(self, state: State) -> None: ...


@dataclass
class GroupCore:
    """What the machine's outputs act on."""

    actions: GroupActions
    state: State = State.INIT

    def enter(self, state: State) -> None:
        self.state = state
        self.actions.entered(state)


builder = TypeMachineBuilder(GroupInputs, GroupCore)
init = builder.state("init")
backup = builder.state("backup")
candidate = builder.state("candidate")
master = builder.state("master")
handover = builder.state("handover")
fault = builder.state("fault")
stopped = builder.state("stopped")

_defined: set[tuple[str, str]] = set()


def _mark(state_name: str, *inputs: str) -> None:
    for name in inputs:
        _defined.add((state_name, name))


# INIT


@init.upon(GroupInputs.start).to(backup)
def _start(inputs: GroupInputs, core: GroupCore) -> None:
    # A VIP of ours left on the interface by a previous run is stale.
    core.actions.release_vip()
    core.actions.arm_down_timer(False)
    core.enter(State.BACKUP)


@init.upon(GroupInputs.shutdown).to(stopped)
def _init_stop(inputs: GroupInputs, core: GroupCore) -> None:
    core.state = State.INIT


_mark("init", "start", "shutdown")


# BACKUP


def _become_master(core: GroupCore) -> None:
    # take_vip announces MASTER to the peers once the address is up.
    core.actions.cancel_down_timer()
    core.enter(State.MASTER)
    core.actions.take_vip()


def _rearm(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.arm_down_timer(False)


@backup.upon(GroupInputs.master_down).to(master)
def _backup_takes_over(inputs: GroupInputs, core: GroupCore) -> None:
    _become_master(core)


@backup.upon(GroupInputs.preempt).to(master)
def _backup_preempts(inputs: GroupInputs, core: GroupCore) -> None:
    _become_master(core)


@backup.upon(GroupInputs.seek_vote).to(candidate)
def _backup_seeks_vote(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.request_vote()
    core.enter(State.CANDIDATE)


backup.upon(GroupInputs.heard_stronger_master).loop()(_rearm)
backup.upon(GroupInputs.heard_weaker_master).loop()(_rearm)


@backup.upon(GroupInputs.heard_resign).loop()
def _backup_hears_resign(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.arm_down_timer(True)


def _enter_fault_without_vip(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.cancel_down_timer()
    core.enter(State.FAULT)


backup.upon(GroupInputs.fault).to(fault)(_enter_fault_without_vip)


def _stop_without_vip(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.cancel_down_timer()
    core.actions.cancel_handover_timer()
    core.state = State.INIT


backup.upon(GroupInputs.shutdown).to(stopped)(_stop_without_vip)
_mark(
    "backup",
    "master_down",
    "preempt",
    "seek_vote",
    "heard_stronger_master",
    "heard_weaker_master",
    "heard_resign",
    "fault",
    "shutdown",
)


# CANDIDATE


@candidate.upon(GroupInputs.vote_granted).to(master)
def _candidate_wins(inputs: GroupInputs, core: GroupCore) -> None:
    _become_master(core)


@candidate.upon(GroupInputs.preempt).to(master)
def _candidate_preempts(inputs: GroupInputs, core: GroupCore) -> None:
    _become_master(core)


def _back_to_backup(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.arm_down_timer(False)
    core.enter(State.BACKUP)


candidate.upon(GroupInputs.vote_refused).to(backup)(_back_to_backup)
candidate.upon(GroupInputs.heard_stronger_master).to(backup)(_back_to_backup)
candidate.upon(GroupInputs.heard_weaker_master).to(backup)(_back_to_backup)
candidate.upon(GroupInputs.step_down).to(backup)(_back_to_backup)
candidate.upon(GroupInputs.step_aside).to(backup)(_back_to_backup)
candidate.upon(GroupInputs.fault).to(fault)(_enter_fault_without_vip)
candidate.upon(GroupInputs.shutdown).to(stopped)(_stop_without_vip)
_mark(
    "candidate",
    "vote_granted",
    "preempt",
    "vote_refused",
    "heard_stronger_master",
    "heard_weaker_master",
    "step_down",
    "step_aside",
    "fault",
    "shutdown",
)


# MASTER


def _master_to_backup(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.release_vip()
    core.actions.arm_down_timer(False)
    core.enter(State.BACKUP)


def _master_yields(inputs: GroupInputs, core: GroupCore) -> None:
    # A peer claims MASTER (and claims it only once the address answers
    # there): a planned move, so the requests in flight here may finish.
    core.actions.hand_off_vip()
    core.actions.arm_down_timer(False)
    core.enter(State.BACKUP)


master.upon(GroupInputs.heard_stronger_master).to(backup)(_master_yields)


@master.upon(GroupInputs.step_down).to(backup)
def _master_steps_down(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.send_resign()
    _master_to_backup(inputs, core)


@master.upon(GroupInputs.step_aside).to(backup)
def _master_steps_aside(inputs: GroupInputs, core: GroupCore) -> None:
    # Planned, as a switchover: the requests in flight here may finish
    # (the address parked for the drain, bridged to by the peer that takes it).
    core.actions.send_resign()
    _master_yields(inputs, core)


def _split_brain_won(inputs: GroupInputs, core: GroupCore) -> None:
    # Both are MASTER and we outrank the other: say so at once and refresh
    # every neighbour's ARP cache, which may point at the loser.
    core.actions.announce()


master.upon(GroupInputs.heard_weaker_master).loop()(_split_brain_won)
master.upon(GroupInputs.preempt).loop()(_split_brain_won)


@master.upon(GroupInputs.heard_resign).loop()
def _master_hears_resign(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.send_advert()


@master.upon(GroupInputs.fault).to(fault)
def _master_faults(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.send_resign()
    core.actions.release_vip()
    core.enter(State.FAULT)


@master.upon(GroupInputs.switchover).to(handover)
def _master_hands_over(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.send_resign()
    core.actions.arm_handover_timer()
    core.enter(State.HANDOVER)


@master.upon(GroupInputs.shutdown).to(stopped)
def _master_stops(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.send_resign()
    core.actions.release_vip()
    core.state = State.INIT


_mark(
    "master",
    "heard_stronger_master",
    "step_down",
    "step_aside",
    "heard_weaker_master",
    "preempt",
    "heard_resign",
    "fault",
    "switchover",
    "shutdown",
)


# HANDOVER: we keep the VIP until the peer is MASTER, so there is no gap.


def _handover_done(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.cancel_handover_timer()
    _master_yields(inputs, core)


def _handover_steps_down(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.cancel_handover_timer()
    _master_to_backup(inputs, core)


handover.upon(GroupInputs.heard_stronger_master).to(backup)(_handover_done)
handover.upon(GroupInputs.heard_weaker_master).to(backup)(_handover_done)
handover.upon(GroupInputs.step_down).to(backup)(_handover_steps_down)
handover.upon(GroupInputs.step_aside).to(backup)(_handover_done)


@handover.upon(GroupInputs.handover_timeout).to(master)
def _handover_failed(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.send_advert()
    core.enter(State.MASTER)


@handover.upon(GroupInputs.fault).to(fault)
def _handover_faults(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.cancel_handover_timer()
    core.actions.release_vip()
    core.enter(State.FAULT)


@handover.upon(GroupInputs.shutdown).to(stopped)
def _handover_stops(inputs: GroupInputs, core: GroupCore) -> None:
    core.actions.cancel_handover_timer()
    core.actions.send_resign()
    core.actions.release_vip()
    core.state = State.INIT


_mark(
    "handover",
    "heard_stronger_master",
    "heard_weaker_master",
    "step_down",
    "step_aside",
    "handover_timeout",
    "fault",
    "shutdown",
)


# FAULT


fault.upon(GroupInputs.recovered).to(backup)(_back_to_backup)
fault.upon(GroupInputs.shutdown).to(stopped)(_stop_without_vip)
_mark("fault", "recovered", "shutdown")

_mark("init", "fault")
init.upon(GroupInputs.fault).loop().returns(None)


# Everything else is ignored: late votes, adverts while FAULT, and so on.
_STATES = {
    "init": init,
    "backup": backup,
    "candidate": candidate,
    "master": master,
    "handover": handover,
    "fault": fault,
    "stopped": stopped,
}
_INPUTS = {
    name: getattr(GroupInputs, name)
    for name in (
        "start",
        "master_down",
        "seek_vote",
        "vote_granted",
        "vote_refused",
        "heard_stronger_master",
        "heard_weaker_master",
        "preempt",
        "heard_resign",
        "fault",
        "recovered",
        "switchover",
        "handover_timeout",
        "step_down",
        "step_aside",
        "shutdown",
    )
}
for _state_name, _state in _STATES.items():
    for _input_name, _input in _INPUTS.items():
        if (_state_name, _input_name) not in _defined:
            _state.upon(_input).loop().returns(None)

_factory = builder.build()


def build(actions: GroupActions) -> tuple[GroupInputs, GroupCore]:
    """A new machine in INIT, and its core (which tells the current state)."""
    core = GroupCore(actions)
    return _factory(core), core


__all__ = ["GroupActions", "GroupCore", "GroupInputs", "build"]

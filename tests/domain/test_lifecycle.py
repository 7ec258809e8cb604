"""The lifecycle rules, as plain functions (no database)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kubekvm import lifecycle
from kubekvm.models import DesiredState, ObservedState, Phase, Power

D, S = DesiredState, ObservedState


@dataclass
class M:
    observed: ObservedState
    desired: DesiredState = D.RUNNING
    name: str = "lab-1"
    message: str = ""
    power_generation: int = 1
    observed_power_generation: int | None = 1


def phase(machines: list[M], *, power: Power = Power.RUNNING, deleting: bool = False) -> Phase:
    return lifecycle.lab_phase(deleting=deleting, power=power, machines=machines).phase


def test_new_lab_is_pending_until_every_machine_runs() -> None:
    assert phase([M(S.PENDING)] * 3) == Phase.PENDING
    assert phase([M(S.RUNNING), M(S.RUNNING), M(S.PENDING)]) == Phase.PENDING
    assert phase([M(S.RUNNING)] * 3) == Phase.ACTIVE


def test_every_machine_shut_off_makes_the_lab_inactive() -> None:
    assert phase([M(S.SHUTOFF)] * 3) == Phase.INACTIVE


def test_some_students_powering_off_keeps_an_active_lab_active() -> None:
    decision = lifecycle.lab_phase(deleting=False, power=Power.RUNNING,
                                   machines=[M(S.RUNNING), M(S.SHUTOFF)])
    assert decision.phase == Phase.ACTIVE
    assert "1 powered off" in decision.message


def test_shutoff_before_the_start_request_is_acknowledged_is_still_pending() -> None:
    # A host that has defined but not yet started the VM reports shutoff: not "powered off".
    not_started = M(S.SHUTOFF, power_generation=2, observed_power_generation=1)
    assert phase([not_started, M(S.SHUTOFF)]) == Phase.PENDING
    assert phase([M(S.RUNNING), not_started]) == Phase.PENDING


def test_a_shutoff_report_without_a_generation_is_not_powered_off_by_students() -> None:
    # "Start all", then an agent's event about a domain it had not reported (no generation yet):
    # the lab must not say "Active: 1/3 running (2 powered off by students)" while they start.
    unreported = M(S.SHUTOFF, power_generation=2, observed_power_generation=None)
    decision = lifecycle.lab_phase(deleting=False, power=Power.RUNNING,
                                   machines=[M(S.RUNNING, power_generation=2, observed_power_generation=2),
                                             unreported, unreported])
    assert decision.phase == Phase.PENDING
    assert decision.message == "1/3 running, 2 starting"
    assert "powered off" not in decision.message


def test_the_pending_message_counts_each_step_and_names_what_the_first_made_waits_for() -> None:
    decision = lifecycle.lab_phase(deleting=False, power=Power.RUNNING, machines=[
        M(S.RUNNING), M(S.PENDING, name="lab-2", message="creating: cloning the disk"),
        M(S.SHUTOFF, power_generation=2), M(S.SHUTOFF)])
    assert decision.message == "1/4 running, 1 being made, 1 starting, 1 powered off by students" \
        " — lab-2: creating: cloning the disk"


def test_a_lab_being_deleted_says_what_it_waits_for_not_how_many_run() -> None:
    assert lifecycle.lab_phase(deleting=True, power=Power.RUNNING, machines=[M(S.RUNNING)] * 2).message \
        == "removing 2 machine(s) from their hosts"
    assert lifecycle.lab_phase(deleting=True, power=Power.RUNNING, machines=[]).message == "removing the lab"


def test_stopping_lab_is_pending_until_all_are_off() -> None:
    assert phase([M(S.RUNNING, D.STOPPED), M(S.SHUTOFF, D.STOPPED)], power=Power.STOPPED) == Phase.PENDING
    assert phase([M(S.SHUTOFF, D.STOPPED)] * 2, power=Power.STOPPED) == Phase.INACTIVE


def test_an_error_fails_the_lab_with_the_hosts_message() -> None:
    decision = lifecycle.lab_phase(deleting=False, power=Power.RUNNING, machines=[
        M(S.RUNNING), M(S.ERROR, name="lab-2", message="base image winxp.qcow2 not found")])
    assert decision.phase == Phase.FAILED
    assert decision.message == "lab-2: base image winxp.qcow2 not found"


def test_machines_being_removed_do_not_count() -> None:
    assert phase([M(S.RUNNING), M(S.ERROR, D.ABSENT)]) == Phase.ACTIVE


def test_deleting_wins_over_everything() -> None:
    assert phase([M(S.RUNNING)], deleting=True) == Phase.DELETING


@pytest.mark.parametrize(("existing", "replicas", "create", "revive", "retire"), [
    ({}, 3, [1, 2, 3], [], []),
    ({1: D.RUNNING, 2: D.RUNNING, 3: D.RUNNING}, 1, [], [], [2, 3]),
    ({1: D.RUNNING, 2: D.ABSENT, 3: D.ABSENT}, 3, [], [2, 3], []),
    ({1: D.STOPPED, 2: D.ABSENT}, 4, [3, 4], [2], []),
])
def test_scale_retires_highest_indexes_and_revives_before_creating(
        existing: dict[int, DesiredState], replicas: int, create: list[int], revive: list[int],
        retire: list[int]) -> None:
    plan = lifecycle.scale(existing=existing, replicas=replicas)
    assert (plan.create, plan.revive, plan.retire) == (create, revive, retire)


def test_machine_documents_go_only_when_the_host_confirms_absent() -> None:
    assert lifecycle.machine_gone(desired=D.ABSENT, observed=S.ABSENT)
    assert not lifecycle.machine_gone(desired=D.ABSENT, observed=S.SHUTOFF)
    assert not lifecycle.machine_gone(desired=D.RUNNING, observed=S.ABSENT)


def test_no_machine_action_while_deleting() -> None:
    assert lifecycle.can_act_on_machine(phase=Phase.DELETING, desired=D.RUNNING)
    assert lifecycle.can_act_on_machine(phase=Phase.ACTIVE, desired=D.ABSENT)
    assert lifecycle.can_act_on_machine(phase=Phase.ACTIVE, desired=D.STOPPED) is None

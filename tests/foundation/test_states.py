"""The state machine table: every edge allowed, every other pair refused."""

from __future__ import annotations

import itertools

import pytest

from smolbox.errors import InvalidTransitionError
from smolbox.store.states import (
    TRANSITIONS,
    MachineState,
    check_transition,
    is_allowed,
    reachable_states,
    require_state,
)

S = MachineState
EXPECTED = {
    (S.CREATING, S.RUNNING), (S.CREATING, S.STOPPED), (S.CREATING, S.ERROR),
    (S.CREATING, S.DELETED),
    (S.RUNNING, S.PAUSED), (S.RUNNING, S.STOPPED), (S.RUNNING, S.ERROR),
    (S.PAUSED, S.RUNNING), (S.PAUSED, S.STOPPED), (S.PAUSED, S.ERROR),
    (S.STOPPED, S.RUNNING), (S.STOPPED, S.ERROR), (S.STOPPED, S.DELETED),
    (S.ERROR, S.STOPPED), (S.ERROR, S.DELETED),
}


def test_values_are_the_stored_strings() -> None:
    assert [s.value for s in S] == ["creating", "running", "paused", "stopped", "error",
                                    "deleted"]
    assert S("paused") is S.PAUSED


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
def test_every_pair_matches_the_table(source: MachineState, target: MachineState) -> None:
    allowed = (source, target) in EXPECTED
    assert is_allowed(source, target) is allowed
    if allowed:
        assert check_transition("vm", source, target) is target
    else:
        with pytest.raises(InvalidTransitionError) as caught:
            check_transition("vm", source, target)
        assert (caught.value.vm_id, caught.value.from_state, caught.value.to_state) == (
            "vm", source.value, target.value)


def test_table_is_exactly_the_expected_edges() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == EXPECTED
    assert TRANSITIONS[S.DELETED] == frozenset()


def test_running_machine_cannot_be_deleted_directly() -> None:
    with pytest.raises(InvalidTransitionError):
        check_transition("vm", "running", "deleted")
    check_transition("vm", "running", "stopped")
    check_transition("vm", "stopped", "deleted")


def test_strings_accepted_and_unknown_state_is_a_catalogue_error() -> None:
    assert check_transition("vm", "creating", "running") is S.RUNNING
    with pytest.raises(InvalidTransitionError) as caught:
        check_transition("vm", "exploded", "running")
    assert caught.value.from_state == "exploded"
    with pytest.raises(InvalidTransitionError):
        check_transition("vm", "running", "flying")
    assert not is_allowed("running", "flying")


def test_require_state_names_the_operation() -> None:
    assert require_state("vm", "running", {S.RUNNING}, "exec") is S.RUNNING
    with pytest.raises(InvalidTransitionError) as caught:
        require_state("vm", S.PAUSED, {S.RUNNING}, "exec")
    err = caught.value
    assert (err.from_state, err.to_state) == ("paused", "exec")
    assert "exec needs it to be running" in err.message
    assert err.help


def test_every_state_is_reachable_from_creating() -> None:
    assert reachable_states() == frozenset(S)
    assert reachable_states(S.DELETED) == {S.DELETED}

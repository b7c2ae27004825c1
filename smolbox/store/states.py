"""The machine state machine: every allowed transition, in one table.

Why one table: the CLI, the REST server, the SDK and crash recovery all move
machines between states. If each of them encoded its own idea of "allowed", they
would drift; here there is exactly one answer, and the store consults it inside
its write transaction against the row's *current* state, so two processes racing
on the same machine cannot both win an impossible transition.

Deleting a running machine is not a direct edge: the engine stops it first
(running -> stopped -> deleted), so "deleted" always means "nothing left running".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType

from smolbox.errors import InvalidTransitionError

__all__ = [
    "ACTIVE_STATES",
    "TRANSITIONS",
    "MachineState",
    "check_transition",
    "is_allowed",
    "reachable_states",
    "require_state",
]


class MachineState(StrEnum):
    """Lifecycle states of a machine, stored as their string values."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"
    DELETED = "deleted"


_S = MachineState

#: from-state -> the states it may move to. ``deleted`` is terminal.
TRANSITIONS: Mapping[MachineState, frozenset[MachineState]] = MappingProxyType({
    _S.CREATING: frozenset({_S.RUNNING, _S.STOPPED, _S.ERROR, _S.DELETED}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.STOPPED, _S.ERROR}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.STOPPED, _S.ERROR}),
    _S.STOPPED: frozenset({_S.RUNNING, _S.ERROR, _S.DELETED}),
    _S.ERROR: frozenset({_S.STOPPED, _S.DELETED}),
    _S.DELETED: frozenset(),
})

#: States in which a VMM process may exist (reconcile checks these against the host).
ACTIVE_STATES: frozenset[MachineState] = frozenset({_S.CREATING, _S.RUNNING, _S.PAUSED})


def _coerce(vm_id: str, value: MachineState | str, to_state: str) -> MachineState:
    """Accept stored strings, but reject unknown states with a catalogue error."""
    try:
        return MachineState(value)
    except ValueError:
        raise InvalidTransitionError(
            vm_id, str(value), to_state, message=f"Machine '{vm_id}' has unknown state {value!r}"
        ) from None


def _id_details(name: str, machine_id: str | None) -> dict[str, str]:
    return {"id": machine_id} if machine_id is not None and machine_id != name else {}


def is_allowed(from_state: MachineState | str, to_state: MachineState | str) -> bool:
    """True when the table has the edge ``from_state -> to_state``."""
    try:
        return MachineState(to_state) in TRANSITIONS[MachineState(from_state)]
    except ValueError:
        return False


def check_transition(vm_id: str, from_state: MachineState | str,
                     to_state: MachineState | str, *, machine_id: str | None = None
                     ) -> MachineState:
    """Return ``to_state`` as a :class:`MachineState` or raise InvalidTransitionError."""
    source = _coerce(vm_id, from_state, str(to_state))
    target = _coerce(vm_id, to_state, str(to_state))
    if target not in TRANSITIONS[source]:
        raise InvalidTransitionError(vm_id, source.value, target.value,
                                     details=_id_details(vm_id, machine_id))
    return target


def require_state(vm_id: str, current: MachineState | str, allowed: Iterable[MachineState],
                  operation: str, *, machine_id: str | None = None) -> MachineState:
    """Guard an operation that does not change state (e.g. exec needs ``running``).

    Raises InvalidTransitionError whose ``to_state`` names the operation, so the
    user sees "cannot go from paused to exec" plus help on how to get there.
    ``vm_id`` is what the user calls the machine (its name); the internal id, when
    it differs, goes into ``details["id"]``.
    """
    allowed_set = frozenset(allowed)
    state = _coerce(vm_id, current, operation)
    if state not in allowed_set:
        wanted = " or ".join(sorted(s.value for s in allowed_set)) or "no state"
        raise InvalidTransitionError(
            vm_id, state.value, operation,
            message=(f"Machine '{vm_id}' is {state.value}; {operation} needs it to be {wanted}"),
            details=_id_details(vm_id, machine_id),
        )
    return state


def reachable_states(start: MachineState = MachineState.CREATING) -> frozenset[MachineState]:
    """Every state reachable from ``start`` through the table (used by property tests)."""
    seen = {start}
    frontier = [start]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return frozenset(seen)

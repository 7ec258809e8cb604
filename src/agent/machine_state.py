"""Machine state: the words the server and the agent use for what a machine should be and is.

Desired states come from the server's assignments; observed states are what the agent reads
from libvirt and reports with ``reportMachineStates``. Both travel in lower case inside the
agent and as the upper-case GraphQL enum values on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

DesiredState = Literal["running", "stopped", "absent"]
ObservedState = Literal["running", "shutoff", "paused", "crashed", "pending", "absent", "error"]

DESIRED_STATES: Final = frozenset(get_args(DesiredState))
OBSERVED_STATES: Final = frozenset(get_args(ObservedState))


@dataclass(frozen=True, slots=True)
class StateReport:
    """One machine's report (``reportMachineStates``): what the machine is, why, and the latest start/stop request
    carried out on it as recorded in its domain (None: this report does not know it, and the
    server keeps what it had). The generation is what lets the server tell "not started yet"
    from "a student powered it off"."""

    machine_id: str
    state: ObservedState
    message: str | None = None
    power_generation: int | None = None
    # The guest's cumulative CPU time in seconds (libvirt), sent every CPU sample interval
    # while it runs: the server's idle shutdown reads the load from its increase.
    cpu_seconds: float | None = None

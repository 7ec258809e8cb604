"""Machine state: the words the server and the agent use for what a machine should be and is.

Desired states come from the server's assignments; observed states are what the agent reads
from libvirt and reports with ``reportMachineState``. Both travel in lower case inside the
agent and as the upper-case GraphQL enum values on the wire.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

DesiredState = Literal["running", "stopped", "absent"]
ObservedState = Literal["running", "shutoff", "paused", "crashed", "pending", "absent", "error"]

DESIRED_STATES: Final = frozenset(get_args(DesiredState))
OBSERVED_STATES: Final = frozenset(get_args(ObservedState))

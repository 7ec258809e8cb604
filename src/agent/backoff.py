"""Backoff: how long the agent waits before trying again something that just failed.

Used for the server link (reconnecting to the next server URL) and for libvirt (a machine
step that found libvirtd unreachable, a resync that could not list domains). Exponential so
a long outage costs few attempts, jittered so a fleet of agents, or a host's many machines,
does not retry in lock-step.
"""

from __future__ import annotations

import random


def backoff_delay(failures: int, *, cap: float = 10.0, base: float = 0.5) -> float:
    """Exponential with jitter: half the step fixed, half random, never above ``cap``."""
    step = min(cap, base * 2.0 ** min(failures, 16))
    return step / 2 + random.uniform(0, step / 2)  # noqa: S311 (jitter, not crypto)

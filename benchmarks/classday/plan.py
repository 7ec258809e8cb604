"""The class day's plans: how big a run is (`FULL` for ``make classday``, `QUICK` for the CI
smoke test), and the limits every run is judged by."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
TEMPLATE = "classday-tiny"
RECOVERY_GRACE_S = 3.0
PROBE_P99_LIMIT_S = 0.25
# The real host's vCPUs, as its libvirtd reports them, when it cannot be asked.
FALLBACK_VCPUS = 2


@dataclass(frozen=True)
class DayPlan:
    name: str
    students: int
    simulated_hosts: int
    replicas: int  # the lab's machines
    real_host_share: int  # of which the real QEMU host takes this many
    sign_in_window_s: float
    listers: int
    lister_concurrency: int
    subscribers: int  # deploymentEvents subscribers of the lab (one more follows every lab)
    agent_kills: int
    kill_gap_s: float  # the real agent is killed at most this long after create / its last restart
    db_down_s: float
    converge_timeout_s: float
    budget_s: float  # the whole run, set-up and clean-up included


FULL = DayPlan(name="full", students=30, simulated_hosts=20, replicas=30, real_host_share=6, sign_in_window_s=5.0,
               listers=200, lister_concurrency=20, subscribers=4, agent_kills=10, kill_gap_s=1.5, db_down_s=2.0,
               converge_timeout_s=240.0, budget_s=600.0)
# The quick run is the CI smoke (tests/test_classday_smoke.py): every step at the smallest size
# that still runs it (several students, simulated hosts and kills, two guests on the real host).
# Its limits are deadlines, not targets: they leave room for a CI machine busy with other tests
# (everything here is CPU-bound on two cores) and cost nothing when the run is quick.
QUICK = DayPlan(name="quick", students=4, simulated_hosts=2, replicas=5, real_host_share=2, sign_in_window_s=1.0,
                listers=8, lister_concurrency=4, subscribers=1, agent_kills=2, kill_gap_s=1.0, db_down_s=1.0,
                converge_timeout_s=240.0, budget_s=450.0)

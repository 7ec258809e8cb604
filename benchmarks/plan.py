"""How big each benchmark runs: the full plan (``make bench``) and the quick one (``--quick``).

The quick plan keeps every code path (real guests, server, agent, both baselines, load tool)
with smaller sizes, so the whole run stays well under three minutes on two cores; its figures
only show that the scripts work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    # P1: lab sizes, runs of ours and of the raw limit per size, the largest size the seed's
    # method (a full copy per machine: 1 GiB each) is run at, base image size, and how long to
    # wait at most for idle CPUs before each measurement.
    p1_counts: tuple[int, ...]
    p1_seed_max: int
    p1_repeats: int
    p1_base_mib: int
    p1_settle_s: float
    # P2: guests per round and rounds (events = guests x rounds); seconds a guest stays up.
    p2_guests: int
    p2_rounds: int
    p2_poweroff_after: int
    # P3: labs listed, wrk connections and seconds per run, alternating runs per endpoint,
    # single requests per endpoint on the database with machines, and the subscriber levels
    # of the subscription ramp with mutations fired per level.
    p3_labs: int
    p3_connections: tuple[int, ...]
    p3_seconds: int
    p3_runs: int
    p3_fleet_requests: int
    p3_subscriber_levels: tuple[int, ...]
    p3_mutations_per_level: int
    # P4: machines converged by one reconciler on libvirt's test driver; agents heartbeating
    # (every interval, rounds measured after a warm-up one) against a server with a fleet.
    p4_machines: int
    p4_heartbeat_agents: int
    p4_heartbeat_interval_s: float
    p4_heartbeat_rounds: int
    p4_heartbeat_fleet: int
    # P5: P1's lab size provisioned alone and with this many deploymentEvents watchers, runs each.
    p5_count: int
    p5_watchers: int
    p5_repeats: int
    # P6: the size of the image pulled (MiB of random data) and runs of the pull and of cp each.
    p6_image_mib: int
    p6_repeats: int


FULL = Plan(
    name="full",
    p1_counts=(1, 10, 30, 100), p1_seed_max=30, p1_repeats=3, p1_base_mib=1024, p1_settle_s=15.0,
    p2_guests=10, p2_rounds=5, p2_poweroff_after=6,
    p3_labs=1000, p3_connections=(8, 32), p3_seconds=10, p3_runs=2, p3_fleet_requests=3,
    p3_subscriber_levels=(1000, 2500, 5000), p3_mutations_per_level=5,
    p4_machines=2000, p4_heartbeat_agents=200, p4_heartbeat_interval_s=10.0, p4_heartbeat_rounds=3,
    p4_heartbeat_fleet=17000,
    p5_count=30, p5_watchers=300, p5_repeats=3,
    p6_image_mib=1024, p6_repeats=3,
)

# The smallest sizes that still run every code path (several machines per lab, the seed's method,
# two subscriber levels, a warm-up and a measured heartbeat round ...): it is the CI smoke
# (tests/test_benchmarks_smoke.py), where only "it works" is judged.
QUICK = Plan(
    name="quick",
    p1_counts=(2,), p1_seed_max=2, p1_repeats=1, p1_base_mib=32, p1_settle_s=0.5,
    p2_guests=2, p2_rounds=1, p2_poweroff_after=4,
    p3_labs=100, p3_connections=(4,), p3_seconds=1, p3_runs=1, p3_fleet_requests=1,
    p3_subscriber_levels=(5, 20), p3_mutations_per_level=2,
    p4_machines=50, p4_heartbeat_agents=5, p4_heartbeat_interval_s=1.0, p4_heartbeat_rounds=1,
    p4_heartbeat_fleet=50,
    p5_count=2, p5_watchers=5, p5_repeats=1,
    p6_image_mib=16, p6_repeats=1,
)

"""``python -m benchmarks [--quick] [--out DIR] [--only P1,P3]``: run the benchmarks, print the
table, write the JSON files.

The full plan (``make bench``) writes ``benchmarks/results/``; ``--quick`` (``make bench-quick``,
and the smoke test) writes ``benchmarks/results/quick/`` unless ``--out`` says otherwise.
Before the run, whatever earlier runs left behind is removed; after it, every domain, storage
pool and file this run made (``stack.sweep``), also when a benchmark fails or the run is
interrupted. A failed benchmark is recorded with its error and the others still run; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    agent_scale,
    api_throughput,
    image_pull,
    machine_info,
    provision,
    report,
    stack,
    status_latency,
    watched,
)
from benchmarks.plan import FULL, QUICK, Plan

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS: dict[str, Callable[[Plan, Path], dict[str, Any]]] = {
    "P1": provision.run,
    "P2": status_latency.run,
    "P3": api_throughput.run,
    "P4": agent_scale.run,
    "P5": watched.run,
    "P6": image_pull.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every benchmark")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON files go")
    parser.add_argument("--only", default="", help="comma-separated subset, e.g. P1,P4")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    chosen = [key.strip().upper() for key in args.only.split(",") if key.strip()] or list(BENCHMARKS)
    unknown = [key for key in chosen if key not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)

    stack.exit_cleanly_on_signals()
    # Thousands of websockets in P3: the server and the subscriber process inherit this.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    stack.libvirtd_up()
    stack.sweep()  # what ended runs left behind; a run still going is left alone
    context: dict[str, Any] = {
        "plan": plan.name, "targets_judged": plan is FULL, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info.describe(), "load_average_at_start": report.load_average(),
        # Another benchmark run at the same time shares the CPUs: the figures say so.
        "other_benchmark_runs_at_start": stack.live_runs(),
    }
    results: dict[str, dict[str, Any]] = {}
    work = stack.new_run_dir()
    began = time.monotonic()
    try:
        for key in chosen:
            print(f"== {key} ({plan.name}) ...", flush=True)
            started = time.monotonic()
            try:
                results[key] = BENCHMARKS[key](plan, stack.traversable_dir(work / key))
            except Exception as error:
                traceback.print_exc()
                results[key] = {"benchmark": key, "error": f"{type(error).__name__}: {error}"}
            results[key]["seconds"] = round(time.monotonic() - started, 1)
            print(f"   {key} took {results[key]['seconds']} s", flush=True)
    finally:
        stack.sweep(run=work)
    context["seconds"] = round(time.monotonic() - began, 1)
    context["load_average_at_end"] = report.load_average()
    context["other_benchmark_runs_at_end"] = [name for name in stack.live_runs() if name != work.name]
    path = report.write(out, results, context)
    print()
    print(report.table(results, judged=plan is FULL))
    print(f"\nwritten: {path.parent}/ ({', '.join(sorted(p.name for p in path.parent.glob('*.json')))})")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

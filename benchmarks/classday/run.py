"""A class-day run from start to end (`run`): the system built, the day run, everything stopped
and removed on every way out; its report for people (`text_summary`) and the command line
(`main`, ``python -m benchmarks.classday``)."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import random
import resource
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.support.processes import LOG_DIR

from benchmarks import classday, machine_info, report, stack
from benchmarks.classday.day import PHASE, Outcome, _log_findings, day, say
from benchmarks.classday.plan import FULL, QUICK, RESULTS, DayPlan
from benchmarks.classday.processes import Children, RssSampler
from benchmarks.classday.system import System, build

# What a run is, as the report and --help say it: the package's docstring (`benchmarks.classday`).
_DOC = classday.__doc__ or ""
_WHAT, _HOW = _DOC.split("\n", 1)[0], _DOC.partition("\n\n")[2]


def run(plan: DayPlan, work: Path, *, seed: int | None = None) -> dict[str, Any]:
    """The whole class day in ``work`` (a run directory of ``stack``); returns the report."""
    seed = seed if seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    children = Children()
    atexit.register(children.stop_all)
    began = time.monotonic()
    system: System | None = None
    sampler: RssSampler | None = None
    outcome = Outcome()
    context = {"plan": asdict(plan), "seed": seed, "machine": machine_info.describe(),
               "load_average_at_start": report.load_average(), "busiest_processes_at_start": _busiest(),
               "other_benchmark_runs_at_start": stack.live_runs(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        say(began, f"starting the database, 2 server replicas, 1 real and {plan.simulated_hosts} simulated agents")
        system = build(plan, work, children)
        # The harness's own process runs every client but the probe: its CPU is load too.
        sampler = RssSampler(lambda: {**system.pids(), "harness-clients": [os.getpid()]})
        context["setup_s"] = round(time.monotonic() - began, 1)
        context["real_host"] = {"name": system.real.host_name, "vcpus": system.real_vcpus,
                                "cpu_overcommit": system.overcommit}
        budget = plan.budget_s - (time.monotonic() - began) - 20  # 20 s kept for clean-up
        result = asyncio.run(asyncio.wait_for(day(system, rng, outcome, began=began), timeout=budget))
        context["load_average_at_end"] = report.load_average()
        result["rss"] = sampler.stop()
        say(began, "stopping everything")
        result["log_findings"] = _log_findings(system)
        result["logs"] = str(LOG_DIR / f"classday-{work.name}")
    except BaseException as error:
        context["load_average_at_end"] = report.load_average()
        problem = f"{type(error).__name__}: {error}"
        if isinstance(error, TimeoutError):
            problem = f"the run exceeded its budget of {plan.budget_s:g} s"
        result = {"error": f"{problem} (during: {PHASE['now']})", "passed": False,
                  "checks": [asdict(c) for c in outcome.checks],
                  "rss": sampler.stop() if sampler else {},
                  "log_findings": _log_findings(system) if system else {}}
        if not isinstance(error, Exception):
            raise
    finally:
        children.stop_all()
    context["seconds"] = round(time.monotonic() - began, 1)
    return {"benchmark": "class day", "how": _HOW, **context, **result}


def _busiest(count: int = 8) -> list[str]:
    """What else keeps this machine busy: the processes using the most CPU (ps's %CPU is over
    each one's lifetime, so a long-lived idle process does not show)."""
    listed = subprocess.run(["ps", "-eo", "pcpu,etimes,args", "--sort=-pcpu", "--no-headers"],
                            capture_output=True, text=True, check=False).stdout
    return [" ".join(line.split())[:140] for line in listed.splitlines()[:count]]


def text_summary(result: dict[str, Any]) -> str:
    lines = [f"Class day ({result['plan']['name']} plan), {result['started']}, {result['seconds']} s; "
             f"load average {result['load_average_at_start']} -> {result.get('load_average_at_end')}; "
             f"seed {result['seed']}"]
    if "error" in result:
        lines.append(f"ERROR: {result['error']}")
    for check in result.get("checks", []):
        lines.append(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['name']}"
                     + (f" ({check['detail']})" if check["detail"] else ""))
    for target in result.get("targets", []):
        sign = "<=" if target["better"] == "lower" else ">="
        lines.append(f"  target {target['name']}: {target['value']} {sign} {target['limit']} "
                     f"{'met' if target['met'] else 'MISSED'}")
    by_phase = result.get("probe", {}).get("outside_kill_windows_by_phase_s", {})
    if by_phase:
        lines.append("loop probe outside the kill windows, by phase (p50 / p99 / max, s):")
        lines += [f"  {name}: {v.get('p50')} / {v.get('p99')} / {v.get('max')} ({v['count']} samples)"
                  for name, v in by_phase.items()]
    if result.get("figures"):
        lines.append("figures:")
        lines += [f"  {name}: {value}" for name, value in result["figures"].items()]
    if result.get("placement"):
        lines.append(f"placement: {result['placement']}")
    for window in result.get("kill_windows", []):
        lines.append(f"  window {window['what']} ({window['target']}): killed {window['killed_at_s']}, restarted "
                     f"{window['restarted_at_s']}, back {window['back_at_s']} s"
                     f"{' (mid-provision)' if window['mid_provision'] else ''}")
    for kind in result.get("failure_kinds_outside_windows", []):
        lines.append(f"  OUTSIDE the windows: {kind['count']} x {kind['who']}: {kind['what']}")
    for failure in result.get("failures_outside_windows", [])[:5]:
        lines.append(f"    e.g. at {failure['at_s']} s: {failure['who']} -> {failure['target']}: {failure['what']}")
    for kind in result.get("failure_kinds_in_windows", []):
        lines.append(f"  in window {kind['window']}: {kind['count']} x {kind['who']}: {kind['what']}")
    if result.get("rss"):
        lines.append("resident memory (MiB, peak per process / last total) and CPU time used (s):")
        lines += [f"  {role}: {v['peak_mib_per_process']} / {v['last_total_mib']}; {v.get('cpu_seconds')} s CPU"
                  for role, v in result["rss"].items()]
    findings = result.get("log_findings", {})
    simulated = [f for name, f in findings.items() if name.startswith("agent-") and name != "agent-real"]
    if simulated:
        lines.append(f"  logs of {len(simulated)} simulated agents: "
                     f"{sum(f['error_lines'] for f in simulated)} ERROR/Traceback line(s); "
                     f"{sum(f['server_link_lost'] for f in simulated)} lost server link(s)")
    for name, finding in findings.items():
        if finding in simulated:
            continue
        lines.append(f"  log {name}: {finding['error_lines']} ERROR/Traceback line(s) {finding['exceptions']}; "
                     f"{finding['server_link_lost']} lost server link(s) ({finding['log']})")
    return "\n".join(lines)


@contextlib.contextmanager
def _run_dir() -> Iterator[Path]:
    stack.libvirtd_up()
    stack.sweep()
    work = stack.new_run_dir()
    try:
        yield work
    finally:
        stack.sweep(run=work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.classday", description=_WHAT)
    parser.add_argument("--quick", action="store_true", help="the small CI variant")
    parser.add_argument("--out", type=Path, default=None, help="where classday.json and classday.txt go")
    parser.add_argument("--seed", type=int, default=None, help="the kill moments' random seed")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    stack.exit_cleanly_on_signals()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with _run_dir() as work:
        result = run(plan, work, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classday.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = text_summary(result)
    (out / "classday.txt").write_text(text + "\n")
    print(text)
    print(f"\nwritten: {out / 'classday.json'}, {out / 'classday.txt'}")
    judged = [t["met"] for t in result.get("targets", [])] if plan is FULL else []
    return 0 if result.get("passed") and all(judged) else 1

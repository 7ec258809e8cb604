"""The class-day run still holds: `python -m benchmarks.classday --quick` ends with every check met.

The quick plan runs every step of `make classday` smaller (a few students, two simulated
hosts, the real QEMU host, one server and one database kill, a few agent kills mid-provision),
so CI sees the whole system converge under faults: the lab Active with every machine running,
exactly the desired domains and overlays on every host, every subscriber and student page at
the final state, nothing left after delete, and no failed request outside the kill windows.
Only outcomes are asserted, never timings (the loop-probe target is judged by the full run).
It boots real QEMU guests (TCG) through libvirtd: run it under `flock /tmp/kubekvm-qemu.lock`.
The run is contained (`tests.support.contained`): whatever way it ends, nothing it started or
defined outlives the test, and a run that ends by itself must have left nothing behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmarks.classday.plan import QUICK

from tests.support.contained import run_contained
from tests.support.processes import LOG_DIR
from tests.support.qemu import scratch_dir

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.qemu


# Above the run's own limit plus its clean-up (see tests/test_benchmarks_smoke.py).
@pytest.mark.timeout(560)
def test_quick_class_day_converges_with_no_error_outside_the_kill_windows(tmp_path: Path) -> None:
    out = tmp_path / "results"
    work = scratch_dir("classday")
    run = run_contained([sys.executable, "-m", "benchmarks.classday", "--quick", "--out", str(out)], cwd=ROOT,
                        timeout=480, log=LOG_DIR / f"classday-smoke-{work.name}.log", scratch=work,
                        env={"KUBEKVM_BENCH_RUNS": str(work)})
    assert (out / "classday.json").is_file(), run.output[-6000:]
    assert run.left == [], f"the class day left these behind: {run.left}"
    result = json.loads((out / "classday.json").read_text())
    summary = (out / "classday.txt").read_text()

    assert "error" not in result, summary
    failed = [check for check in result["checks"] if not check["ok"]]
    assert not failed, summary
    assert result["passed"] and run.code == 0, summary
    # The faults really happened: one server replica, the database, and every agent kill.
    kinds = [window["what"] for window in result["kill_windows"]]
    assert kinds.count("server replica b SIGKILL") == 1, kinds
    assert kinds.count("database SIGKILL") == 1, kinds
    assert kinds.count("real agent SIGKILL") == QUICK.agent_kills, kinds
    assert all(window["back_at_s"] is not None for window in result["kill_windows"]), result["kill_windows"]
    assert result["failures_outside_windows"] == [], summary
    assert result["figures"]["machines_on_real_host"] >= 1 and sum(result["placement"].values()) == QUICK.replicas

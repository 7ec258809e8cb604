"""The benchmarks still run: `python -m benchmarks --quick` ends well and writes every figure.

A smoke test only: CI asserts no timing (the quick plan's sizes are not the targets' sizes,
and a shared machine's speed varies). It boots real QEMU guests (TCG) through libvirtd. The run
is contained (`tests.support.contained`): whatever way it ends, nothing it started or defined
outlives the test, and a run that ends by itself must have left nothing behind.
"""

from __future__ import annotations

import json
import shutil
import sys
from numbers import Number
from pathlib import Path

import pytest

from tests.support.contained import run_contained
from tests.support.processes import LOG_DIR
from tests.support.qemu import scratch_dir

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {"P1", "P2", "P3", "P4", "P5", "P6"}

pytestmark = pytest.mark.qemu


def _numbers(value: object) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


# Above the run's own limit plus its clean-up, so a slow run is stopped (and cleaned up) by
# run_contained, not cut short in the middle of its clean-up by pytest-timeout.
# Generous: a few minutes on an idle machine, several times that on a loaded CI machine.
@pytest.mark.timeout(720)
def test_quick_benchmarks_write_every_figure(tmp_path: Path) -> None:
    needed = ["qemu-system-x86_64", "libvirtd", "qemu-img", "qemu-io", "virt-clone", "virsh", "wrk"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the benchmarks need {', '.join(missing)} (scripts/setup test installs them)")
    out = tmp_path / "results"
    work = scratch_dir("bench")
    run = run_contained([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                        timeout=600, log=LOG_DIR / f"benchmarks-smoke-{work.name}.log", scratch=work,
                        env={"KUBEKVM_BENCH_RUNS": str(work)})
    assert run.code == 0, run.output[-6000:]
    assert run.left == [], f"the benchmarks left these behind: {run.left}"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"] == "quick" and summary["targets_judged"] is False
    assert summary["machine"]["nproc"] >= 1
    assert set(summary["benchmarks"]) == BENCHMARKS
    for key, bench in summary["benchmarks"].items():
        assert "error" not in bench, (key, bench)
        assert bench["figures"], key
        assert all(_numbers(v) for v in bench["figures"].values()), (key, bench["figures"])
        assert bench["targets"] and all(_numbers(t["value"]) and _numbers(t["limit"]) for t in bench["targets"]), key
        details = json.loads((out / bench["file"]).read_text())
        assert details["figures"] == bench["figures"]
    # Every table row made it to the terminal too.
    assert "P4 agent scale" in run.output and "written:" in run.output

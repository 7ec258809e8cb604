"""The benchmarks still run: `python -m benchmarks --quick` ends well and writes every figure.

A smoke test only: CI asserts no timing (the quick plan's sizes are not the targets' sizes,
and a shared machine's speed varies). It boots real QEMU guests (TCG) through libvirtd.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from numbers import Number
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {"P1", "P2", "P3", "P4"}

pytestmark = pytest.mark.qemu


def _numbers(value: object) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


@pytest.mark.timeout(240)
def test_quick_benchmarks_write_every_figure(tmp_path: Path) -> None:
    needed = ["qemu-system-x86_64", "libvirtd", "qemu-img", "qemu-io", "virt-clone", "virsh", "wrk"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the benchmarks need {', '.join(missing)} (scripts/setup test installs them)")
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=220)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

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
    assert "P4 agent scale" in run.stdout and "written:" in run.stdout

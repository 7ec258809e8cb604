"""A command run by a test with everything it starts accounted for: `run_contained`.

The benchmarks' smoke tests run `python -m benchmarks` and `python -m benchmarks.classday`,
which start servers, databases and agents (some in process groups of their own) and boot QEMU
guests. Killing only the command on a timeout (what `subprocess.run(timeout=...)` does, with
SIGKILL) left all of that running, and the guests defined. Here the command's every descendant
carries a mark of its own in its environment (`KUBEKVM_TEST_GROUP`), its scratch folder is one
the test names, and on every way out:

- it overran its time, or the test was interrupted: the command's group gets SIGTERM (the
  benchmarks then clean up after themselves), a grace period, then every marked process left
  is SIGKILLed and the domains, pools and files in the scratch folder are removed;
- it ended by itself: whatever it still left (marked processes, domains, files) is removed
  and listed in `Finished.left`, so the test can fail on it — a command must clean up itself.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.leftovers import processes_left
from tests.support.qemu import remove_domains_under

GROUP_VARIABLE = "KUBEKVM_TEST_GROUP"


@dataclass(frozen=True)
class Finished:
    code: int
    output: str  # stdout and stderr, interleaved
    left: list[str] = field(default_factory=list)


def run_contained(command: list[str], *, timeout: float, log: Path, scratch: Path, grace: float = 30.0,
                  cwd: Path | None = None, env: dict[str, str] | None = None) -> Finished:
    """Runs `command` (its output to `log`), waits at most `timeout` seconds (then raises
    `subprocess.TimeoutExpired`, after cleaning up), and cleans up after it; `scratch` is the
    folder it was told to work in. `grace`: how long its processes may take to end once asked
    (on SIGTERM, and those outside its group afterwards) before they are killed."""
    tag = secrets.token_hex(4)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=cwd, env={**os.environ, **(env or {}), GROUP_VARIABLE: tag},
                                   start_new_session=True)
    ended = False
    try:
        code = process.wait(timeout=timeout)
        ended = True
    finally:
        if not ended:
            _stop_group(process, grace=grace)
        left = [f"process {pid}: {what}" for pid, what in processes_left(GROUP_VARIABLE, tag, grace=grace).items()]
        left += remove_domains_under(scratch)
        if scratch.exists():
            left += [f"folder {path}" for path in sorted(scratch.iterdir())]
            shutil.rmtree(scratch, ignore_errors=True)
    return Finished(code, log.read_text(errors="replace"), left)


def _stop_group(process: subprocess.Popen[bytes], *, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

"""The class day's processes: every child the run starts is registered (`Children`), so every
way out can stop it; the kill windows that excuse a failure (`Window`, `excused`); and the
sampler of every process's resident memory."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.classday.plan import RECOVERY_GRACE_S
from benchmarks.classroom import Failure


class Children:
    """Stop-functions of everything the run started, called in reverse order exactly once;
    then a sweep of ``/proc`` for any process of the run that escaped them (one a restart in a
    worker thread started while the run was being interrupted), every time it is called."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.marks: list[bytes] = []  # in a process's command line or environment: it is ours

    def add(self, stop: Callable[[], None]) -> None:
        with self._lock:
            self._stops.append(stop)

    def stop_all(self) -> None:
        with self._lock:
            stops, self._stops = self._stops[::-1], []
        for stop in stops:
            with contextlib.suppress(Exception):
                stop()
        self.kill_leftovers()

    def kill_leftovers(self) -> list[int]:
        killed = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                seen = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
            except OSError:
                continue
            # QEMU guests are libvirtd's: stack.sweep destroys their domains properly.
            if any(mark in seen for mark in self.marks) and b"qemu-system" not in seen.split(b"\0", 1)[0]:
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
        return killed


@dataclass
class Window:
    what: str
    target: str  # a replica URL, a host name, or "*" (the database: everything)
    killed_at: float
    back_at: float | None = None  # None: it did not come back within the run
    restarted_at: float | None = None  # the process started again (answering, for the database)
    ends: float = math.inf

    def close(self, back_at: float | None, *, limit: float) -> None:
        self.back_at = back_at
        self.ends = (back_at if back_at is not None else limit) + RECOVERY_GRACE_S


def excused(failure: Failure, windows: list[Window]) -> Window | None:
    """The kill window that explains ``failure``, if any (see the module's docstring)."""
    for window in windows:
        if window.target in ("*", failure.target) and failure.started <= window.ends \
                and failure.ended >= window.killed_at:
            return window
    return None


class RssSampler:
    """Each role's resident memory (VmRSS), sampled every second; peaks and last values; and
    the CPU time each role's processes used (utime + stime, the last seen of every process,
    restarted ones included), which tells a busy process from one starved of CPU."""

    def __init__(self, roles: Callable[[], dict[str, list[int]]]) -> None:
        self.roles = roles
        self.peak: dict[str, int] = {}
        self.last: dict[str, list[int]] = {}
        self.cpu_ticks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss_kib(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    @staticmethod
    def cpu_ticks_of(pid: int) -> int | None:
        try:
            # The command name (field 2) may hold spaces: count fields after its closing ")".
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return None

    def sample(self) -> None:
        for role, pids in self.roles().items():
            for pid in pids:
                ticks = self.cpu_ticks_of(pid)
                if ticks is not None:
                    self.cpu_ticks[pid] = (role, ticks)
            values = [v for v in (self.rss_kib(pid) for pid in pids) if v]
            if values:
                self.last[role] = values
                self.peak[role] = max(self.peak.get(role, 0), max(values))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        per_second = os.sysconf("SC_CLK_TCK")
        cpu: dict[str, float] = {}
        for role, ticks in self.cpu_ticks.values():
            cpu[role] = cpu.get(role, 0.0) + ticks / per_second
        return {role: {"peak_mib_per_process": round(self.peak[role] / 1024, 1),
                       "last_mib_per_process": [round(v / 1024, 1) for v in self.last.get(role, [])],
                       "last_total_mib": round(sum(self.last.get(role, [])) / 1024, 1),
                       "cpu_seconds": round(cpu.get(role, 0.0), 1)}
                for role in sorted(self.peak)}

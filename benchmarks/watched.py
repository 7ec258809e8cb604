"""P5 — provisioning while watched: P1's lab with hundreds of `deploymentEvents` subscribers attached.

The same measurement as P1 (``provision.ours_once``: ``createDeployment`` answered → a subscriber
has seen every machine RUNNING, the real agent on libvirtd), run alternately alone and with
``p5_watchers`` subscriptions to every lab's events held open by a separate process
(``benchmarks.subscribers --hold``, one websocket each, as a dashboard or a class of integrators
would). The baseline is the same provisioning without them, in the same run; the figure is the
ratio of the medians. Beside it, the server's resident memory (VmRSS) before the watchers attach,
at its highest while they watch (sampled every 0.2 s) and once they have left and the server has
been idle for a few seconds, and the server's CPU seconds spent during each provisioning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.processes import LOG_DIR, ROOT, VENV_BIN, Server

from benchmarks.api_throughput import rss_kib
from benchmarks.dir_watch import DirectoryWatch
from benchmarks.guest_images import make_image
from benchmarks.libvirt_watch import LifecycleWatch
from benchmarks.plan import Plan
from benchmarks.provision import ours_once
from benchmarks.stack import (
    LIBVIRT_URI,
    add_template,
    database,
    kubekvm_agent,
    kubekvm_server,
    libvirtd_up,
    wait_for_quiet_cpu,
)
from benchmarks.stats import median

SLOWDOWN_LIMIT = 1.2
# Memory "returns" when the server is back within this much of where it was before the watchers.
RSS_RETURN_MIB = 15.0
SETTLE_AFTER_S = 5.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _PeakRss:
    """The highest VmRSS of a process while the block runs, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib = pid, rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def watchers(server: Server, token_file: Path, count: int) -> Iterator[dict[str, Any]]:
    """``count`` subscriptions to every lab's events, held for the block; yields what they
    received once they have left (filled in after the block)."""
    held: dict[str, Any] = {}
    process = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "benchmarks.subscribers", "--url", server.ws_url,
         "--token-file", str(token_file), "--count", str(count), "--hold"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=(LOG_DIR / "bench-watchers.log").open("ab"))
    assert process.stdin is not None and process.stdout is not None
    try:
        line = process.stdout.readline().decode()
        if not line.startswith("CONNECTED"):
            raise RuntimeError(f"the watchers did not connect: {line!r}")
        held["connected"] = int(line.split()[1])
        yield held
        process.stdin.close()
        result = json.loads(process.stdout.readline().decode() or "{}")
        held.update(result)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run(plan: Plan, work: Path) -> dict[str, Any]:
    libvirtd_up()
    image = make_image(work / "images", "bench-watched", size_mib=plan.p1_base_mib)
    watch = LifecycleWatch(LIBVIRT_URI)
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "watched": []}
    cap = {"KUBEKVM_GRAPHQL_MAX_SUBSCRIPTIONS_PER_USER": str(plan.p5_watchers + 20)}
    try:
        with database() as db, kubekvm_server(db, env=cap) as server:
            pid = server.child.process.pid
            add_template(server, name=image.stem, image=image.image)
            token_file = work / "p5-admin.token"
            token_file.write_text(server.admin_token)
            token_file.chmod(0o600)
            with kubekvm_agent(server, image_dir=image.directory, state_dir=work / "agent-state",
                               log=LOG_DIR / f"bench-agent-p5-{work.parent.name}.log") as agent:
                files = DirectoryWatch(agent.state_dir / "disks")
                try:
                    for repeat in range(plan.p5_repeats):
                        for which in (("alone", "watched") if repeat % 2 == 0 else ("watched", "alone")):
                            idle = wait_for_quiet_cpu(timeout=plan.p1_settle_s)
                            rss_before = rss_kib(pid)
                            entry: dict[str, Any] = {"cpu_idle_before": idle,
                                                     "server_rss_mib_before": round(rss_before / 1024, 1)}
                            with contextlib.ExitStack() as stack:
                                if which == "watched":
                                    held = stack.enter_context(watchers(server, token_file, plan.p5_watchers))
                                    entry["server_rss_mib_attached"] = round(rss_kib(pid) / 1024, 1)
                                peak = stack.enter_context(_PeakRss(pid))
                                cpu = _cpu_seconds(pid)
                                result = asyncio.run(ours_once(server, agent, image, count=plan.p5_count,
                                                               watch=watch, files=files))
                                entry["server_cpu_s"] = round(_cpu_seconds(pid) - cpu, 2)
                            entry["server_rss_mib_peak"] = round(peak.peak_kib / 1024, 1)
                            if which == "watched":
                                entry["watchers"] = held
                                time.sleep(SETTLE_AFTER_S)  # the server idle after they left, as a class ends
                                entry["server_rss_mib_after_leaving"] = round(rss_kib(pid) / 1024, 1)
                            runs[which].append({**entry, "total_s": result["total_s"],
                                                "lab_active_seen_s": result["lab_active_seen_s"]})
                finally:
                    files.close()
            token_file.unlink(missing_ok=True)
    finally:
        watch.close()
        image.base.unlink(missing_ok=True)
    alone = median([r["total_s"] for r in runs["alone"]])
    watched = median([r["total_s"] for r in runs["watched"]])
    ratio = round(watched / alone, 2)
    before = median([r["server_rss_mib_before"] for r in runs["watched"]])
    peak = max(r["server_rss_mib_peak"] for r in runs["watched"])
    after = median([r["server_rss_mib_after_leaving"] for r in runs["watched"]])
    returned = round(after - before, 1)
    return {
        "benchmark": "P5 provisioning while watched",
        "how": f"P1's measurement (createDeployment answered -> a subscriber saw every machine RUNNING) for "
               f"{plan.p5_count} VMs, alternately alone and with {plan.p5_watchers} deploymentEvents "
               f"subscriptions to every lab held open by a separate process, {plan.p5_repeats} run(s) each, "
               f"order flipped every time; medians. Server VmRSS before the watchers attach, at its highest "
               f"(sampled every 0.2 s) and {SETTLE_AFTER_S:g} s after they left; server CPU seconds "
               "(utime + stime) during each provisioning.",
        "runs": runs,
        "figures": {
            "n": plan.p5_count,
            "watchers": plan.p5_watchers,
            "alone_s": round(alone, 3),
            "watched_s": round(watched, 3),
            "watched_over_alone": ratio,
            "server_cpu_s_alone": median([r["server_cpu_s"] for r in runs["alone"]]),
            "server_cpu_s_watched": median([r["server_cpu_s"] for r in runs["watched"]]),
            "server_rss_mib_before": before,
            "server_rss_mib_peak_watched": peak,
            "server_rss_mib_after_leaving": after,
        },
        "targets": [
            {"name": f"P1 with {plan.p5_watchers} watchers / alone", "value": ratio, "limit": SLOWDOWN_LIMIT,
             "better": "lower", "met": ratio <= SLOWDOWN_LIMIT},
            {"name": "server RSS after the watchers left - before (MiB)", "value": returned,
             "limit": RSS_RETURN_MIB, "better": "lower", "met": returned <= RSS_RETURN_MIB},
        ],
    }

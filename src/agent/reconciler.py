"""Reconciler: makes libvirt match the desired set, one small idempotent step at a time.

The reconciler holds the desired set (machine id -> ``Assignment``) and, for each machine,
compares it with what it observes: the libvirt domain (state and KubeKVM metadata) and the
overlay file. It is level-triggered: it never remembers what it did, only reads what is, so
the same pass after a crash or a restart does the right thing. Per machine:

- running/stopped: make the overlay if missing, define the domain if missing;
- a reset generation above the one recorded in the domain: destroy, replace the overlay
  with a fresh one, redefine (recording the new generation);
- running: start the domain only when the power generation recorded in it is lower than
  the assignment's. A guest that powered itself off is reported ``shutoff`` and stays off
  until the server asks again with a new generation; a never-started domain records
  ``NEVER_POWERED`` and so always starts;
- stopped: press the ACPI button (again every ``ACPI_PRESS_INTERVAL``: a guest still booting
  at the first press had nothing listening to it yet), and destroy the domain once the grace
  period is over;
- absent: destroy, delete the overlay, undefine (in that order: a crash in between leaves a
  domain that still says whose it was, never an unowned overlay reused by a new machine).

One machine's passes never overlap (one task per machine; a change while a pass runs makes
it run again afterwards), passes on the same domain name are serialized by a lock, and at
most ``parallel`` passes run at once. Domains carrying KubeKVM metadata whose machine is not
desired are orphans: reported, and removed only with ``gc_orphans``. Lifecycle events are
reported at once and trigger a pass; a periodic full resync is the safety net.

Each report carries the power generation recorded in the domain (the latest start/stop
request carried out on it), so the server can tell "not started yet" from "powered off".
Every ``cpu_sample_interval`` (0: never) the running machines' guest CPU times are read in one
bulk call and sent with each one's last report (the server's idle shutdown uses them).

libvirtd being unreachable or not answering (``HypervisorUnavailable``: a dropped connection,
a keepalive timeout, a call past its timeout) is not a machine error: a machine that was
running still runs. The pass reports nothing it does not know (a machine it was making, last
reported pending, is reported pending with the reason), and is retried with backoff; when the
hypervisor reconnects, a full resync re-reads every domain and reports what libvirt shows.

Longer than 400 lines: the per-machine steps above share the pass's state (the observed domain,
the locks, the report), and split apart they would have to pass it all around.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import structlog

from agent import metrics
from agent.accelerator import Accelerator
from agent.assignment import Assignment
from agent.backoff import backoff_delay
from agent.disks import DiskError, Disks
from agent.domain_xml import NEVER_POWERED, MachineMetadata, domain_xml
from agent.hypervisor import DomainStatus, Hypervisor, HypervisorError, HypervisorUnavailable
from agent.images import Images
from agent.machine_state import ObservedState, StateReport
from agent.publisher import Publisher
from agent.pulls import Pulls

log = logging.getLogger(__name__)

Report = Callable[[StateReport], Awaitable[None]]
ReportOrphans = Callable[[list[str]], Awaitable[None]]


class Outcome(NamedTuple):
    """Where a pass left a machine: its state, why, and the power generation recorded in its
    domain (None when the pass did not read one)."""

    state: ObservedState
    message: str | None
    power_generation: int | None = None

# A guest hears the power button only once its ACPI button driver (and, on most systems, a
# daemon such as acpid or logind) is up; a press before that is lost, and a stop asked while
# the guest boots would wait out the whole grace and end forced off. So the button is pressed
# again at this interval until the guest goes or the grace is over (as OpenStack Nova does).
ACPI_PRESS_INTERVAL = 10.0


@dataclass
class _Worker:
    task: asyncio.Task[None] | None = None
    again: bool = False


class Reconciler:
    def __init__(
        self,
        *,
        hypervisor: Hypervisor,
        images: Images,
        state_dir: Path,
        accelerator: Accelerator,
        report: Report,
        report_orphans: ReportOrphans,
        parallel: int = 8,
        stop_grace: float = 60.0,
        resync_interval: float = 30.0,
        gc_orphans: bool = False,
        pulls: Pulls | None = None,
        cpu_sample_interval: float = 0.0,
        publisher: Callable[[Disks], Publisher] | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.images = images
        # Store images a machine needs and this host lacks are pulled (`agent.pulls`); a pull
        # that ends asks for a resync, so the machines waiting on it go on.
        self.pulls = pulls
        self.disks = Disks(state_dir / "disks")
        # Stopped machines being published as template versions (`agent.publisher`).
        self.publisher = publisher(self.disks) if publisher is not None else None
        self.logs = (state_dir / "logs").absolute()
        self.state_dir = state_dir
        self.accelerator = accelerator
        self.stop_grace = stop_grace
        self.resync_interval = resync_interval
        self.gc_orphans = gc_orphans
        self.cpu_sample_interval = cpu_sample_interval
        self._sample_task: asyncio.Task[None] | None = None
        self._report_callback = report
        self._report_orphans_callback = report_orphans
        self._slots = asyncio.Semaphore(parallel)
        self._desired: dict[str, Assignment] = {}
        # Domain name -> the desired machines that want it (insertion-ordered): every
        # lifecycle event looks its domain up here, so it must not scan the whole desired set.
        self._claims: dict[str, dict[str, None]] = {}
        # Until the server's first snapshot every domain would look like an orphan; a
        # restarted agent with gc_orphans must not delete a whole host's labs meanwhile.
        self._knows_desired = False
        self._workers: dict[str, _Worker] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stop_deadlines: dict[str, float] = {}
        self._next_presses: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._reported: dict[str, StateReport] = {}
        # Messages worth keeping while the state they explain lasts ("forced off ...").
        self._notes: dict[str, tuple[ObservedState, str]] = {}
        self._reported_orphans: list[str] | None = None
        self._resync_wanted = asyncio.Event()
        self._resync_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Machines whose pass is acting on libvirt right now.
        self._in_pass: set[str] = set()
        # Machines whose last pass found libvirtd unreachable: failures in a row, and the
        # timer of the next attempt.
        self._unavailable: dict[str, int] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._closed = False

    @property
    def desired(self) -> Mapping[str, Assignment]:
        return MappingProxyType(self._desired)

    async def start(self) -> None:
        """Prepares the state directory and starts the event listener and resync loop."""
        for directory in (self.state_dir, self.disks.directory, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
            # QEMU runs as its own user and must reach overlays and serial logs.
            directory.chmod(0o755)
        for partial in self.disks.remove_partials():
            log.info("removed %s left by an interrupted overlay creation", partial)
        self.hypervisor.add_lifecycle_listener(self._on_lifecycle)
        self.hypervisor.add_connection_listener(self.request_resync)
        await self.hypervisor.open()
        self._resync_task = asyncio.create_task(self._resync_loop(), name="resync")
        if self.cpu_sample_interval > 0:
            self._sample_task = asyncio.create_task(self._sample_loop(), name="cpu-samples")

    async def close(self) -> None:
        """Stops all work; domains are left exactly as they are."""
        self._closed = True
        self.hypervisor.remove_lifecycle_listener(self._on_lifecycle)
        self.hypervisor.remove_connection_listener(self.request_resync)
        tasks = [worker.task for worker in self._workers.values() if worker.task]
        tasks.extend(self._background)
        if self._resync_task is not None:
            tasks.append(self._resync_task)
        if self._sample_task is not None:
            tasks.append(self._sample_task)
        for timer in [*self._timers.values(), *self._retries.values()]:
            timer.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def replace_desired(self, assignments: Iterable[Assignment]) -> None:
        """A full snapshot: machines not in it are no longer desired here."""
        new = {assignment.machine_id: assignment for assignment in assignments}
        self._knows_desired = True
        for machine_id in set(self._desired) - set(new):
            self._forget(machine_id)
        self._desired = new
        self._claims = {}
        for machine_id, assignment in new.items():
            self._claims.setdefault(assignment.domain_name, {})[machine_id] = None
        # A snapshot follows a (re)connection: tell the server everything again.
        self._reported.clear()
        self._reported_orphans = None
        for machine_id in new:
            self._poke_machine(machine_id)
        self.request_resync()

    def update_desired(
        self, assignments: Iterable[Assignment], removed: Iterable[str] = ()
    ) -> None:
        for assignment in assignments:
            self._unclaim(assignment.machine_id)
            self._desired[assignment.machine_id] = assignment
            self._claims.setdefault(assignment.domain_name, {})[assignment.machine_id] = None
            self._poke_machine(assignment.machine_id)
        gone = [machine_id for machine_id in removed if machine_id in self._desired]
        for machine_id in gone:
            self._forget(machine_id)
            self._unclaim(machine_id)
            del self._desired[machine_id]
        if gone:
            self.request_resync()

    def request_resync(self) -> None:
        self._resync_wanted.set()

    async def wait_idle(self) -> None:
        """Returns once no machine pass is running or queued (tests and tools use it)."""
        while True:
            tasks = [w.task for w in self._workers.values() if w.task and not w.task.done()]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def resync(self) -> None:
        """Re-reads every domain: reports orphans and runs a pass for every machine."""
        domains = await self.hypervisor.list_domains()
        if not self._knows_desired:
            return
        orphans = sorted(name for name, status in domains.items() if self._is_orphan(status))
        if orphans != self._reported_orphans:
            self._reported_orphans = orphans
            try:
                await self._report_orphans_callback(orphans)
            except Exception:
                log.exception("reporting orphans failed")
        for machine_id in list(self._desired):
            self._poke_machine(machine_id)
        if self.gc_orphans:
            claimed = {assignment.domain_name for assignment in self._desired.values()}
            stray_overlays = self.disks.domains() - set(domains) - claimed
            for name in [*orphans, *sorted(stray_overlays)]:
                self._poke(f"orphan:{name}", functools.partial(self._collect_orphan, name))

    # -- scheduling ---------------------------------------------------------------------

    def _poke_machine(self, machine_id: str) -> None:
        self._poke(f"machine:{machine_id}", lambda: self._reconcile_machine(machine_id))

    def _poke(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        if self._closed:
            return
        worker = self._workers.get(key)
        if worker is not None and worker.task is not None and not worker.task.done():
            worker.again = True
            return
        worker = self._workers[key] = _Worker()
        worker.task = asyncio.create_task(self._work(key, worker, job), name=key)

    async def _work(self, key: str, worker: _Worker, job: Callable[[], Awaitable[None]]) -> None:
        try:
            while True:
                worker.again = False
                async with self._slots:
                    try:
                        await job()
                    except HypervisorUnavailable as error:
                        log.warning("%s: %s", key, error)
                    except Exception:
                        log.exception("%s: pass failed", key)
                if not worker.again:
                    break
        finally:
            if self._workers.get(key) is worker:
                del self._workers[key]

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _forget(self, machine_id: str) -> None:
        if self._reported.pop(machine_id, None) is not None:
            self._count_states()
        self._notes.pop(machine_id, None)
        self._unavailable.pop(machine_id, None)
        retry = self._retries.pop(machine_id, None)
        if retry is not None:
            retry.cancel()
        assignment = self._desired.get(machine_id)
        if assignment is not None:
            self._cancel_stop(assignment.domain_name)

    def _is_orphan(self, status: DomainStatus) -> bool:
        """Ours, but no desired machine owns it under this name."""
        if status.metadata is None:
            return False
        assignment = self._desired.get(status.metadata.machine_id)
        return assignment is None or assignment.domain_name != status.name

    def _claimants(self, name: str) -> list[str]:
        return list(self._claims.get(name, ()))

    def _unclaim(self, machine_id: str) -> None:
        assignment = self._desired.get(machine_id)
        if assignment is None:
            return
        claims = self._claims.get(assignment.domain_name)
        if claims is not None:
            claims.pop(machine_id, None)
            if not claims:
                del self._claims[assignment.domain_name]

    async def _resync_loop(self) -> None:
        failures = 0
        while True:
            self._resync_wanted.clear()
            wait = self.resync_interval
            try:
                await self.resync()
                failures = 0
            except HypervisorUnavailable as error:
                # Soon again, not in a whole interval: this resync is what re-reads
                # every domain once libvirtd is back.
                log.warning("resync: %s", error)
                wait = min(wait, backoff_delay(failures))
                failures += 1
                # The failure itself announced a lost connection (a resync request): that
                # must not cut the backoff short.
                self._resync_wanted.clear()
            except Exception as error:
                log.warning("resync failed: %s", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: it may swallow a cancel
                    await self._resync_wanted.wait()

    async def sample_cpu(self) -> None:
        """Send each running machine's guest CPU time with its last report: the server's idle
        shutdown reads the load from how much it grew between samples."""
        times = await self.hypervisor.cpu_times()
        for machine_id, assignment in list(self._desired.items()):
            last = self._reported.get(machine_id)
            seconds = times.get(assignment.domain_name)
            if last is None or last.state != "running" or seconds is None or machine_id in self._in_pass:
                continue
            report = replace(last, cpu_seconds=seconds)
            self._reported[machine_id] = report
            try:
                await self._report_callback(report)
            except Exception:
                log.exception("reporting the CPU time of machine %s failed", machine_id)

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cpu_sample_interval)
            try:
                await self.sample_cpu()
            except HypervisorUnavailable as error:
                log.warning("CPU sample: %s", error)  # the resync loop handles the reconnection
            except Exception:
                log.exception("CPU sample failed")

    # -- events and reports -------------------------------------------------------------

    def _on_lifecycle(self, name: str, state: ObservedState) -> None:
        for machine_id in self._claimants(name):
            if machine_id in self._in_pass:
                # A pass is changing this domain right now (e.g. a reset destroys it on the
                # way); it reports where it ends, and runs again to catch up with the event.
                # Except the start it was making: the guest runs now, and the pass's last calls
                # (recording the generation, reading the domain back) may wait seconds for a
                # slot behind a class's other starts. What the pass will then report is this
                # same report (the generation it carries out), so it is not sent twice.
                assignment = self._desired.get(machine_id)
                if state == "running" and assignment is not None and assignment.desired == "running":
                    self._report_soon(machine_id, Outcome("running", None, assignment.power_generation))
                self._poke_machine(machine_id)
                continue
            # An event changes the state, never the generation recorded in the domain.
            last = self._reported.get(machine_id)
            recorded = last.power_generation if last is not None else None
            self._report_soon(machine_id, Outcome(state, None, recorded))
            self._poke_machine(machine_id)

    def _report_soon(self, machine_id: str, outcome: Outcome) -> None:
        task = asyncio.get_running_loop().create_task(self._report(machine_id, outcome))
        # The loop keeps only weak references to tasks.
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report(self, machine_id: str, outcome: Outcome) -> None:
        report = StateReport(machine_id, *outcome)
        last = self._reported.get(machine_id)
        # A CPU sample sent since is no news of the state: the same state is not sent again.
        if machine_id not in self._desired or (last is not None and replace(last, cpu_seconds=None) == report):
            return
        self._reported[machine_id] = report
        assignment = self._desired[machine_id]
        # Reports come from libvirt's events too, outside any pass: their lines still name the
        # machine, its lab and the request that last changed it (agent.logs).
        with structlog.contextvars.bound_contextvars(
                machine=assignment.vm_name, lab=assignment.deployment, request_id=assignment.request_id):
            if last is None or last.state != report.state:
                self._count_states()
                log.info("%s is %s%s", assignment.vm_name, report.state,
                         f": {report.message}" if report.message else "")
            try:
                await self._report_callback(report)
            except Exception:
                log.exception("reporting %s for machine %s failed", report.state, machine_id)

    # -- one machine --------------------------------------------------------------------

    def _count_states(self) -> None:
        """The domains by the state last reported (`kubekvm_agent_domains`)."""
        counts = Counter(report.state for report in self._reported.values())
        metrics.DOMAINS.clear()
        for state, n in counts.items():
            metrics.DOMAINS.labels(state=state).set(n)

    async def _reconcile_machine(self, machine_id: str) -> None:
        assignment = self._desired.get(machine_id)
        if assignment is None:
            return
        # Every line this pass logs names the machine, its lab and the request that last
        # changed it (agent.logs): one grep follows a click on the server to the steps here.
        with structlog.contextvars.bound_contextvars(
                machine=assignment.vm_name, lab=assignment.deployment, request_id=assignment.request_id):
            started = time.monotonic()
            outcome = await self._reconcile_pass(machine_id, assignment.domain_name)
            if outcome is not None:
                metrics.RECONCILE_PASSES.labels(outcome=outcome).inc()
                metrics.RECONCILE_DURATION.observe(time.monotonic() - started)

    async def _reconcile_pass(self, machine_id: str, domain: str) -> str | None:
        """One pass; how it went (ok, error, unavailable), or None if there was nothing to do."""
        async with self._lock(domain):
            # Re-read: the assignment may have changed while this pass waited for the lock.
            assignment = self._desired.get(machine_id)
            if assignment is None:
                return None
            self._in_pass.add(machine_id)
            try:
                outcome = await self._converge(assignment)
            except HypervisorUnavailable as error:
                log.warning("machine %s (%s): %s", machine_id, assignment.domain_name, error)
                await self._libvirt_unavailable(machine_id, str(error))
                return "unavailable"
            except (HypervisorError, DiskError, OSError) as error:
                log.warning("machine %s (%s): %s", machine_id, assignment.domain_name, error)
                outcome = Outcome("error", str(error))
            finally:
                self._in_pass.discard(machine_id)
        self._unavailable.pop(machine_id, None)
        note = self._notes.get(machine_id)
        if note is not None and note[0] != outcome.state:
            del self._notes[machine_id]
        elif note is not None and outcome.message is None:
            outcome = outcome._replace(message=note[1])
        await self._report(machine_id, outcome)
        return "error" if outcome.state == "error" else "ok"

    async def _libvirt_unavailable(self, machine_id: str, reason: str) -> None:
        """Not a machine error: keep what was reported (nothing, after a new snapshot: the
        server keeps what it knew), unless that was "pending" (the pass was making the
        machine: say what it waits for), and try again after a backoff."""
        failures = self._unavailable.get(machine_id, 0)
        self._unavailable[machine_id] = failures + 1
        last = self._reported.get(machine_id)
        if last is not None and last.state == "pending":
            await self._report(machine_id, Outcome("pending", f"waiting for libvirtd: {reason}"))
        previous = self._retries.pop(machine_id, None)
        if previous is not None:
            previous.cancel()
        self._retries[machine_id] = asyncio.get_running_loop().call_later(
            backoff_delay(failures), self._retry_machine, machine_id)

    def _retry_machine(self, machine_id: str) -> None:
        self._retries.pop(machine_id, None)
        self._poke_machine(machine_id)

    async def _converge(self, assignment: Assignment) -> Outcome:
        name = assignment.domain_name
        status = await self.hypervisor.status(name)
        if status is not None and status.metadata is None:
            if assignment.desired == "absent":
                return Outcome("absent", f"libvirt domain {name} is not KubeKVM's; left alone")
            return Outcome("error", f"libvirt domain {name} exists but is not managed by KubeKVM")
        if status is not None and status.metadata is not None and (
            status.metadata.machine_id != assignment.machine_id
        ):
            owner = status.metadata.machine_id
            if assignment.desired == "absent":
                return Outcome("absent", None)
            if not self._is_orphan(status):
                return Outcome("pending", f"waiting for machine {owner} to release domain {name}")
            if not self.gc_orphans:
                return Outcome("error", (
                    f"domain {name} belongs to machine {owner}, which is not assigned to this "
                    "host; remove it or run the agent with --gc-orphans"
                ))
            await self._remove(name)
            status = None

        if assignment.desired == "absent":
            if status is not None:
                await self._remove(name)
            else:
                await self.disks.delete(name)
                self._serial_log(name).unlink(missing_ok=True)
            for other in self._claimants(name):
                if other != assignment.machine_id:
                    self._poke_machine(other)
            return Outcome("absent", None)

        if not self.accelerator.usable:
            return Outcome("error", self.accelerator.reason)
        provisioned = await self._provision(assignment, status)
        if isinstance(provisioned, tuple):
            return provisioned
        if assignment.desired == "running":
            await self._power_on(assignment, provisioned)
            message = None
        else:
            message = await self._power_off(assignment, provisioned)
        final = await self.hypervisor.status(name)
        if (assignment.desired == "stopped" and provisioned.active and final is not None
                and not final.active):
            # The guest went off during this pass: finish the stop (record the generation)
            # rather than report "shutting down" for a machine that is off.
            message = await self._power_off(assignment, final)
            final = await self.hypervisor.status(name)
        if final is None:
            return Outcome("absent", None)
        if assignment.publish_job and self.publisher is not None and assignment.desired == "stopped" \
                and not final.active:
            self.publisher.request(assignment.publish_job, vm=assignment.vm_name, domain=name)
        recorded = final.metadata.power_generation if final.metadata is not None else None
        return Outcome(final.state, message, recorded)

    async def _provision(
        self, assignment: Assignment, status: DomainStatus | None
    ) -> DomainStatus | Outcome:
        """Overlay and definition, including resets; returns the domain or a failure."""
        name = assignment.domain_name
        template = assignment.template
        assert status is None or status.metadata is not None
        reset = status is not None and status.metadata is not None and (
            assignment.reset_generation > status.metadata.reset_generation
        )
        overlay_missing = not self.disks.exists(name)
        if not (reset or overlay_missing or status is None):
            return status
        base = self.images.base(template.image)
        if not base.is_file():
            pull = self.pulls.request(template.image) if self.pulls is not None else None
            if pull is None:
                return Outcome("error", self.images.missing_message(template.image))
            return Outcome("error", pull.error) if pull.error else Outcome("pending", pull.describe())
        if reset:
            await self._report(assignment.machine_id, Outcome(
                "pending", f"resetting to a fresh copy of {template.image}"))
            self._cancel_stop(name)
            await self.hypervisor.destroy(name)
            await self.disks.create(name, base=base, size_gib=template.disk_gib)
            assert status is not None
            await self.hypervisor.define(self._definition(assignment, domain_uuid=status.uuid))
        else:
            # Each step says itself, so a slow one is shown as the step it is (the server shows
            # how long it has been waiting on it).
            if overlay_missing:
                await self._report(assignment.machine_id, Outcome(
                    "pending", f"creating: cloning the disk from {template.image}"))
                await self.disks.create(name, base=base, size_gib=template.disk_gib)
            if status is None:
                await self._report(assignment.machine_id, Outcome("pending", "creating: defining the VM"))
                await self.hypervisor.define(self._definition(assignment))
        defined = await self.hypervisor.status(name)
        if defined is None or defined.metadata is None:
            return Outcome("error", f"libvirt did not keep the definition of {name}")
        return defined

    async def _power_on(self, assignment: Assignment, status: DomainStatus) -> None:
        name = assignment.domain_name
        assert status.metadata is not None
        self._cancel_stop(name)
        if status.metadata.power_generation >= assignment.power_generation:
            return  # this request was carried out already; the guest may have left since
        if status.state == "crashed" and status.active:
            await self.hypervisor.destroy(name)  # a crashed-but-kept guest cannot resume
            await self.hypervisor.start(name)
        elif status.state == "paused":
            await self.hypervisor.resume(name)
        elif not status.active:
            await self.hypervisor.start(name)
        # Recorded after acting: a crash in between repeats the (idempotent) start.
        await self.hypervisor.set_metadata(
            name, replace(status.metadata, power_generation=assignment.power_generation)
        )

    async def _power_off(self, assignment: Assignment, status: DomainStatus) -> str | None:
        name = assignment.domain_name
        assert status.metadata is not None
        loop = asyncio.get_running_loop()
        message = None
        if status.active:
            deadline = self._stop_deadlines.get(name)
            if status.state != "running" or (deadline is not None and loop.time() >= deadline):
                # A paused guest cannot see the ACPI button; a deaf one had its grace.
                await self.hypervisor.destroy(name)
                self._cancel_stop(name)
                if deadline is not None:
                    message = f"forced off: no ACPI shutdown within {self.stop_grace:g} s"
                    self._notes[assignment.machine_id] = ("shutoff", message)
            else:
                now = loop.time()
                next_press = self._next_presses.get(name, now)
                if now >= next_press:
                    await self.hypervisor.shutdown(name)
                    next_press = loop.time() + ACPI_PRESS_INTERVAL
                    self._next_presses[name] = next_press
                if deadline is None:  # the grace runs from the first press that went through
                    deadline = loop.time() + self.stop_grace
                    self._stop_deadlines[name] = deadline
                # The next press, or the end of the grace: a pass then looks again.
                self._set_timer(name, min(next_press, deadline), assignment.machine_id)
                return f"shutting down; forcing off after {self.stop_grace:g} s"
        else:
            self._cancel_stop(name)
        if status.metadata.power_generation < assignment.power_generation:
            await self.hypervisor.set_metadata(
                name, replace(status.metadata, power_generation=assignment.power_generation)
            )
        return message

    def _set_timer(self, name: str, when: float, machine_id: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._timers[name] = asyncio.get_running_loop().call_at(when, self._poke_machine, machine_id)

    def _cancel_stop(self, name: str) -> None:
        self._stop_deadlines.pop(name, None)
        self._next_presses.pop(name, None)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    async def _remove(self, name: str) -> None:
        self._cancel_stop(name)
        await self.hypervisor.destroy(name)
        await self.disks.delete(name)
        self._serial_log(name).unlink(missing_ok=True)
        await self.hypervisor.undefine(name)

    async def _collect_orphan(self, name: str) -> None:
        async with self._lock(name):
            if self._claimants(name):
                return  # a desired machine wants this name; its own pass decides
            status = await self.hypervisor.status(name)
            if status is None:
                if await self.disks.delete(name):
                    log.info("removed stray overlay of %s", name)
                return
            if status.metadata is None or not self._is_orphan(status):
                return
            log.info("removing orphan domain %s (machine %s)", name, status.metadata.machine_id)
            await self._remove(name)

    def _serial_log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _definition(self, assignment: Assignment, *, domain_uuid: str | None = None) -> str:
        name = assignment.domain_name
        return domain_xml(
            assignment,
            domain_type=self.accelerator.domain_type,
            overlay=self.disks.path(name),
            serial_log=self._serial_log(name),
            boot=self.images.direct_boot(assignment.template.image, template=assignment.template.name),
            metadata=MachineMetadata.for_assignment(assignment, power_generation=NEVER_POWERED),
            domain_uuid=domain_uuid,
        )

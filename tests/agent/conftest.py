"""Shared fixtures of the agent tests: labs with unique names, image dirs, report recorders.

libvirt's test driver (``test:///default``) keeps one in-memory hypervisor per process that
every connection shares, so each test names its labs ``t<random>`` and removes its domains.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
from tests.support.qemu import QEMU_URI, build_tiny_linux, ensure_libvirtd, scratch, traversable_dir

from agent.accelerator import Accelerator
from agent.assignment import Assignment, TemplateSpec
from agent.hypervisor import Hypervisor
from agent.images import Images
from agent.machine_state import DesiredState, ObservedState, StateReport
from agent.reconciler import Reconciler

TEST_URI = "test:///default"


@dataclass
class Reports:
    """Records what a reconciler reports, with the time each report arrived."""

    states: list[tuple[float, str, ObservedState, str | None]] = field(default_factory=list)
    # Every report as sent, generation included.
    sent: list[StateReport] = field(default_factory=list)
    orphans: list[list[str]] = field(default_factory=list)

    async def report(self, report: StateReport) -> None:
        self.states.append((time.monotonic(), report.machine_id, report.state, report.message))
        self.sent.append(report)

    async def report_orphans(self, names: list[str]) -> None:
        self.orphans.append(list(names))

    def latest(self, machine_id: str) -> tuple[ObservedState, str | None] | None:
        for _, mid, state, message in reversed(self.states):
            if mid == machine_id:
                return state, message
        return None

    def state(self, machine_id: str) -> ObservedState | None:
        latest = self.latest(machine_id)
        return latest[0] if latest else None

    async def wait(self, predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; reports so far: {self.states[-12:]}")
            await asyncio.sleep(0.02)  # the poll interval

    async def wait_states(
        self, expected: dict[str, ObservedState], *, timeout: float = 10.0
    ) -> None:
        await self.wait(
            lambda: all(self.state(mid) == state for mid, state in expected.items()),
            timeout=timeout,
        )


def make_assignment(
    lab: str,
    index: int,
    *,
    desired: DesiredState = "running",
    image: str = "tiny-linux.qcow2",
    reset_generation: int = 0,
    power_generation: int = 1,
    memory_mib: int = 64,
    machine_id: str | None = None,
) -> Assignment:
    return Assignment(
        machine_id=machine_id or f"m-{lab}-{index}",
        vm_name=f"{lab}-{index}",
        deployment=lab,
        index=index,
        desired=desired,
        reset_generation=reset_generation,
        power_generation=power_generation,
        template=TemplateSpec(
            name="tiny", image=image, os="linux", vcpus=1, memory_mib=memory_mib, disk_gib=0
        ),
    )


@pytest.fixture(name="make_assignment")
def make_assignment_fixture() -> Callable[..., Assignment]:
    return make_assignment


@pytest.fixture(name="make_base_image")
def make_base_image_fixture() -> Callable[..., Path]:
    return make_base_image


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def lab() -> str:
    return f"t{secrets.token_hex(4)}"


def make_base_image(directory: Path, name: str = "tiny-linux.qcow2") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "images"
    make_base_image(directory)
    return directory


def remove_domains(uri: str, prefix: str) -> None:
    connection = libvirt.open(uri)
    try:
        for domain in connection.listAllDomains(0):
            if domain.name().startswith(prefix):
                if domain.isActive():
                    domain.destroy()
                if domain.isPersistent():
                    domain.undefine()
    finally:
        connection.close()


@pytest.fixture
def cleanup_test_domains(lab: str) -> Iterator[None]:
    yield
    remove_domains(TEST_URI, f"kubekvm-{lab}")


@dataclass
class Rig:
    """A reconciler on the test driver plus what it reports."""

    reconciler: Reconciler
    reports: Reports
    hypervisor: Hypervisor
    state_dir: Path
    image_dir: Path


async def start_rig(*, hypervisor: Hypervisor, image_dir: Path, state_dir: Path,
                    accelerator: Accelerator, **options: object) -> Rig:
    reports = Reports()
    reconciler = Reconciler(
        hypervisor=hypervisor,
        images=Images(image_dir),
        state_dir=state_dir,
        accelerator=accelerator,
        report=reports.report,
        report_orphans=reports.report_orphans,
        **options,  # type: ignore[arg-type]
    )
    await reconciler.start()
    return Rig(reconciler, reports, hypervisor, state_dir, image_dir)


async def close_rigs(rigs: list[Rig]) -> None:
    for rig in rigs:
        await rig.reconciler.close()
        await rig.hypervisor.close()


@pytest.fixture
async def make_rig(
    tmp_path: Path, image_dir: Path, cleanup_test_domains: None
) -> AsyncIterator[Callable[..., object]]:
    """Starts reconcilers on the test driver; several may share its domains."""
    rigs: list[Rig] = []

    async def make(
        *,
        hypervisor: Hypervisor | None = None,
        accelerator: Accelerator | None = None,
        **options: object,
    ) -> Rig:
        rig = await start_rig(
            hypervisor=hypervisor or Hypervisor(TEST_URI), image_dir=image_dir,
            state_dir=tmp_path / "state",
            accelerator=accelerator or Accelerator("qemu", True, "tests"), **options,
        )
        rigs.append(rig)
        return rig

    yield make
    await close_rigs(rigs)


# -- real QEMU ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def libvirtd() -> str:
    return ensure_libvirtd()


@pytest.fixture(scope="session")
def tiny_linux() -> Path:
    return build_tiny_linux()


@dataclass
class QemuSite:
    """Per-test directories QEMU can reach, with a private copy of the guest images."""

    root: Path
    image_dir: Path
    state_dir: Path

    def add_image(self, stem: str, *, cmdline: str = "") -> str:
        for suffix in ("kernel", "initrd", "qcow2"):
            shutil.copyfile(self.image_dir / f"tiny-linux.{suffix}",
                            self.image_dir / f"{stem}.{suffix}")
        if cmdline:
            (self.image_dir / f"{stem}.cmdline").write_text(cmdline + "\n")
        return f"{stem}.qcow2"

    def serial_log(self, domain: str) -> Path:
        return self.state_dir / "logs" / f"{domain}.log"


@pytest.fixture
def qemu_site(libvirtd: str, tiny_linux: Path, lab: str) -> Iterator[QemuSite]:
    """Removed afterwards, on every way out, with the lab's domains (also one whose definition
    a killed reconciler left half-written)."""
    with scratch(lab) as root:
        try:
            image_dir = traversable_dir(root / "images")
            for path in tiny_linux.iterdir():
                if not path.name.startswith("."):
                    shutil.copyfile(path, image_dir / path.name)
            yield QemuSite(root=root, image_dir=image_dir, state_dir=root / "state")
        finally:
            remove_domains(QEMU_URI, f"kubekvm-{lab}")


@pytest.fixture
async def make_qemu_rig(qemu_site: QemuSite) -> AsyncIterator[Callable[..., object]]:
    rigs: list[Rig] = []

    async def make(**options: object) -> Rig:
        rig = await start_rig(
            hypervisor=Hypervisor(QEMU_URI), image_dir=qemu_site.image_dir,
            state_dir=qemu_site.state_dir,
            accelerator=Accelerator("qemu", True, "tests run under TCG"), **options,
        )
        rigs.append(rig)
        return rig

    yield make
    await close_rigs(rigs)

"""Accelerator: whether this host's machines run under KVM or QEMU's emulator (TCG).

libvirt offering a ``kvm`` domain type only means ``/dev/kvm`` opens. Some hosts have a KVM
that cannot run an ordinary guest (nested setups, paravirtual-only KVMs such as kvm_pvm):
the domain starts, libvirt says "running", and the guest never executes a single kernel
instruction. So before trusting KVM the agent boots a probe: a transient domain whose BIOS
is a 64 KiB ROM written here that walks a CPU from real mode through protected mode into
64-bit long mode, printing ``R``, ``P`` and ``L`` to the serial port on the way. Only an
``L`` within a few seconds counts as "KVM works".

``--domain-type auto`` picks kvm when offered and the probe passes, else qemu; ``kvm``
forced but failing yields an unusable accelerator, which the reconciler turns into an error
state with the reason for every machine instead of starting guests that would hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.hypervisor import Hypervisor, HypervisorError

log = logging.getLogger(__name__)

DomainTypeRequest = Literal["auto", "kvm", "qemu"]
# Two dashes: lab names never start with '-', so no machine's domain can have this name.
PROBE_DOMAIN = "kubekvm--probe"
PROBE_TIMEOUT = 5.0

# Assembled from this GNU as source (ld -Ttext=0 --oformat=binary); `putc` waits for the
# UART's transmit register to empty, because QEMU drops bytes written while it is busy:
#   .code16: cli; putc 'R'; lgdtl %cs:gdt_desc; cr0 |= PE; ljmpl $0x08, $0xF0000+pm32
#   .code32: load 0x10 into ds/es/ss; putc 'P'; identity-map 2 MiB with a 2 MiB page
#            (PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 = 0x83); cr3 = 0x1000; cr4 |= PAE;
#            EFER |= LME; cr0 |= PG; ljmp $0x18, $0xF0000+lm64
#   .code64: putc 'L'; putc '\n'; 1: hlt; jmp 1b
#   gdt: null, 32-bit code 0x00CF9A000000FFFF, data 0x00CF92000000FFFF,
#        64-bit code 0x00AF9A000000FFFF
_PROBE_CODE = bytes.fromhex(
    "fabaf803b05288c3bafd03eca82074fbbaf80388d8ee2e660f011608010f20c0"
    "6683c8010f22c066ea2f000f00080066b810008ed88ec08ed0b05088c366bafd"
    "03eca82074fb66baf80388d8eec7050010000003200000c70504100000000000"
    "00c7050020000003300000c7050420000000000000c7050030000083000000c7"
    "050430000000000000b8001000000f22d80f20e083c8200f22e0b9800000c00f"
    "320d000100000f300f20c00d000000800f22c0eaba000f001800b04c88c366ba"
    "fd03eca82074fb66baf80388d8eeb00a88c366bafd03eca82074fb66baf80388"
    "d8eef4ebfd0f1f000000000000000000ffff0000009acf00ffff00000092cf00"
    "ffff0000009aaf001f00e8000f00"
)
_ROM_SIZE = 64 * 1024
# At reset the CPU runs the ROM's last 16 bytes; jump far to its start (0xF000:0000).
_RESET_JUMP = bytes([0xEA, 0x00, 0x00, 0x00, 0xF0])


def probe_rom() -> bytes:
    rom = bytearray(b"\xf4" * _ROM_SIZE)  # hlt everywhere else
    rom[: len(_PROBE_CODE)] = _PROBE_CODE
    rom[_ROM_SIZE - 16 : _ROM_SIZE - 16 + len(_RESET_JUMP)] = _RESET_JUMP
    return bytes(rom)


@dataclass(frozen=True, slots=True)
class Accelerator:
    domain_type: str
    usable: bool
    reason: str


async def choose_accelerator(
    hypervisor: Hypervisor,
    *,
    requested: DomainTypeRequest,
    work_dir: Path,
    probe_timeout: float = PROBE_TIMEOUT,
) -> Accelerator:
    if requested == "qemu":
        return Accelerator("qemu", True, "--domain-type qemu: software emulation (TCG)")
    if not await hypervisor.offers_domain_type("kvm"):
        if requested == "kvm":
            return Accelerator(
                "kvm", False,
                "--domain-type kvm, but libvirt offers no kvm domain type on this host "
                "(no usable /dev/kvm)",
            )
        return Accelerator("qemu", True, "libvirt offers no kvm domain type; using TCG")
    works, detail = await probe_kvm(hypervisor, work_dir=work_dir, timeout=probe_timeout)
    if works:
        return Accelerator("kvm", True, f"kvm offered and {detail}")
    if requested == "kvm":
        return Accelerator(
            "kvm", False, f"--domain-type kvm, but KVM cannot run a guest here: {detail}"
        )
    return Accelerator("qemu", True, f"kvm offered but unusable ({detail}); using TCG")


async def probe_kvm(
    hypervisor: Hypervisor,
    *,
    work_dir: Path,
    timeout: float = PROBE_TIMEOUT,
    domain_type: str = "kvm",
) -> tuple[bool, str]:
    """Boots the probe ROM under KVM; returns (works, what happened).

    ``domain_type="qemu"`` runs the same probe under TCG, which proves the ROM itself."""
    rom, serial_log = await asyncio.to_thread(_write_probe_files, work_dir)
    # A probe left running by a killed agent would keep the name taken.
    await hypervisor.destroy(PROBE_DOMAIN)
    started = time.monotonic()
    try:
        await hypervisor.create_transient(
            _probe_xml(rom=rom, serial_log=serial_log, domain_type=domain_type)
        )
    except HypervisorError as error:
        return False, f"the probe guest did not start: {error}"
    output = ""
    try:
        while time.monotonic() - started < timeout:
            output = await asyncio.to_thread(serial_log.read_text, errors="replace")
            if "L" in output:
                return True, "a probe guest reached 64-bit mode under it"
            await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(HypervisorError):
            await hypervisor.destroy(PROBE_DOMAIN)
    stages = {
        "": "never ran its first instruction",
        "R": "hung switching to protected mode",
        "RP": "hung switching to 64-bit long mode",
    }
    stage = stages.get(output.strip(), f"printed {output!r}")
    return False, f"a probe guest {stage} within {timeout:.0f} s"


def _write_probe_files(work_dir: Path) -> tuple[Path, Path]:
    work_dir.mkdir(parents=True, exist_ok=True)
    work_dir.chmod(0o755)  # QEMU runs as its own user and must reach the ROM
    rom, serial_log = work_dir / "kvm-probe.rom", work_dir / "kvm-probe.log"
    rom.write_bytes(probe_rom())
    rom.chmod(0o644)
    serial_log.write_bytes(b"")
    return rom, serial_log


def _probe_xml(*, rom: Path, serial_log: Path, domain_type: str) -> str:
    domain = ET.Element("domain", type=domain_type)
    ET.SubElement(domain, "name").text = PROBE_DOMAIN
    ET.SubElement(domain, "memory", unit="MiB").text = "16"
    ET.SubElement(domain, "vcpu").text = "1"
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_element, "loader", readonly="yes", type="rom").text = str(rom)
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(domain, event).text = "destroy"
    devices = ET.SubElement(domain, "devices")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(serial_log))
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")

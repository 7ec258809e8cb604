"""The two baselines of the provisioning benchmark, on the same libvirtd and base image.

- ``raw_limit``: only the necessary calls, made directly: ``qemu-img create`` of a linked
  clone, ``defineXML`` and ``create`` through libvirt-python, every machine on its own thread
  and connection (libvirtd serves up to 20 calls at once by default), timed from the first
  call to the last ``create()`` returning, which libvirt does once the domain runs (each
  domain's state is checked to be RUNNING afterwards).
- ``seed_method``: what the project's seed daemon did: a full ``virt-clone`` copy of a
  template domain's disk per machine, then ``virsh start``, one machine after the other.
  The seed then noticed state with a 30 s poll; that wait is reported as its own figure
  (``SEED_POLL_SECONDS``), never added to the measured total.

Both build the same domain XML as the agent (``agent.domain_xml``) under a ``bench-`` name,
so every method boots the same guest, and both remove every domain and file they made,
also on failure.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from agent.assignment import Assignment, TemplateSpec
from agent.domain_xml import MachineMetadata, domain_xml
from agent.images import DirectBoot
from benchmarks.guest_images import GuestImage
from benchmarks.stack import LIBVIRT_URI, remove_pools, stop_and_undefine, traversable_dir
from benchmarks.stats import summary

SEED_POLL_SECONDS = 30.0
LIBVIRTD_MAX_WORKERS = 20


def bench_domain_xml(image: GuestImage, *, name: str, disk: Path, serial_log: Path | None) -> str:
    """The agent's XML for a tiny-linux machine of ``image``, renamed to ``name``."""
    assignment = Assignment(
        machine_id=name, vm_name=name, deployment="bench", index=1, desired="running", reset_generation=0,
        template=TemplateSpec(name=image.stem, image=image.image, os="linux", vcpus=1, memory_mib=128,
                              disk_gib=1),
    )
    xml = domain_xml(assignment, domain_type="qemu", overlay=disk, serial_log=serial_log or disk.with_suffix(".log"),
                     boot=DirectBoot(image.kernel, image.initrd, ""),
                     metadata=MachineMetadata.for_assignment(assignment))
    root = ET.fromstring(xml)
    name_element = root.find("name")
    assert name_element is not None
    name_element.text = name
    uuid_element = root.find("uuid")
    if uuid_element is not None:
        root.remove(uuid_element)  # libvirt makes a fresh one
    if serial_log is None:
        devices = root.find("devices")
        assert devices is not None
        for serial in devices.findall("serial"):
            devices.remove(serial)
    return ET.tostring(root, encoding="unicode")


@dataclass
class _Times:
    began: float = 0.0
    cloned: float = 0.0
    defined: float = 0.0
    started: float = 0.0


def _remove_domains(connection: libvirt.virConnect, names: list[str]) -> None:
    for name in names:
        try:
            stop_and_undefine(connection.lookupByName(name))
        except libvirt.libvirtError:
            continue  # never defined


def raw_limit(image: GuestImage, work: Path, count: int, *, tag: str) -> dict[str, Any]:
    """Overlay + define + start for ``count`` machines, all at once, timed to all running."""
    directory = traversable_dir(work / f"raw-{tag}")
    names = [f"bench-raw-{tag}-{i}" for i in range(1, count + 1)]
    xmls = {name: bench_domain_xml(image, name=name, disk=directory / f"{name}.qcow2",
                                   serial_log=directory / f"{name}.log") for name in names}
    connections = [libvirt.open(LIBVIRT_URI) for _ in range(min(count, LIBVIRTD_MAX_WORKERS))]
    times = {name: _Times() for name in names}
    lock = threading.Lock()

    def provision(position: int) -> None:
        name = names[position]
        connection = connections[position % len(connections)]
        stamp = times[name]
        stamp.began = time.monotonic()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.base), "-F", "qcow2",
                        str(directory / f"{name}.qcow2")], check=True)
        stamp.cloned = time.monotonic()
        domain = connection.defineXML(xmls[name])
        stamp.defined = time.monotonic()
        domain.create()
        with lock:
            stamp.started = time.monotonic()

    try:
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(provision, range(count)))
        finished = max(t.started for t in times.values())
        states = [connections[0].lookupByName(name).state()[0] for name in names]
        if any(state != libvirt.VIR_DOMAIN_RUNNING for state in states):
            raise RuntimeError(f"raw limit: not every domain runs: {states}")
        return {
            "total_s": round(finished - began, 3),
            "milestones_s": {
                "last_overlay": round(max(t.cloned for t in times.values()) - began, 3),
                "last_defined": round(max(t.defined for t in times.values()) - began, 3),
                "last_running": round(finished - began, 3),
            },
            "per_machine_s": {
                "clone": summary([t.cloned - t.began for t in times.values()]),
                "define": summary([t.defined - t.cloned for t in times.values()]),
                "start": summary([t.started - t.defined for t in times.values()]),
            },
            "connections": len(connections),
            "threads": count,
        }
    finally:
        _remove_domains(connections[0], names)
        for connection in connections:
            connection.close()
        shutil.rmtree(directory, ignore_errors=True)


def seed_method(image: GuestImage, work: Path, count: int, *, tag: str) -> dict[str, Any]:
    """``virt-clone`` (full copy) then ``virsh start``, machine after machine."""
    directory = traversable_dir(work / f"seed-{tag}")
    template = f"bench-seed-{tag}-template"
    names = [f"bench-seed-{tag}-{i}" for i in range(1, count + 1)]
    connection = libvirt.open(LIBVIRT_URI)
    clone_times: list[float] = []
    start_times: list[float] = []
    try:
        connection.defineXML(bench_domain_xml(image, name=template, disk=image.base, serial_log=None))
        began = time.monotonic()
        for name in names:
            before = time.monotonic()
            subprocess.run(["virt-clone", "--connect", LIBVIRT_URI, "--original", template, "--name", name,
                            "--file", str(directory / f"{name}.qcow2")],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            cloned = time.monotonic()
            subprocess.run(["virsh", "-q", "-c", LIBVIRT_URI, "start", name], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            started = time.monotonic()
            clone_times.append(cloned - before)
            start_times.append(started - cloned)
        finished = time.monotonic()
        states = [connection.lookupByName(name).state()[0] for name in names]
        if any(state != libvirt.VIR_DOMAIN_RUNNING for state in states):
            raise RuntimeError(f"seed method: not every domain runs: {states}")
        copied = sum((directory / f"{name}.qcow2").stat().st_blocks * 512 for name in names)
        return {
            "total_s": round(finished - began, 3),
            "poll_s": SEED_POLL_SECONDS,
            "per_machine_s": {"clone": summary(clone_times), "start": summary(start_times)},
            "copied_gib": round(copied / 1024**3, 2),
        }
    finally:
        _remove_domains(connection, [*names, template])
        remove_pools(connection, work)  # virt-clone made them for the source's and the copies' directories
        connection.close()
        shutil.rmtree(directory, ignore_errors=True)

"""What machine the figures were taken on: CPUs, memory, CPU model, kernel, libvirt, QEMU.

Every results file carries this, so a figure is never separated from the machine it was
measured on.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _version(text: int) -> str:
    major, rest = divmod(text, 1_000_000)
    minor, micro = divmod(rest, 1000)
    return f"{major}.{minor}.{micro}"


def _libvirt_versions(uri: str) -> dict[str, str]:
    try:
        import libvirt

        connection = libvirt.open(uri)
    except Exception as error:  # libvirtd down: say so rather than fail the whole report
        return {"libvirt": f"unavailable ({error})"}
    try:
        return {
            "libvirt_library": _version(libvirt.getVersion()),
            "libvirt_daemon": _version(connection.getLibVersion()),
            "qemu_hypervisor": _version(connection.getVersion()),
        }
    finally:
        connection.close()


def _qemu_binary() -> str:
    try:
        output = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                                timeout=10, check=False).stdout
    except OSError:
        return "not installed"
    return output.splitlines()[0] if output else "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe(libvirt_uri: str = "qemu:///system") -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        **_libvirt_versions(libvirt_uri),
        "qemu_binary": _qemu_binary(),
        # The benchmarks' guests always use domain type qemu (TCG): this machine's /dev/kvm
        # cannot run guests, and the figures must compare like with like.
        "guest_domain_type": "qemu (TCG)",
        "database": f"SecantusDB {_package('secantusdb')} (in-memory, its own process)",
        "packages": {name: _package(name) for name in
                     ("strawberry-graphql", "starlette", "uvicorn", "beanie", "pymongo", "libvirt-python")},
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()

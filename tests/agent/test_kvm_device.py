"""The agent's /dev/kvm check: a device libvirtd's QEMU cannot use is reported, with the fix,
in the log at start-up and on the health endpoint."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from agent.health import serve_health
from agent.kvm_device import FIX, check_kvm_device, kvm_device_problem

KVM_GID = 107


def device(mode: int, *, uid: int = 0, gid: int = 0) -> os.stat_result:
    """A stat result of a character device, as ``os.stat('/dev/kvm')`` returns it."""
    return os.stat_result((stat.S_IFCHR | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_root_only_kvm_is_reported_with_the_fix() -> None:
    # What a machine without udev has: libvirtd re-probes QEMU on every call.
    problem = kvm_device_problem(device(0o600), kvm_gid=KVM_GID)
    assert problem is not None
    assert "/dev/kvm is root:root 0600" in problem
    assert problem.endswith(f"fix it as root: {FIX}")
    assert FIX == "chgrp kvm /dev/kvm; chmod 0660 /dev/kvm"


@pytest.mark.parametrize(("mode", "gid"), [
    (0o600, KVM_GID),  # the right group, but the group may not use it
    (0o660, 0),  # root's group may, QEMU's may not
    (0o660, 4242),  # some other group
    (0o640, KVM_GID),  # read-only for the group
])
def test_other_unusable_modes_are_reported(mode: int, gid: int) -> None:
    assert kvm_device_problem(device(mode, gid=gid), kvm_gid=KVM_GID) is not None


@pytest.mark.parametrize(("mode", "gid", "kvm_gid"), [
    (0o660, KVM_GID, KVM_GID),  # what Debian's udev rule (and scripts/setup) leave
    (0o666, 0, KVM_GID),  # everyone may (some distributions)
    (0o660, KVM_GID, None),  # no kvm group in the agent's own group database (a container)
])
def test_usable_devices_are_not_reported(mode: int, gid: int, kvm_gid: int | None) -> None:
    assert kvm_device_problem(device(mode, gid=gid), kvm_gid=kvm_gid) is None


def test_no_device_is_not_a_problem() -> None:
    assert kvm_device_problem(None, kvm_gid=KVM_GID) is None


def test_the_check_reads_the_device(tmp_path: Path) -> None:
    assert check_kvm_device(tmp_path / "absent") is None
    stand_in = tmp_path / "kvm"
    stand_in.write_bytes(b"")
    stand_in.chmod(0o600)
    os.chown(stand_in, 0, 0)
    problem = check_kvm_device(stand_in)
    assert problem is not None and f"{stand_in} is root:root 0600" in problem


async def test_the_health_endpoint_lists_the_warning() -> None:
    problem = kvm_device_problem(device(0o600), kvm_gid=KVM_GID)
    assert problem is not None
    server = await serve_health(address="127.0.0.1", port=0, warnings=lambda: [problem])
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
        await writer.drain()
        response = (await reader.read()).decode()
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    head, _, body = response.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK")  # a restart would not fix it: still healthy
    assert body == f"ok\nwarning: {problem}\n"

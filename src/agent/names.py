"""Names: the one place where lab names and machine indexes become libvirt and file names.

Lab names come from teachers and may be hostile. They reach libvirt only inside XML built by
``xml.etree`` (so they are escaped) and as parts of file names, which is why they are held
to a DNS-label-like pattern here before anything else sees them. Domain names are a pure
function of (lab, index): defining the same machine twice can only ever update one domain.
"""

from __future__ import annotations

import re

DOMAIN_PREFIX = "kubekvm-"
MAX_INDEX = 9999

_LAB_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
# A plain file name inside the image directory: no path separators, not hidden.
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


class InvalidName(ValueError):
    """A lab name, index or image name that must not reach libvirt or the file system."""


def check_lab_name(name: str) -> str:
    # fullmatch, not match with $: "$" would also accept a trailing newline.
    if not isinstance(name, str) or _LAB_NAME.fullmatch(name) is None:
        raise InvalidName(
            f"invalid lab name {name!r}: use 1-40 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_index(index: int) -> int:
    # bool is an int subclass; True must not become machine 1.
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_INDEX:
        raise InvalidName(f"invalid machine index {index!r}: use an integer 0-{MAX_INDEX}")
    return index


def check_image_name(name: str) -> str:
    """The template's base image as a file name in the image directory (``.qcow2`` added)."""
    if not isinstance(name, str) or _IMAGE_NAME.fullmatch(name) is None or ".." in name:
        raise InvalidName(f"invalid image name {name!r}: use a plain file name like win10.qcow2")
    return name if name.endswith(".qcow2") else f"{name}.qcow2"


def domain_name(lab: str, index: int) -> str:
    return f"{DOMAIN_PREFIX}{check_lab_name(lab)}-{check_index(index)}"


def guest_hostname(lab: str, index: int) -> str:
    return f"{check_lab_name(lab)}-{check_index(index)}"

"""Image rules: what a disk image must be to enter the image store, judged from what
``qemu-img info --output=json`` and ``qemu-img check --output=json`` say of it.

Plain rules over plain data (no file, process or database here; `kubekvm.image_store` runs
the tools and hands their answers in). An image enters the store only as a standalone qcow2:
one that names a backing file (a qcow2 whose backing file is ``/etc/shadow`` would hand that
file's bytes to whoever boots it) or an external data file is refused, and so is anything
that is neither qcow2 nor raw, a file declared qcow2 that is not one (a text file named
``.qcow2`` reads as raw data), raw data nobody declared raw, a truncated or corrupt qcow2, an
encrypted one and one whose virtual size is over the limit. Each refusal says which rule it
broke (`ImageRefused.reason`).

Images are named by the sha256 of their bytes as stored (`digest`, ``sha256:<64 hex>``); on
disk, in the store and on every host, an image is the file `file_name(digest)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubekvm.errors import ValidationFailed

FORMATS = ("qcow2", "raw")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_FILE = re.compile(r"sha256-([0-9a-f]{64})\.qcow2")
SECTOR = 512


class ImageRefused(ValidationFailed):
    """An image the store does not take; `reason` says which rule (BACKING_FILE, DATA_FILE,
    UNKNOWN_FORMAT, NOT_QCOW2, UNDECLARED_RAW, NOT_A_DISK, TRUNCATED, ENCRYPTED, TOO_LARGE,
    UNREADABLE, INCOMPLETE_UPLOAD, TOO_BIG_UPLOAD, DIGEST_MISMATCH)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__("file", message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Inspection:
    format: str
    virtual_size: int


def digest(value: str) -> str:
    """A digest as clients write it (``sha256:<hex>``), checked."""
    if not _DIGEST.fullmatch(value):
        raise ValidationFailed("digest", "An image digest is 'sha256:' followed by 64 lowercase hex digits.")
    return value


def file_name(value: str) -> str:
    """The file an image is kept in, in the store and on hosts: ``sha256-<hex>.qcow2``."""
    return f"sha256-{digest(value).removeprefix('sha256:')}.qcow2"


def digest_of_file_name(name: str) -> str | None:
    """The digest a file of the image directory holds, if its name is one `file_name` makes."""
    found = _FILE.fullmatch(name)
    return f"sha256:{found.group(1)}" if found else None


def declared_format(file_name: str, given: str | None) -> str | None:
    """The format the importer claims: given outright, or by the file's name (``.qcow2``;
    ``.raw``/``.img`` for raw data); None when nothing claims one."""
    if given:
        if given not in FORMATS:
            raise ValidationFailed("format", f"The format must be one of: {', '.join(FORMATS)}.")
        return given
    lowered = file_name.lower()
    if lowered.endswith(".qcow2"):
        return "qcow2"
    if lowered.endswith((".raw", ".img")):
        return "raw"
    return None


def check_info(info: Mapping[str, Any], *, declared: str | None, file_size: int,
               max_virtual_bytes: int) -> Inspection:
    """The image as ``qemu-img info`` probed it, or the refusal saying what is wrong."""
    found = str(info.get("format", ""))
    if found not in FORMATS:
        raise ImageRefused("UNKNOWN_FORMAT", f"This is a {found or 'unrecognised'} image; only qcow2 and raw "
                                             "disk images are accepted (convert it with qemu-img convert -O qcow2).")
    if declared == "qcow2" and found != "qcow2":
        raise ImageRefused("NOT_QCOW2", "This file is named or declared qcow2 but is not a qcow2 image (it has "
                                        "no qcow2 header; qemu-img reads it as raw data).")
    if found == "raw" and declared != "raw":
        raise ImageRefused("UNDECLARED_RAW", "This file has no image header (qemu-img reads it as raw data): "
                                             "import a raw disk image only by saying so (format raw, or a "
                                             ".raw/.img file name).")
    if found == "raw" and (file_size == 0 or file_size % SECTOR):
        raise ImageRefused("NOT_A_DISK", f"This is not a raw disk image: its size ({file_size} bytes) is not a "
                                         f"whole number of {SECTOR}-byte sectors.")
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise ImageRefused("BACKING_FILE", f"This image has a backing file ({str(backing)[:200]}); only "
                                           "standalone images are accepted (flatten it first: qemu-img convert "
                                           "-O qcow2).")
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, Mapping) else None
    if isinstance(data, Mapping):
        if data.get("data-file"):
            raise ImageRefused("DATA_FILE", f"This image keeps its data in an external data file "
                                            f"({str(data['data-file'])[:200]}); only self-contained images "
                                            "are accepted.")
        if data.get("encrypt"):
            raise ImageRefused("ENCRYPTED", "This image is encrypted; hosts could not boot it.")
        if data.get("corrupt"):
            raise ImageRefused("TRUNCATED", "This qcow2 image is marked corrupt.")
    if info.get("encrypted"):
        raise ImageRefused("ENCRYPTED", "This image is encrypted; hosts could not boot it.")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise ImageRefused("UNREADABLE", "qemu-img could not tell this image's virtual size.")
    if size > max_virtual_bytes:
        raise ImageRefused("TOO_LARGE", f"This image's virtual size ({_gib(size)}) is over the limit "
                                        f"({_gib(max_virtual_bytes)}).")
    return Inspection(format=found, virtual_size=size)


def check_consistency(result: Mapping[str, Any], *, status: int) -> None:
    """What ``qemu-img check`` found: leaked clusters (status 3) are harmless; corruptions
    (status 2: clusters past the end of a truncated file among them) refuse the image."""
    if status in (0, 3):
        return
    if status == 2:
        errors = int(result.get("corruptions", 0) or 0) + int(result.get("check-errors", 0) or 0)
        raise ImageRefused("TRUNCATED", f"This qcow2 image is truncated or corrupt (qemu-img check found "
                                        f"{errors} error{'s' if errors != 1 else ''}); upload it again.")
    raise ImageRefused("UNREADABLE", "qemu-img could not check this image.")


def _gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"

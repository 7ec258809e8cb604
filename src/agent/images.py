"""Images: the base disks in the image directory, and how a template boots from them.

A template's image is a ``*.qcow2`` file in the image directory; machines never write to it,
they get linked-clone overlays (``agent.disks``). A template may also be booted directly
from a kernel: when ``<stem>.kernel`` and ``<stem>.initrd`` sit next to ``<stem>.qcow2``
(the tiny-linux test guest does), or ``<template>.kernel`` and ``<template>.initrd`` beside an
image of the store (named by its digest, pulled by `agent.pulls`), the domain boots them with
the agent's base command line plus the contents of an optional ``<stem>.cmdline``. The directory is re-read on every
call, so images copied in while the agent runs are noticed at the next heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DirectBoot:
    kernel: Path
    initrd: Path
    extra_cmdline: str


class Images:
    def __init__(self, directory: Path) -> None:
        self.directory = directory.absolute()

    def names(self) -> list[str]:
        """The images this host can offer, as the server sees them."""
        if not self.directory.is_dir():
            return []
        return sorted(
            path.name
            for path in self.directory.glob("*.qcow2")
            if path.is_file() and not path.name.startswith(".")
        )

    def base(self, image: str) -> Path:
        """The base image's absolute path; ``image`` has passed ``names.check_image_name``."""
        return self.directory / image

    def missing_message(self, image: str) -> str:
        return f"base image {image} not found in {self.directory}"

    def direct_boot(self, image: str, *, template: str | None = None) -> DirectBoot | None:
        """The kernel and initrd named after the image, or else after the template: an image of
        the store is named by its digest (``sha256-<hex>.qcow2``), and the kernel that boots it
        sits beside it as ``<template>.kernel``."""
        found = self._direct_boot(image.removesuffix(".qcow2"))
        if found is None and template and template != image.removesuffix(".qcow2"):
            found = self._direct_boot(template)
        return found

    def _direct_boot(self, stem_name: str) -> DirectBoot | None:
        if "/" in stem_name or stem_name.startswith("."):
            return None
        stem = self.directory / stem_name
        kernel, initrd = stem.with_name(f"{stem.name}.kernel"), stem.with_name(f"{stem.name}.initrd")
        if not (kernel.is_file() and initrd.is_file()):
            return None
        cmdline = stem.with_name(f"{stem.name}.cmdline")
        extra = " ".join(cmdline.read_text().split()) if cmdline.is_file() else ""
        return DirectBoot(kernel=kernel, initrd=initrd, extra_cmdline=extra)

"""Watches a directory with inotify and stamps each file's creation and rename-into-place.

The agent makes an overlay under a hidden temporary name (``.<domain>.qcow2.partial-...``,
created by ``qemu-img``) and renames it to ``<domain>.qcow2`` when complete, so the two events
bracket the clone exactly. File times cannot tell this afterwards: libvirt changes the
overlay's owner when the domain starts, which moves its ctime.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
import time
from pathlib import Path

IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class DirectoryWatch:
    """``created[name]`` and ``moved_in[name]``: monotonic times of the first such event."""

    def __init__(self, directory: Path) -> None:
        self.created: dict[str, float] = {}
        self.moved_in: dict[str, float] = {}
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(self._fd, str(directory).encode(), IN_CREATE | IN_MOVED_TO) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dir-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                continue
            stamp = time.monotonic()
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset + _HEADER.size <= len(data):
                _wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                raw = data[offset + _HEADER.size: offset + _HEADER.size + length]
                name = raw.split(b"\0", 1)[0].decode(errors="replace")
                offset += _HEADER.size + length
                target = self.created if mask & IN_CREATE else self.moved_in
                target.setdefault(name, stamp)

    def created_with_prefix(self, prefix: str) -> float | None:
        stamps = [stamp for name, stamp in list(self.created.items()) if name.startswith(prefix)]
        return min(stamps) if stamps else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self._fd)

"""Watches libvirt's domain lifecycle events from the benchmark's own process.

The agent does not log per-machine timings, so the provisioning benchmark learns when each
domain was defined and started from libvirt itself: a second connection whose lifecycle
events are received on a thread running libvirt's default event loop and stamped with
``time.monotonic()`` on arrival (the clock every benchmark figure uses).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import libvirt

_loop_started = False
_loop_lock = threading.Lock()


def _ensure_event_loop() -> None:
    """libvirt wants its event implementation registered once, before any connection opens."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
}


class LifecycleWatch:
    """Records ``(monotonic time, event)`` per domain name while open."""

    def __init__(self, uri: str) -> None:
        _ensure_event_loop()
        self.events: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._connection = libvirt.open(uri)
        self._callback = self._connection.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)

    def _on_event(self, _conn: object, domain: libvirt.virDomain, event: int, _detail: int,
                  _opaque: object) -> None:
        name = EVENT_NAMES.get(event)
        if name is not None:
            stamp = time.monotonic()
            with self._lock:
                self.events[domain.name()].append((stamp, name))

    def first(self, domain: str, event: str, *, after: float = 0.0) -> float | None:
        with self._lock:
            for stamp, name in self.events.get(domain, []):
                if name == event and stamp >= after:
                    return stamp
        return None

    def close(self) -> None:
        try:
            self._connection.domainEventDeregisterAny(self._callback)
        finally:
            self._connection.close()

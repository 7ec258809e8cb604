"""Assignment: one machine the server wants on this host, exactly as the server sends it.

An assignment is the unit of desired state. It is immutable; the server sends a new one
whenever anything about the machine changes, with two counters that make one-shot requests
level-triggered:

- ``reset_generation`` grows when a teacher resets the machine: the agent recreates the
  overlay when the domain's recorded generation is lower;
- ``power_generation`` grows with each start (or stop) request: the agent powers the domain
  on only when the generation it last acted on, recorded in the domain, is lower. That is
  why a guest that powered itself off stays off across agent restarts and lifecycle events
  until the server asks again.

Everything that later becomes a file name or libvirt text is validated here, on arrival.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from agent.machine_state import DESIRED_STATES, DesiredState
from agent.names import check_image_name, check_index, check_lab_name, domain_name

MAX_VCPUS = 256
MIN_MEMORY_MIB = 16


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class AssignmentError(ValueError):
    """An assignment the agent cannot act on; ``machine_id`` says whom to report it for."""

    def __init__(self, message: str, *, machine_id: str | None = None) -> None:
        super().__init__(message)
        self.machine_id = machine_id


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    name: str
    image: str
    os: str
    vcpus: int
    memory_mib: int
    disk_gib: int

    def __post_init__(self) -> None:
        _check_text("template name", self.name)
        _check_text("template os", self.os, allow_empty=True)
        object.__setattr__(self, "image", check_image_name(self.image))
        _check_int("vcpus", self.vcpus, low=1, high=MAX_VCPUS)
        _check_int("memoryMib", self.memory_mib, low=MIN_MEMORY_MIB, high=16 * 1024 * 1024)
        _check_int("diskGib", self.disk_gib, low=0, high=64 * 1024)

    @property
    def image_stem(self) -> str:
        return self.image.removesuffix(".qcow2")

    @property
    def is_windows(self) -> bool:
        return self.os.lower().startswith("win")


@dataclass(frozen=True, slots=True)
class Assignment:
    machine_id: str
    vm_name: str
    deployment: str
    index: int
    desired: DesiredState
    reset_generation: int
    template: TemplateSpec
    power_generation: int = 0
    # The request that last changed the machine (for the log lines of its steps, `agent.logs`);
    # not part of what the machine should be, so not compared.
    request_id: str | None = field(default=None, compare=False)
    # A publish job the server waits for: flatten this stopped machine's disk and upload it
    # (`agent.publisher`).
    publish_job: str | None = None

    def __post_init__(self) -> None:
        _check_text("machineId", self.machine_id)
        _check_text("vmName", self.vm_name)
        check_lab_name(self.deployment)
        check_index(self.index)
        if self.desired not in DESIRED_STATES:
            raise AssignmentError(f"invalid desired state {self.desired!r}")
        _check_int("resetGeneration", self.reset_generation, low=0)
        _check_int("powerGeneration", self.power_generation, low=0)
        if self.request_id is not None and not _REQUEST_ID.fullmatch(self.request_id):
            object.__setattr__(self, "request_id", None)  # only ids fit for a log line

    @property
    def domain_name(self) -> str:
        return domain_name(self.deployment, self.index)

    @classmethod
    def from_graphql(cls, payload: Mapping[str, Any]) -> Assignment:
        """Parses one ``Assignment`` object of the ``hostAssignments`` subscription."""
        raw_id = payload.get("machineId") if isinstance(payload, Mapping) else None
        machine_id = raw_id if isinstance(raw_id, str) and raw_id else None
        try:
            template = payload["template"]
            desired = str(payload["desired"]).lower()
            return cls(
                machine_id=payload["machineId"],
                vm_name=payload["vmName"],
                deployment=payload["deployment"],
                index=payload["index"],
                desired=cast(DesiredState, desired),
                reset_generation=payload["resetGeneration"],
                power_generation=payload.get("powerGeneration", 0),
                request_id=payload.get("requestId") if isinstance(payload.get("requestId"), str) else None,
                publish_job=payload.get("publishJob") if isinstance(payload.get("publishJob"), str) else None,
                template=TemplateSpec(
                    name=template["name"],
                    image=template["image"],
                    os=template.get("os") or "",
                    vcpus=template["vcpus"],
                    memory_mib=template["memoryMib"],
                    disk_gib=template["diskGib"],
                ),
            )
        except AssignmentError as error:
            error.machine_id = error.machine_id or machine_id
            raise
        except (KeyError, TypeError, ValueError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise AssignmentError(
                f"invalid assignment: {detail}", machine_id=machine_id
            ) from error


def _check_text(field: str, value: object, *, allow_empty: bool = False) -> None:
    # Printable text only: it ends up inside libvirt's XML, where control characters are
    # not representable, and in log lines.
    if not isinstance(value, str) or len(value) > 256 or not value.isprintable() or (
        not value and not allow_empty
    ):
        raise AssignmentError(f"invalid {field} {value!r}")


def _check_int(field: str, value: object, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        bounds = f"{low}-{high}" if high is not None else f">= {low}"
        raise AssignmentError(f"invalid {field} {value!r}: expected an integer {bounds}")

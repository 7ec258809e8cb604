"""The domain's vocabulary: the states labs, machines and accounts move through and the kinds of
things the platform knows — with no database, web or libvirt library behind them.

The plain rule modules (`lifecycle`, `access`, `placement`, `validation`, `roster`) import
their types from here and nothing from pymongo, beanie, starlette, strawberry or libvirt
(`tests/domain/test_import_rules.py` checks it); the stored documents (`kubekvm.models`) use
the same enums as their fields' types. What the access rules read of a document is
`kubekvm.access.facts`.
"""

from __future__ import annotations

from enum import StrEnum


class OSFamily(StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"


class Power(StrEnum):
    """What the teacher wants for the lab as a whole."""

    RUNNING = "running"
    STOPPED = "stopped"


class Phase(StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    INACTIVE = "Inactive"
    FAILED = "Failed"
    DELETING = "Deleting"


class DesiredState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    ABSENT = "absent"


class ObservedState(StrEnum):
    """What a host reports of a machine (and `pending` until it has)."""

    PENDING = "pending"
    RUNNING = "running"
    SHUTOFF = "shutoff"
    PAUSED = "paused"
    CRASHED = "crashed"
    ABSENT = "absent"
    ERROR = "error"


class Role(StrEnum):
    ADMIN = "admin"
    TEACHER = "teacher"
    STUDENT = "student"


class TokenKind(StrEnum):
    USER = "user"
    HOST = "host"
    SCRAPE = "scrape"  # reads /metrics only (Prometheus)


class StopReason(StrEnum):
    """Why the platform, not a person, stopped a machine (`kubekvm.idle`, `kubekvm.usage`): kept
    on the machine until it is started again, and turned into words where it is shown."""

    IDLE = "idle"  # no console open and the guest's CPU under the lab's threshold for long enough
    MAX_RUNTIME = "max-runtime"  # running longer than the lab allows in one go
    QUOTA = "quota"  # its student's hours outside scheduled slots are spent


class ConsoleState(StrEnum):
    RESERVED = "reserved"  # counted against the user's limit, not yet announced to the agent
    REQUESTED = "requested"  # a browser waits for the host's agent to dial in
    OPEN = "open"  # bytes flow (a closed console's session is deleted)

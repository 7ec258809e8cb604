"""The documents KubeKVM keeps in MongoDB (Beanie models) and the states they move through.

The database is the only shared memory of the platform: several server replicas and the host
agents meet here. Writes that several processes may race on are single-document atomic updates
(conditional `$inc`, compare-and-set on `version`), never read-modify-write of a whole document.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import pymongo
from beanie import Document, Indexed
from pydantic import BaseModel, Field


def utcnow() -> datetime:
    # Mongo keeps milliseconds; truncating here keeps a saved and a reloaded time equal.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


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


class Template(Document):
    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    title: str
    description: str = ""
    os: OSFamily
    image: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    # Empty: every teacher may use the template; else only these teachers (and admins).
    teachers: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "templates"


class MachineSpec(BaseModel):
    """The template as it was when the machine was made: a later template edit does not
    change a running student's VM under them."""

    template: str
    image: str
    os: OSFamily
    vcpus: int
    memory_mib: int
    disk_gib: int


class Deployment(Document):
    """A lab: `replicas` machines of one template."""

    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    title: str
    template: Indexed(str)  # type: ignore[valid-type]
    replicas: int
    power: Power = Power.RUNNING
    phase: Phase = Phase.PENDING
    message: str = ""
    generation: int = 1
    # The teacher whose lab it is; None for labs made before accounts existed (admins only).
    owner: str | None = None
    # Usernames of the lab's students; each is bound to one machine (`Machine.student`).
    roster: list[str] = Field(default_factory=list)
    # Compare-and-set counter for phase updates made by concurrent server replicas.
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "deployments"
        indexes = [pymongo.IndexModel([("phase", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("owner", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("roster", pymongo.ASCENDING)])]


class Machine(Document):
    """One VM of a lab. `name` is `<lab>-<index>`; the host's domain is `kubekvm-<name>`."""

    deployment: str
    index: int
    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    spec: MachineSpec
    host: str | None = None
    # The student of the lab's roster this machine belongs to, if any.
    student: str | None = None
    desired: DesiredState = DesiredState.RUNNING
    # Bumped by every start/stop (power) and reset request; the host acts on a request once
    # and reports the generation it has applied, so re-sent state never repeats an action.
    power_generation: int = 1
    reset_generation: int = 0
    observed: ObservedState = ObservedState.PENDING
    observed_power_generation: int | None = None
    message: str = ""
    observed_at: datetime | None = None
    # Set just before the document is deleted, so that change-stream subscribers learn which
    # lab and host a vanished machine belonged to (a delete event carries only the id).
    retired: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "machines"
        indexes = [
            pymongo.IndexModel(
                [("deployment", pymongo.ASCENDING), ("index", pymongo.ASCENDING)], unique=True
            ),
            pymongo.IndexModel([("host", pymongo.ASCENDING)]),
            pymongo.IndexModel([("student", pymongo.ASCENDING)]),
        ]


class Host(Document):
    """A hypervisor with an agent. `allocated_*` are reserved atomically at placement."""

    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    vcpus: int
    memory_mib: int
    images: list[str] = Field(default_factory=list)
    domain_type: str = ""
    agent_version: str = ""
    allocated_vcpus: int = 0
    allocated_memory_mib: int = 0
    orphans: list[str] = Field(default_factory=list)
    registered_at: datetime = Field(default_factory=utcnow)
    last_heartbeat: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "hosts"


class LabEvent(Document):
    """A line of a lab's history, shown on its page: what changed, when."""

    deployment: str
    machine: str | None = None
    message: str
    at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "lab_events"
        indexes = [pymongo.IndexModel([("deployment", pymongo.ASCENDING), ("at", pymongo.DESCENDING)])]


class Role(StrEnum):
    ADMIN = "admin"
    TEACHER = "teacher"
    STUDENT = "student"


class User(Document):
    """A person who signs in. `password_hash` is argon2id, or None: no usable password yet
    (a student added to a roster, until someone sets one or they use a set-password link)."""

    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    role: Role
    password_hash: str | None = None
    # Bumped when the password changes: signed session cookies made before stop working.
    session_epoch: int = 0
    # sha256 of a one-time set-password code, and until when it is good.
    password_code_hash: str | None = None
    password_code_expires: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "users"
        indexes = [pymongo.IndexModel([("role", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("password_code_hash", pymongo.ASCENDING)])]


class TokenKind(StrEnum):
    USER = "user"
    HOST = "host"


class ApiToken(Document):
    """A bearer token for programs: a person's (acts as that user) or a host agent's (acts as
    that host only). Only the sha256 of the token is kept; the token is shown once."""

    kind: TokenKind
    owner: str  # the user's or the host's name
    label: str
    token_hash: Indexed(str, unique=True)  # type: ignore[valid-type]
    # The first characters, so a person can tell their tokens apart (not enough to use one).
    prefix: str
    created_by: str
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "api_tokens"
        indexes = [pymongo.IndexModel([("kind", pymongo.ASCENDING), ("owner", pymongo.ASCENDING)])]


class AuditEntry(Document):
    """One line of the audit log: who did what to which object, when, from where, and how it
    ended. The application only ever inserts these."""

    at: datetime = Field(default_factory=utcnow)
    actor: str  # user or host name; "" when anonymous
    actor_kind: str  # anonymous | user | host
    role: str = ""
    action: str  # the GraphQL mutation's name, or login/logout/...
    target: str = ""  # e.g. "lab:redes-2025", "machine:redes-2025-3", "user:ana"
    address: str = ""
    outcome: str  # "ok", or the refusal's code (FORBIDDEN, NOT_FOUND, WRONG_PASSWORD, ...)
    message: str = ""

    class Settings:
        name = "audit_log"
        indexes = [pymongo.IndexModel([("at", pymongo.DESCENDING)]),
                   pymongo.IndexModel([("actor", pymongo.ASCENDING), ("at", pymongo.DESCENDING)]),
                   pymongo.IndexModel([("action", pymongo.ASCENDING), ("at", pymongo.DESCENDING)])]


class LoginThrottle(Document):
    """Failed sign-ins of one account (`user:NAME`) or one address (`addr:IP`), counted with an
    atomic `$inc` so every server replica sees the same count."""

    key: Indexed(str, unique=True)  # type: ignore[valid-type]
    failures: int = 0
    window_start: datetime = Field(default_factory=utcnow)
    blocked_until: datetime | None = None

    class Settings:
        name = "login_throttle"


class ServerSecret(Document):
    """Values every server replica must share: the session-signing key (unless
    KUBEKVM_SECRET_KEY is set) and the hashes of first-start setup codes."""

    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    value: str
    expires: datetime | None = None

    class Settings:
        name = "server_secrets"


class ConsoleTicket(Document):
    """A one-time right to open one machine's console, handed to the console page and presented
    by its websocket within a minute. Only the sha256 of the ticket is kept; redeeming deletes
    the document (one atomic `find_one_and_delete`), so a ticket works once on any replica."""

    ticket_hash: Indexed(str, unique=True)  # type: ignore[valid-type]
    user: str
    machine: str
    expires: datetime

    class Settings:
        name = "console_tickets"
        indexes = [pymongo.IndexModel([("expires", pymongo.ASCENDING)])]


class ConsoleState(StrEnum):
    RESERVED = "reserved"  # counted against the user's limit, not yet announced to the agent
    REQUESTED = "requested"  # a browser waits for the host's agent to dial in
    OPEN = "open"  # bytes flow (a closed console's session is deleted)


class ConsoleSession(Document):
    """One console connection: browser ⇄ `replica` ⇄ the agent of `host` ⇄ the VM's VNC display.

    Inserting it (state `requested`) is how the agent hears of it: the change stream carries
    the insert to whichever replica holds the agent's `consoleRequests` subscription, and the
    agent dials `replica` (that replica's own address) with `session`. The replica renews
    `lease_until` while the console is open, so the consoles of a replica that died stop counting
    against their user's limit once their lease runs out."""

    session: Indexed(str, unique=True)  # type: ignore[valid-type]
    machine: str
    machine_id: str
    deployment: str
    index: int
    host: str
    user: str
    replica: str
    state: ConsoleState = ConsoleState.REQUESTED
    opened_at: datetime = Field(default_factory=utcnow)
    lease_until: datetime

    class Settings:
        name = "console_sessions"
        indexes = [pymongo.IndexModel([("user", pymongo.ASCENDING), ("state", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("host", pymongo.ASCENDING), ("state", pymongo.ASCENDING)])]


DOCUMENT_MODELS: list[type[Document]] = [Template, Deployment, Machine, Host, LabEvent, User, ApiToken,
                                         AuditEntry, LoginThrottle, ServerSecret, ConsoleTicket,
                                         ConsoleSession]

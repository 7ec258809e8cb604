"""The documents KubeKVM keeps in MongoDB (Beanie models) and the states they move through.

The database is the only shared memory of the platform: several server replicas and the host
agents meet here. Writes that several processes may race on are single-document atomic updates
(conditional `$inc`, compare-and-set on `version`), never read-modify-write of a whole document.

The database is also older and wider than this code: it may hold documents no model here
describes (one written by the 2019 application this replaces, or by hand). Every model derives
from `Stored`, whose reads skip such a document with a warning naming it instead of failing the
whole read: one bad document never takes a page, a list or a subscription down.

Longer than 400 lines: every stored document in one place, which is the database's schema as
an operator reads it (each model is a few fields with why they are there).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import pymongo
from beanie import Document, Indexed
from beanie.odm.queries.find import FindMany, FindOne
from beanie.odm.utils.parsing import parse_obj
from pydantic import BaseModel, Field, ValidationError

# The states documents move through are the domain's (`kubekvm.domain`, free of the database);
# they are named here too, as the types of the documents' fields.
from kubekvm.domain import ConsoleState as ConsoleState
from kubekvm.domain import DesiredState as DesiredState
from kubekvm.domain import ObservedState as ObservedState
from kubekvm.domain import OSFamily as OSFamily
from kubekvm.domain import Phase as Phase
from kubekvm.domain import Power as Power
from kubekvm.domain import Role as Role
from kubekvm.domain import StopReason as StopReason
from kubekvm.domain import TokenKind as TokenKind
from kubekvm.image_fields import ImagePull as ImagePull
from kubekvm.image_fields import PublishJob as PublishJob
from kubekvm.image_fields import TemplateVersion as TemplateVersion

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# Each unreadable document is warned about once per process (then at debug level): a labs page
# polled by 30 browsers must not write 30 warnings a second about the same leftover.
_WARNED_LIMIT = 10_000
_warned: set[tuple[str, str]] = set()


def utcnow() -> datetime:
    # Mongo keeps milliseconds; truncating here keeps a saved and a reloaded time equal.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def readable(model: type[M], raw: Mapping[str, Any], *, lazy_parse: bool = False) -> M | None:
    """`raw` as a `model`, or None (with a warning naming the document) when it does not fit:
    the one place a stored document that this code cannot read is turned away."""
    try:
        parsed = parse_obj(model, raw, lazy_parse=lazy_parse)
    except (ValidationError, ValueError, TypeError, KeyError) as error:
        where = getattr(getattr(model, "Settings", None), "name", model.__name__)
        key = (where, str(raw.get("_id")))
        level = logging.DEBUG if key in _warned else logging.WARNING
        if len(_warned) < _WARNED_LIMIT:
            _warned.add(key)
        # The fields at fault, never their values: a bad user document holds a password hash.
        if isinstance(error, ValidationError):
            why = ", ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                            for e in error.errors(include_input=False, include_url=False)[:5])
        else:
            why = type(error).__name__
        log.log(level, "skipped a document of %s that this version cannot read: _id=%s (%s)",
                where, key[1], why)
        return None
    assert isinstance(parsed, model)
    return parsed


class TolerantFindMany(FindMany[Any]):
    """Beanie's many-document query, skipping documents the model cannot read."""

    async def to_list(self, length: int | None = None) -> list[Any]:
        projection = self.get_projection_model()
        if projection is None:
            return await super().to_list(length)
        cursor = await self.get_cursor()
        assert cursor is not None
        raw: list[dict[str, Any]] | None = self._get_cache()  # type: ignore[no-untyped-call]
        if raw is None:
            raw = await cursor.to_list(length)
            self._set_cache(raw)  # type: ignore[no-untyped-call]
        parsed = (readable(projection, item, lazy_parse=self.lazy_parse) for item in raw)
        return [item for item in parsed if item is not None]

    async def __anext__(self) -> Any:
        projection = self.get_projection_model()
        while True:
            if self.cursor is None:
                self.cursor = await self.get_cursor()
            assert self.cursor is not None
            item = await self.cursor.__anext__()
            if projection is None:
                return item
            parsed = readable(projection, item, lazy_parse=self.lazy_parse)
            if parsed is not None:
                return parsed


class TolerantFindOne(FindOne[Any]):
    """Beanie's one-document query: a document the model cannot read is as good as none."""

    async def _find_one(self) -> Any:
        found = await super()._find_one()  # type: ignore[no-untyped-call]
        if isinstance(found, Mapping) and self.projection_model is not None:
            return readable(self.projection_model, found)
        return found


class Stored(Document):
    """The base of every KubeKVM document: Beanie's, with reads that skip unreadable documents."""

    _find_many_query_class = TolerantFindMany
    _find_one_query_class = TolerantFindOne


class Template(Stored):
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
    # Numbered versions, oldest first (`services.template_versions`); `image` is the newest
    # kept one's file. None: a template of a file copied to the hosts by hand.
    versions: list[TemplateVersion] = Field(default_factory=list)
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
    # The template version the machine's disk is based on (None: an unversioned template).
    version: int | None = None


class UsagePolicy(BaseModel):
    """A lab's limits on its machines' running (`kubekvm.idle`, `kubekvm.usage`); None: off."""

    idle_minutes: float | None = None
    idle_cpu_percent: float = 5.0
    max_run_minutes: float | None = None
    quota_hours: float | None = None  # per student, outside scheduled slots


class Deployment(Stored):
    """A lab: `replicas` machines of one template."""

    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    title: str
    template: Indexed(str)  # type: ignore[valid-type]
    # The template version new and reset machines get (pinned at creation; the teacher moves it).
    template_version: int | None = None
    replicas: int
    power: Power = Power.RUNNING
    phase: Phase = Phase.PENDING
    message: str = ""
    # When the lab entered its phase (written with the phase; None on labs stored before it was
    # kept: `since` falls back to their last change).
    phase_since: datetime | None = None
    generation: int = 1
    # The teacher whose lab it is; None for labs made before accounts existed (admins only).
    owner: str | None = None
    # Usernames of the lab's students; each is bound to one machine (`Machine.student`).
    roster: list[str] = Field(default_factory=list)
    # The directory group the roster was last filled from (refreshed from it on demand).
    roster_group: str | None = None
    policy: UsagePolicy = Field(default_factory=UsagePolicy)
    # Compare-and-set counter for phase updates made by concurrent server replicas.
    version: int = 0
    # Its machines observed running and kept (not on their way out), written with the phase by
    # every recount (`Convergence.refresh_phase`, after each machine change, and the janitor's),
    # so a list of labs reads them instead of counting thousands of machines. None: not
    # counted yet (a lab stored before counts were kept), counted when read.
    running: int | None = None
    kept: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "deployments"
        indexes = [pymongo.IndexModel([("phase", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("owner", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("roster", pymongo.ASCENDING)])]


class CpuSample(BaseModel):
    """`kubekvm.idle.CpuActivity` as stored."""

    cpu_seconds: float
    sampled_at: datetime
    load_percent: float | None = None
    quiet_since: datetime | None = None


class Machine(Stored):
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
    # When the machine entered its present situation: a new observed state, a start/stop/reset
    # request, a host given, a removal asked (`kubekvm.progress` says how long it has been so).
    since: datetime | None = None
    # Since when the host has reported it running (None: it is not), its guest CPU as sampled
    # by the host (`kubekvm.idle`), when its last console closed, and why the platform stopped
    # it, if it did (kept until it is started again).
    running_since: datetime | None = None
    cpu: CpuSample | None = None
    console_closed_at: datetime | None = None
    stop_reason: StopReason | None = None
    # Being published as a template version (locked meanwhile), or how the last publish ended.
    publish: PublishJob | None = None
    # Set just before the document is deleted, so that change-stream subscribers learn which
    # lab and host a vanished machine belonged to (a delete event carries only the id).
    retired: bool = False
    # The id of the request that last changed what the machine should be (`kubekvm.logs`): its
    # host agent logs its steps under it, so one grep follows a click to the boot.
    request_id: str | None = None
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


class Host(Stored):
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
    pulls: list[ImagePull] = Field(default_factory=list)
    registered_at: datetime = Field(default_factory=utcnow)
    last_heartbeat: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "hosts"


class LabEvent(Stored):
    """A line of a lab's history, shown on its page: what changed, when."""

    deployment: str
    machine: str | None = None
    message: str
    at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "lab_events"
        indexes = [pymongo.IndexModel([("deployment", pymongo.ASCENDING), ("at", pymongo.DESCENDING)])]


class User(Stored):
    """A person who signs in. `password_hash` is argon2id, or None: no usable password yet
    (a student added to a roster, until someone sets one or they use a set-password link)."""

    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    role: Role
    password_hash: str | None = None
    # sha256 of a one-time set-password code, until when it is good, and who made it (a
    # teacher's link stops working when the rule that let them make it no longer holds).
    password_code_hash: str | None = None
    password_code_expires: datetime | None = None
    password_code_issuer: str | None = None
    # Who vouches for this person when the account is signed in from outside (None: a local
    # account): "ldap:<dn>" or "oidc:<provider>:<sub>" (`kubekvm.identity`). Such an account
    # needs no password here; its role follows the directory's groups at every sign-in.
    identity: str | None = None
    # A disabled account signs in nowhere and its tokens are refused (`services.user_admin`);
    # its sessions were ended when it was disabled. Kept, with its history, until re-enabled.
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "users"
        # The Users page filters by role and status and pages by name: each filter has an
        # index that also gives the order (a name prefix uses the unique name index).
        indexes = [pymongo.IndexModel([("role", pymongo.ASCENDING), ("name", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("disabled", pymongo.ASCENDING), ("name", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("password_code_hash", pymongo.ASCENDING)]),
                   pymongo.IndexModel([("identity", pymongo.ASCENDING)])]


class ApiToken(Stored):
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


class AuditEntry(Stored):
    """One line of the audit log: who did what to which object, when, from where, and how it
    ended. The application only ever inserts these."""

    at: datetime = Field(default_factory=utcnow)
    actor: str  # user or host name; "" when anonymous
    actor_kind: str  # anonymous | user | host | system
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


class LoginThrottle(Stored):
    """Failed sign-ins of one (account, address) pair (`pair:NAME|ADDRESS`), one account
    (`user:NAME`) or one address (`addr:ADDRESS`), counted with an atomic `$inc` so every
    server replica sees the same count; `good_at` (pairs only) is the last successful sign-in
    of that account from that address. The rules are `kubekvm.throttle`'s."""

    key: Indexed(str, unique=True)  # type: ignore[valid-type]
    failures: int = 0
    window_start: datetime = Field(default_factory=utcnow)
    last_failure: datetime | None = None
    good_at: datetime | None = None

    class Settings:
        name = "login_throttle"


class UserSession(Stored):
    """A signed-in browser. Its cookie carries a random id (signed); only the sha256 of that id
    is kept here, so a copy of the database signs nobody in. Deleting the document ends the
    session on every replica at once: signing out, a password change (the user's other
    sessions), an admin ending all of a user's sessions. `expires_at` moves forward with use,
    never past `created_at` plus the maximum age, so an idle session lapses (and MongoDB's TTL
    monitor removes it)."""

    key_hash: Indexed(str, unique=True)  # type: ignore[valid-type]
    user: Indexed(str)  # type: ignore[valid-type]
    csrf: str
    address: str = ""
    # The OpenID provider this session was signed in through (its end-session endpoint is
    # offered at sign-out), if any.
    provider: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    last_seen: datetime = Field(default_factory=utcnow)
    expires_at: datetime

    class Settings:
        name = "sessions"
        indexes = [pymongo.IndexModel([("expires_at", pymongo.ASCENDING)], expireAfterSeconds=0)]


class ServerSecret(Stored):
    """Values every server replica must share: the session-signing key (unless
    KUBEKVM_SECRET_KEY is set) and the hashes of first-start setup codes."""

    name: Indexed(str, unique=True)  # type: ignore[valid-type]
    value: str
    expires: datetime | None = None

    class Settings:
        name = "server_secrets"


class ConsoleTicket(Stored):
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


class ConsoleSession(Stored):
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


class UsageInterval(Stored):
    """A span a host observed a machine running (`kubekvm.usage`): from the report that it runs
    to the report that it no longer does. Keyed by machine and start, so recording it twice
    (a retried report) writes it once."""

    deployment: str
    machine: str
    student: str | None = None
    start: datetime
    end: datetime

    class Settings:
        name = "usage_intervals"
        indexes = [pymongo.IndexModel([("machine", pymongo.ASCENDING), ("start", pymongo.ASCENDING)], unique=True),
                   pymongo.IndexModel([("deployment", pymongo.ASCENDING), ("student", pymongo.ASCENDING)])]


class UsageGrant(Stored):
    """Hours a teacher granted one student of one lab beyond its quota, summed (`$inc`)."""

    deployment: str
    student: str
    hours: float = 0.0
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "usage_grants"
        indexes = [pymongo.IndexModel([("deployment", pymongo.ASCENDING), ("student", pymongo.ASCENDING)],
                                      unique=True)]


DOCUMENT_MODELS: list[type[Document]] = [Template, Deployment, Machine, Host, LabEvent, User, ApiToken,
                                         AuditEntry, LoginThrottle, UserSession, ServerSecret, ConsoleTicket,
                                         ConsoleSession, UsageInterval, UsageGrant]

"""GraphQL object types: read-only views of the documents, named as integrators see them.

Longer than 400 lines: every object type of the API in one place, as integrators read them
(each a list of fields with their descriptions and a one-line `of`); the types of one feature
that stand on their own live beside it (`kubekvm.graphql.usage`, `kubekvm.graphql.timetables`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import strawberry
from strawberry.dataloader import DataLoader

from kubekvm import image_models, models, streams, usage
from kubekvm.graphql.sharing import share_results_of
from kubekvm.graphql.usage import StopReason as StopReason
from kubekvm.graphql.usage import UsagePolicy
from kubekvm.services import console_requests, overview

if TYPE_CHECKING:
    from kubekvm.services import HostStatus
    from kubekvm.services.reports import ReportOutcome


# The domain's own enums, exposed under the names integrators see.
Phase = strawberry.enum(models.Phase, description="The lab's overall state, derived from its machines.")
Power = strawberry.enum(models.Power, description="What the teacher wants for a lab's machines as a whole.")
DesiredMachineState = strawberry.enum(models.DesiredState, name="DesiredMachineState")
ObservedMachineState = strawberry.enum(
    models.ObservedState, name="ObservedMachineState",
    description="What the machine's host reports (PENDING until it has).")
OSFamily = strawberry.enum(models.OSFamily)
Role = strawberry.enum(models.Role, description="admin: everything; teacher: own labs; student: own machines.")
TokenKind = strawberry.enum(models.TokenKind, name="TokenKind")


@strawberry.type(description="A golden image labs are made from.")
class Template:
    name: str
    title: str
    description: str
    os: models.OSFamily
    image: str = strawberry.field(description="File name of the base qcow2 on each host.")
    vcpus: int
    memory_mib: int
    disk_gib: int
    teachers: list[str] = strawberry.field(
        description="The teachers who may use it; empty: every teacher.")
    versions: list[TemplateVersion] = strawberry.field(
        description="Its published versions, oldest first; new labs get the newest kept one.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, t: models.Template) -> Template:
        return cls(name=t.name, title=t.title, description=t.description, os=t.os,
                   image=t.image, vcpus=t.vcpus, memory_mib=t.memory_mib, disk_gib=t.disk_gib,
                   teachers=t.teachers, versions=[TemplateVersion.of(v) for v in t.versions],
                   created_at=t.created_at, updated_at=t.updated_at)


@strawberry.type(description="One published version of a template: an image of the store.")
class TemplateVersion:
    number: int
    digest: str
    note: str
    author: str
    created_at: datetime
    retired: bool

    @classmethod
    def of(cls, v: models.TemplateVersion) -> TemplateVersion:
        return cls(number=v.number, digest=v.digest, note=v.note, author=v.author, created_at=v.created_at,
                   retired=v.retired)


@strawberry.type(description="A golden image of the image store: immutable, named by its digest.")
class Image:
    digest: str = strawberry.field(description="`sha256:<hex>` of the stored qcow2's bytes.")
    name: str = strawberry.field(description="The file name it was imported from.")
    size: float = strawberry.field(description="Bytes on disk (a float: images outgrow a GraphQL Int).")
    virtual_size: float = strawberry.field(description="Bytes the guest sees.")
    source_format: str = strawberry.field(description="qcow2, or raw (converted to qcow2 on import).")
    imported_by: str
    imported_at: datetime
    retired: bool = strawberry.field(description="Garbage-collected: no kept version uses it any more.")

    @classmethod
    def of(cls, i: image_models.Image) -> Image:
        return cls(digest=i.digest, name=i.name, size=i.size, virtual_size=i.virtual_size,
                   source_format=i.source_format, imported_by=i.imported_by, imported_at=i.imported_at,
                   retired=i.retired)


@strawberry.type(description="One VM of a lab.")
class Machine:
    id: strawberry.ID
    name: str = strawberry.field(description="`<lab>-<index>`; the host's domain is `kubekvm-<name>`.")
    deployment: str
    index: int
    template: str
    host: str | None
    student: str | None = strawberry.field(description="The rostered student it belongs to.")
    desired: models.DesiredState
    observed: models.ObservedState
    message: str
    observed_at: datetime | None
    since: datetime | None = strawberry.field(description=(
        "When the machine entered its present situation (a new observed state, a start/stop/reset "
        "request, a host given, a removal asked): how long it has been doing what it does."))
    reset_generation: int
    power_generation: int
    running_since: datetime | None = strawberry.field(description="Since when its host reports it running.")
    stop_reason: models.StopReason | None = strawberry.field(
        description="Why the platform stopped it (kept until it is started again).")
    base_version: int | None = strawberry.field(
        description="The template version its disk is based on (null: an unversioned template).")
    stop_message: str = strawberry.field(description=(
        "`stopReason` in words, as the student reads it on their page; empty when there is none."))
    publish: PublishState | None = strawberry.field(
        description="Its publish as a template version: under way (the machine is locked), or how it ended.")

    @classmethod
    def of(cls, m: models.Machine) -> Machine:
        return cls(id=strawberry.ID(str(m.id)), name=m.name, deployment=m.deployment, index=m.index,
                   template=m.spec.template, host=m.host, student=m.student,
                   desired=m.desired, observed=m.observed, message=m.message,
                   observed_at=m.observed_at, since=m.since, reset_generation=m.reset_generation,
                   power_generation=m.power_generation, running_since=m.running_since,
                   stop_reason=m.stop_reason, base_version=m.spec.version,
                   stop_message=usage.describe_stop(m.stop_reason) if m.stop_reason is not None else "",
                   publish=PublishState.of(m.publish) if m.publish is not None else None)


@strawberry.type(description="A machine being published as a template version, or how that ended.")
class PublishState:
    template: str
    new_template: bool
    state: str = strawberry.field(description="requested, uploading, done or failed.")
    done_bytes: float
    total_bytes: float | None
    message: str
    requested_by: str

    @classmethod
    def of(cls, p: models.PublishJob) -> PublishState:
        return cls(template=p.template, new_template=p.new_template, state=p.state, done_bytes=p.done,
                   total_bytes=p.total, message=p.message, requested_by=p.requested_by)


@strawberry.type(description=(
    "What became of one report of a `reportMachineStates` batch: accepted (and the machine as "
    "recorded), or refused with the error's code and message; the batch's other reports are applied "
    "all the same."))
class MachineReportOutcome:
    machine_id: strawberry.ID
    accepted: bool
    code: str | None = strawberry.field(description="Why it was refused: NOT_FOUND (the machine was "
                                        "removed), CONFLICT (it is assigned to another host), "
                                        "VALIDATION_FAILED.")
    message: str | None
    machine: Machine | None

    @classmethod
    def of(cls, outcome: ReportOutcome) -> MachineReportOutcome:
        error = outcome.error
        return cls(machine_id=strawberry.ID(outcome.machine_id), accepted=error is None,
                   code=error.code if error is not None else None,
                   message=error.message if error is not None else None,
                   machine=Machine.of(outcome.machine) if outcome.machine is not None else None)


@strawberry.type(description="A lab: `replicas` machines of one template, one per student.")
class Deployment:
    id: strawberry.ID
    name: str
    title: str
    template: str
    replicas: int
    power: models.Power
    phase: models.Phase
    message: str = strawberry.field(description=(
        "Derived from the machines' states and the pending request every time the phase is "
        "recomputed, e.g. \"1/3 running, 2 starting\"."))
    phase_since: datetime | None = strawberry.field(description="When the lab entered its phase.")
    generation: int
    owner: str | None = strawberry.field(description="The teacher whose lab it is.")
    created_at: datetime
    updated_at: datetime
    running: int = strawberry.field(description="Machines observed running.")
    usage_policy: UsagePolicy = strawberry.field(description="Its limits on running (idle shutdown, quotas).")
    machine_count: int = strawberry.field(description="Machines the lab keeps (not being removed).")
    template_version: int | None = strawberry.field(
        description="The template version new and reset machines start from (null: unversioned).")
    roster_names: strawberry.Private[list[str]]
    roster_group: str | None = strawberry.field(
        default=None, description="The directory group the roster was last filled from (fillRosterFromGroup).")

    @classmethod
    def of(cls, d: models.Deployment, *, running: int = 0, machine_count: int = 0) -> Deployment:
        return cls(id=strawberry.ID(str(d.id)), name=d.name, title=d.title, template=d.template,
                   replicas=d.replicas, power=d.power, phase=d.phase, phase_since=d.phase_since,
                   message=d.message, generation=d.generation, owner=d.owner, created_at=d.created_at,
                   updated_at=d.updated_at, running=running, machine_count=machine_count,
                   template_version=d.template_version, roster_names=d.roster, roster_group=d.roster_group,
                   usage_policy=UsagePolicy.of(d.policy))

    @strawberry.field(description="The lab's students (usernames); empty for a student asking.")
    async def roster(self, info: strawberry.Info) -> list[str]:
        roster: list[str] = await info.context["services"].visible_roster(self.roster_names)
        return roster

    @strawberry.field(description="The lab's machines, by index.")
    async def machines(self, info: strawberry.Info) -> list[Machine]:
        # Every lab of a page asks at once: one query for all of their machines, not one per lab.
        loader = info.context.get("lab_machines")
        if loader is None:
            services = info.context["services"]

            async def load(names: list[str]) -> list[list[models.Machine]]:
                found = await services.machines_of_labs(names)
                return [found[name] for name in names]

            loader = info.context["lab_machines"] = DataLoader(load_fn=load)
        return [Machine.of(m) for m in await loader.load(self.name)]

    @strawberry.field(description="The lab's recent history, newest first.")
    async def events(self, info: strawberry.Info, limit: int = 20) -> list[LabEvent]:
        services = info.context["services"]
        return [LabEvent(at=e.at, machine=e.machine, message=e.message)
                for e in await services.lab_events(self.name, limit=min(max(limit, 1), 200))]


@strawberry.type
class LabEvent:
    at: datetime
    machine: str | None
    message: str


@strawberry.type
class DeploymentPage:
    items: list[Deployment]
    offset: int
    limit: int
    # The total as the page's read told it; None: more labs follow, counted only if asked for.
    known_total: strawberry.Private[int | None]
    phase: strawberry.Private[models.Phase | None]

    @strawberry.field
    async def total(self, info: strawberry.Info) -> int:
        if self.known_total is None:
            # A count by the same rules and filter as the page (what the caller may see).
            self.known_total = (await info.context["services"].list_deployments(phase=self.phase, limit=1)).counted
        return self.known_total


@strawberry.type(description="A registered hypervisor and its agent.")
class Host:
    name: str
    vcpus: int
    memory_mib: int
    images: list[str]
    domain_type: str
    agent_version: str
    allocated_vcpus: int
    allocated_memory_mib: int
    orphans: list[str] = strawberry.field(
        description="KubeKVM domains on the host that no lab claims (left alone).")
    registered_at: datetime
    last_heartbeat: datetime
    ready: bool
    counted: strawberry.Private[int | None]
    pulls: list[ImagePullState] = strawberry.field(description="Store images the host's agent is pulling.")

    @strawberry.field(description="Its images that the store garbage-collected: its agent deletes them.")
    async def drop_images(self, info: strawberry.Info) -> list[str]:
        dropped: list[str] = await info.context["services"].dropped_images(self.name, self.images)
        return dropped

    @classmethod
    def of(cls, s: HostStatus) -> Host:
        h = s.host
        return cls(name=h.name, vcpus=h.vcpus, memory_mib=h.memory_mib, images=h.images,
                   domain_type=h.domain_type, agent_version=h.agent_version,
                   allocated_vcpus=h.allocated_vcpus, allocated_memory_mib=h.allocated_memory_mib,
                   orphans=h.orphans, registered_at=h.registered_at, last_heartbeat=h.last_heartbeat,
                   ready=s.ready, counted=s.machines,
                   pulls=[ImagePullState(image=p.image, done_bytes=p.done, total_bytes=p.total, error=p.error)
                          for p in h.pulls])

    @strawberry.field(description="Machines placed on the host.")
    async def machines(self, info: strawberry.Info) -> int:
        # Counted only when asked for (the list of hosts counts all of them in one query): an
        # agent's heartbeat, which asks for its name, must not count anything.
        if self.counted is not None:
            return self.counted
        counted: int = await info.context["services"].count_host_machines(self.name)
        return counted


@strawberry.type(description="A store image a host's agent is pulling, or failed to pull.")
class ImagePullState:
    image: str
    done_bytes: float
    total_bytes: float | None
    error: str


@strawberry.type
class ServerInfo:
    version: str
    hostname: str = strawberry.field(description="The server replica that answered.")
    database: str
    event_stream: str = strawberry.field(
        description="change-streams (works across replicas) or in-process (one replica only).")


@strawberry.type
class Count:
    key: str
    count: int


@strawberry.type(description=(
    "Admins: the fleet at a glance (the Operations page). `replica…`/`…Here` figures are the answering "
    "replica's own; the others are the whole fleet's."))
class OperationsOverview:
    replica: str
    hosts_ready: int
    hosts_unreachable: int
    labs_by_phase: list[Count]
    machines_by_observed_state: list[Count]
    event_feed_mode: str
    event_feed_healthy: bool
    event_feed_lag_seconds: float | None
    event_feed_restarts: int
    errors_last_hour_here: int
    failed_sign_ins_last_hour: int
    server_faults_last_hour: int

    @classmethod
    def of(cls, o: overview.Overview) -> OperationsOverview:
        return cls(replica=o.replica, hosts_ready=o.hosts_ready, hosts_unreachable=o.hosts_unreachable,
                   labs_by_phase=[Count(key=k, count=v) for k, v in o.fleet.labs_by_phase.items()],
                   machines_by_observed_state=[Count(key=k, count=v) for k, v in o.machines_by_observed.items()],
                   event_feed_mode=o.feed_mode, event_feed_healthy=o.feed_healthy,
                   event_feed_lag_seconds=o.feed_lag_seconds, event_feed_restarts=o.feed_restarts,
                   errors_last_hour_here=o.errors_last_hour_here,
                   failed_sign_ins_last_hour=o.failed_sign_ins_last_hour,
                   server_faults_last_hour=o.server_faults_last_hour)


@strawberry.type(description="The template a host builds a machine from.")
class AssignmentTemplate:
    name: str
    image: str
    os: str
    vcpus: int
    memory_mib: int
    disk_gib: int


@strawberry.type(description="A machine as its host agent must make it.")
class Assignment:
    machine_id: strawberry.ID
    vm_name: str
    deployment: str
    index: int
    desired: models.DesiredState
    reset_generation: int
    power_generation: int
    template: AssignmentTemplate
    request_id: str | None = strawberry.field(description=(
        "The id of the request that last changed this machine (its X-Request-ID): the agent logs its "
        "steps for it under this id."))
    publish_job: str | None = strawberry.field(description=(
        "A publish job waiting for the agent: flatten the stopped machine's disk and upload it to "
        "/machines/{vmName}/publish/{publishJob}."), default=None)

    @classmethod
    def of(cls, m: models.Machine) -> Assignment:
        s = m.spec
        return cls(machine_id=strawberry.ID(str(m.id)), vm_name=m.name, deployment=m.deployment,
                   index=m.index, desired=m.desired, request_id=m.request_id,
                   reset_generation=m.reset_generation, power_generation=m.power_generation,
                   template=AssignmentTemplate(name=s.template, image=s.image, os=s.os.value,
                                               vcpus=s.vcpus, memory_mib=s.memory_mib,
                                               disk_gib=s.disk_gib),
                   publish_job=m.publish.id if m.publish is not None and m.publish.active else None)


AssignmentBatchKind = strawberry.enum(streams.BatchKind, name="AssignmentBatchKind")


@strawberry.type
class AssignmentBatch:
    kind: streams.BatchKind
    cursor: str | None
    assignments: list[Assignment]
    removed: list[strawberry.ID]


@strawberry.type(description=(
    "For host agents: a browser waits for a console of one of this host's machines. Connect to the "
    "machine's VNC display on the host's loopback, then dial `url` (a websocket, with the host "
    "token) and copy bytes both ways."))
class ConsoleRequest:
    session: str
    machine_id: strawberry.ID
    machine: str = strawberry.field(description="The machine's name, `<lab>-<index>`.")
    deployment: str
    index: int
    url: str = strawberry.field(description=(
        "The server replica holding the browser, as http(s)://host:port/consoles/agent/<session>."))

    @classmethod
    def of(cls, request: console_requests.ConsoleRequest) -> ConsoleRequest:
        return cls(session=request.session, machine_id=strawberry.ID(request.machine_id), machine=request.machine,
                   deployment=request.deployment, index=request.index, url=request.url)


DeploymentEventKind = strawberry.enum(streams.LabChangeKind, name="DeploymentEventKind")


# Every subscriber of a change is handed the same event: their results are shared.
@share_results_of
@strawberry.type(description=(
    "One event of `deploymentEvents`: first the current state (a SNAPSHOT per lab, with its "
    "machines, then SYNCED), then each change as it happens."))
class DeploymentEvent:
    kind: streams.LabChangeKind
    lab: str
    deployment: Deployment | None
    machine: Machine | None
    machines: list[Machine] | None = strawberry.field(
        default=None, description="SNAPSHOT: the lab's machines (those you may see).")
    cursor: str | None = strawberry.field(
        default=None, description=("Pass the last one you received as `cursor` when subscribing "
                                   "again to resume without missing a change."))


@strawberry.type(description="Who is asking: a user, a host agent, or nobody.")
class Identity:
    kind: str = strawberry.field(description="anonymous, user or host")
    name: str
    role: models.Role | None


@strawberry.type(description="An account. Passwords are never shown, only whether one is set.")
class User:
    name: str
    role: models.Role
    has_password: bool
    signs_in_with: str = strawberry.field(description=(
        "local (a password here), ldap, or oidc:<provider>: who vouches for this account at sign-in."))
    created_at: datetime
    disabled: bool = strawberry.field(default=False, description=(
        "A disabled account cannot sign in, and its tokens are refused (`disableUser`, `enableUser`)."))

    @classmethod
    def of(cls, u: models.User) -> User:
        return cls(name=u.name, role=u.role, has_password=u.password_hash is not None,
                   signs_in_with=":".join(u.identity.split(":")[:2 if u.identity.startswith("oidc:") else 1])
                   if u.identity else "local", created_at=u.created_at, disabled=u.disabled)


@strawberry.type(description="A bearer token's record (the token itself is shown only when made).")
class ApiToken:
    id: strawberry.ID
    kind: models.TokenKind
    owner: str = strawberry.field(description="The user, or the host, it acts as.")
    label: str
    prefix: str = strawberry.field(description="Its first characters, to tell tokens apart.")
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, t: models.ApiToken) -> ApiToken:
        return cls(id=strawberry.ID(str(t.id)), kind=t.kind, owner=t.owner, label=t.label, prefix=t.prefix,
                   created_by=t.created_by, created_at=t.created_at)


@strawberry.type(description="A token just made: `token` is shown this once and never again.")
class NewToken:
    token: str
    api_token: ApiToken


@strawberry.type(description="A roster change: the lab, students left without a machine, accounts made.")
class RosterChange:
    deployment: Deployment
    unbound: list[str]
    created_accounts: list[str]
    left_out: list[str] = strawberry.field(
        default_factory=list, description="Members of the directory group left out: their accounts are staff.")


@strawberry.type(description="One line of the audit log.")
class AuditEntry:
    at: datetime
    actor: str
    actor_kind: str
    role: str
    action: str
    target: str
    address: str
    outcome: str = strawberry.field(description="ok, or the refusal's code.")
    message: str

    @classmethod
    def of(cls, e: models.AuditEntry) -> AuditEntry:
        return cls(at=e.at, actor=e.actor, actor_kind=e.actor_kind, role=e.role, action=e.action,
                   target=e.target, address=e.address, outcome=e.outcome, message=e.message)


@strawberry.type
class AuditPage:
    items: list[AuditEntry]
    total: int

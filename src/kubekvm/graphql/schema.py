"""Queries, mutations and subscriptions. Each resolver translates arguments, calls the caller's
operations (`kubekvm.authorized.Authorized`: each declared, with the rule saying who may call
it, in its noun's module of `kubekvm.services`) and wraps the result in a GraphQL type; no
rule of the platform lives here.

Longer than 400 lines: the whole API in one place, as integrators read it (every resolver is a
few lines), with the limits and extensions that apply to all of it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator
from datetime import datetime
from typing import Any

import strawberry
from graphql import ASTValidationRule, DocumentNode, GraphQLSchema, parse, validate
from graphql.error import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.types import ExecutionContext

from kubekvm import models, streams, validation
from kubekvm.authorized import Authorized
from kubekvm.config import Settings
from kubekvm.errors import KubeKVMError, ValidationFailed
from kubekvm.graphql.errors import ErrorCodes, argument_of, coded
from kubekvm.graphql.metrics import OperationMetrics
from kubekvm.graphql.sharing import SharingExecutor
from kubekvm.graphql.timetables import TimetableMutation, TimetableQuery
from kubekvm.graphql.types import (
    ApiToken,
    Assignment,
    AssignmentBatch,
    AuditEntry,
    AuditPage,
    ConsoleRequest,
    Deployment,
    DeploymentEvent,
    DeploymentPage,
    Host,
    Identity,
    Image,
    Machine,
    MachineReportOutcome,
    NewToken,
    OperationsOverview,
    RosterChange,
    ServerInfo,
    Template,
    User,
)
from kubekvm.graphql.usage import UsageMutation, UsageQuery
from kubekvm.graphql.users import UserAdminMutation, UserAdminQuery
from kubekvm.quotas import SubscriptionQuotas
from kubekvm.services.reports import MachineReport


def _bytes(value: float) -> int:
    """A byte count sent as a GraphQL Float (an Int stops at 2**31): a whole number."""
    if value != value or value in (float("inf"), float("-inf")) or value != int(value):
        raise ValidationFailed("pulls", "A byte count is a whole number.")
    return int(value)


def _services(info: strawberry.Info) -> Authorized:
    services: Authorized = info.context["services"]
    return services


def _subscription_slot(info: strawberry.Info) -> contextlib.ExitStack:
    """This subscription's slot in its websocket's and its user's counts (`kubekvm.quotas`),
    held until the returned stack is closed; TooManySubscriptions if either is full."""
    stack = contextlib.ExitStack()
    quotas: SubscriptionQuotas | None = info.context.get("quotas")
    if quotas is not None:  # None: a schema run outside the server (no transport to limit)
        connection = info.context.setdefault("connection_quota", quotas.for_connection())
        stack.enter_context(quotas.hold(actor=_services(info).actor, connection=connection))
    return stack


async def _deployment(services: Authorized, lab: models.Deployment) -> Deployment:
    running, total = await services.lab_counts(lab)
    return Deployment.of(lab, running=running, machine_count=total)


async def _deployment_event(services: Authorized, change: streams.LabChange) -> DeploymentEvent:
    """The GraphQL event of a change, made once and shared by every subscriber that is passed it
    (the same change object reaches all of them: `streams.lab_changes`)."""
    shared: DeploymentEvent | None = change.memo.get("graphql")
    if shared is not None:
        return shared
    deployment = None
    if change.deployment is not None:
        running, total = await services.lab_counts(change.deployment)
        deployment = Deployment.of(change.deployment, running=running, machine_count=total)
    event = DeploymentEvent(
        kind=change.kind, lab=change.lab, deployment=deployment,
        machine=Machine.of(change.machine) if change.machine is not None else None,
        machines=None if change.machines is None else [Machine.of(m) for m in change.machines],
        cursor=change.cursor)
    change.memo["graphql"] = event
    return event


@strawberry.input
class TemplateInput:
    name: str
    title: str | None = None
    description: str | None = None
    os: models.OSFamily = models.OSFamily.LINUX
    image: str
    vcpus: int = 1
    memory_mib: int = 1024
    disk_gib: int = 10
    teachers: list[str] = strawberry.field(
        default_factory=list, description="Only these teachers may use it; empty: every teacher.")


@strawberry.input
class TemplateUpdate:
    title: str | None = None
    description: str | None = None
    os: models.OSFamily | None = None
    image: str | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_gib: int | None = None
    teachers: list[str] | None = None


@strawberry.input
class DeploymentInput:
    name: str = strawberry.field(description="1-40 lowercase letters, digits and inner hyphens.")
    template: str
    replicas: int
    title: str | None = None
    power: models.Power = models.Power.RUNNING
    owner: str | None = strawberry.field(
        default=None, description="Admins only: the teacher the lab is for (default: the caller).")


@strawberry.input
class UserInput:
    name: str
    role: models.Role
    password: str | None = strawberry.field(
        default=None, description="None: no usable password until one is set (or a set-password link used).")


@strawberry.input
class DeploymentUpdate:
    title: str | None = None
    replicas: int | None = None
    power: models.Power | None = None
    template: str | None = strawberry.field(
        default=None, description="Accepted only if unchanged: a lab's template is fixed.")


@strawberry.input
class RegisterHostInput:
    name: str
    vcpus: int
    memory_mib: int
    images: list[str]
    domain_type: str = ""
    agent_version: str = ""


@strawberry.input(description="A store image the agent is pulling (its progress, or why it failed).")
class ImagePullInput:
    image: str
    done_bytes: float = 0
    total_bytes: float | None = None
    error: str = ""


@strawberry.input
class HeartbeatInput:
    name: str
    images: list[str] | None = None
    pulls: list[ImagePullInput] | None = None


@strawberry.input
class MachineReportInput:
    machine_id: strawberry.ID
    host: str
    state: models.ObservedState
    message: str | None = None
    power_generation: int | None = strawberry.field(
        default=None, description="The latest start/stop request the host has acted on.")
    cpu_seconds: float | None = strawberry.field(
        default=None, description="The guest's cumulative CPU time (libvirt), for idle shutdown.")


@strawberry.input(description="One machine's state as its host observes it.")
class MachineStateReportInput:
    machine_id: strawberry.ID
    state: models.ObservedState
    message: str | None = None
    power_generation: int | None = strawberry.field(
        default=None, description="The latest start/stop request the host has acted on.")
    cpu_seconds: float | None = strawberry.field(
        default=None, description="The guest's cumulative CPU time (libvirt), for idle shutdown.")


@strawberry.input(description="A host's reports of several machines, coalesced by its agent.")
class MachineStateReportsInput:
    host: str
    reports: list[MachineStateReportInput] = strawberry.field(
        description="At most 500, each machine at most once.")


@strawberry.input
class OrphanReportInput:
    host: str
    domains: list[str]


@strawberry.type
class Query(TimetableQuery, UsageQuery, UserAdminQuery):
    @strawberry.field
    async def templates(self, info: strawberry.Info) -> list[Template]:
        return [Template.of(t) for t in await _services(info).list_templates()]

    @strawberry.field
    async def template(self, info: strawberry.Info, name: str) -> Template:
        return Template.of(await _services(info).get_template(name))

    @strawberry.field(description="The image store's images, newest first (admins).")
    async def images(self, info: strawberry.Info) -> list[Image]:
        return [Image.of(i) for i in await _services(info).list_images()]

    @strawberry.field(description="Labs, by name, optionally only those in one phase.")
    async def deployments(self, info: strawberry.Info, phase: models.Phase | None = None,
                          offset: int = 0, limit: int = 100) -> DeploymentPage:
        services = _services(info)
        # Counted only if `total` is asked for and the page does not already tell it (paging).
        page = await services.list_deployments(phase=phase, offset=offset, limit=limit, count=False)
        counts = await services.running_counts(page.items)
        items = [Deployment.of(d, running=counts[d.name][0], machine_count=counts[d.name][1])
                 for d in page.items]
        return DeploymentPage(items=items, known_total=page.total, phase=phase, offset=offset, limit=limit)

    @strawberry.field
    async def deployment(self, info: strawberry.Info, name: str) -> Deployment:
        services = _services(info)
        return await _deployment(services, await services.get_deployment(name))

    @strawberry.field(description="Machines of one lab, of one host, or all.")
    async def machines(self, info: strawberry.Info, deployment: str | None = None,
                       host: str | None = None) -> list[Machine]:
        found = await _services(info).list_machines(deployment=deployment, host=host)
        return [Machine.of(m) for m in found]

    @strawberry.field
    async def hosts(self, info: strawberry.Info) -> list[Host]:
        return [Host.of(s) for s in await _services(info).list_hosts()]

    @strawberry.field(description="Who is asking (anonymous when no credentials came).")
    def me(self, info: strawberry.Info) -> Identity:
        actor = _services(info).actor
        return Identity(kind=actor.kind.value, name=actor.name, role=actor.role)

    @strawberry.field(description="Admins only: the accounts, optionally of one role.")
    async def users(self, info: strawberry.Info, role: models.Role | None = None) -> list[User]:
        return [User.of(u) for u in await _services(info).list_users(role=role)]

    @strawberry.field(description="Your API tokens; admins may ask for everyone's (and the hosts').")
    async def api_tokens(self, info: strawberry.Info, everyone: bool = False) -> list[ApiToken]:
        return [ApiToken.of(t) for t in await _services(info).list_tokens(everyone=everyone)]

    @strawberry.field(description="Admins only: the audit log, newest first. `outcome: \"refused\"` "
                                  "gives every refusal.")
    async def audit_log(self, info: strawberry.Info, actor: str | None = None, action: str | None = None,
                        target: str | None = None, outcome: str | None = None, since: datetime | None = None,
                        offset: int = 0, limit: int = 100) -> AuditPage:
        page = await _services(info).audit_log(actor=actor, action=action, target=target, outcome=outcome,
                                               since=since, offset=offset, limit=limit)
        return AuditPage(items=[AuditEntry.of(e) for e in page.items], total=page.total)

    @strawberry.field(description="Admins: hosts, labs, machines, the event feed and failures at a glance.")
    async def operations_overview(self, info: strawberry.Info) -> OperationsOverview:
        return OperationsOverview.of(await _services(info).overview())

    @strawberry.field(description="Which server replica answered (the load-balancing test).")
    async def server_info(self, info: strawberry.Info) -> ServerInfo:
        i = await _services(info).server_info()
        return ServerInfo(version=i.version, hostname=i.hostname, database=i.database,
                          event_stream=i.event_stream)


@strawberry.type
class Mutation(TimetableMutation, UsageMutation, UserAdminMutation):
    @strawberry.mutation
    async def create_template(self, info: strawberry.Info, input: TemplateInput) -> Template:
        t = await _services(info).create_template(
            name=input.name, title=input.title, description=input.description, os=input.os.value,
            image=input.image, vcpus=input.vcpus, memory_mib=input.memory_mib, disk_gib=input.disk_gib,
            teachers=input.teachers)
        return Template.of(t)

    @strawberry.mutation
    async def update_template(self, info: strawberry.Info, name: str, input: TemplateUpdate) -> Template:
        t = await _services(info).update_template(
            name, title=input.title, description=input.description,
            os=input.os.value if input.os else None, image=input.image, vcpus=input.vcpus,
            memory_mib=input.memory_mib, disk_gib=input.disk_gib, teachers=input.teachers)
        return Template.of(t)

    @strawberry.mutation(description="Refused (CONFLICT) while a lab uses the template.")
    async def delete_template(self, info: strawberry.Info, name: str) -> Template:
        return Template.of(await _services(info).delete_template(name))

    @strawberry.mutation(description="A new version of the template: an image of the store, under the next "
                                     "number. Existing machines keep their disks; new labs get it.")
    async def publish_template_version(self, info: strawberry.Info, name: str, digest: str,
                                       note: str = "") -> Template:
        return Template.of(await _services(info).publish_template_version(name, digest=digest, note=note))

    @strawberry.mutation(description="Retire a version no lab pins and no machine is based on; its image is "
                                     "then deleted from the store and the hosts if nothing else uses it.")
    async def retire_template_version(self, info: strawberry.Info, name: str, version: int) -> Template:
        return Template.of(await _services(info).retire_template_version(name, version=version))

    @strawberry.mutation(description="New and reset machines of the lab start from this template version; "
                                     "the others keep their disks (and changes) until they are reset.")
    async def move_deployment_to_version(self, info: strawberry.Info, name: str, version: int) -> Deployment:
        services = _services(info)
        return await _deployment(services, await services.move_deployment_to_version(name, version=version))

    @strawberry.mutation(description="Publish a stopped machine as its template's next version (or, with "
                                     "newTemplate, as a new template): its host flattens and uploads its disk; "
                                     "the machine is locked meanwhile (see Machine.publish).")
    async def publish_machine(self, info: strawberry.Info, name: str, note: str = "",
                              new_template: str | None = None) -> Machine:
        return Machine.of(await _services(info).publish_machine(name, note=note, new_template=new_template))

    @strawberry.mutation
    async def create_deployment(self, info: strawberry.Info, input: DeploymentInput) -> Deployment:
        services = _services(info)
        lab = await services.create_deployment(
            name=input.name, template=input.template, replicas=input.replicas, title=input.title,
            power=input.power, owner=input.owner)
        return await _deployment(services, lab)

    @strawberry.mutation
    async def update_deployment(self, info: strawberry.Info, name: str,
                                input: DeploymentUpdate) -> Deployment:
        services = _services(info)
        lab = await services.update_deployment(
            name, title=input.title, replicas=input.replicas, template=input.template,
            power=input.power)
        return await _deployment(services, lab)

    @strawberry.mutation
    async def start_deployment(self, info: strawberry.Info, name: str) -> Deployment:
        services = _services(info)
        return await _deployment(services, await services.start_deployment(name))

    @strawberry.mutation
    async def stop_deployment(self, info: strawberry.Info, name: str) -> Deployment:
        services = _services(info)
        return await _deployment(services, await services.stop_deployment(name))

    @strawberry.mutation(description=(
        "Marks the lab Deleting; it disappears once its hosts report every VM gone. "
        "`force` drops it at once, only allowed when its hosts are unreachable."))
    async def delete_deployment(self, info: strawberry.Info, name: str, force: bool = False) -> Deployment:
        services = _services(info)
        lab = await services.delete_deployment(name, force=force)
        return Deployment.of(lab)

    @strawberry.mutation(description=(
        "Make `students` (usernames) the lab's roster: each is bound to one machine; accounts "
        "that do not exist are made as students without a password. `matchReplicas` first "
        "scales the lab to one machine per student."))
    async def set_roster(self, info: strawberry.Info, name: str, students: list[str],
                         match_replicas: bool = False) -> RosterChange:
        services = _services(info)
        lab, unbound, created = await services.set_roster(name, students=students, match_replicas=match_replicas)
        return RosterChange(deployment=await _deployment(services, lab), unbound=unbound, created_accounts=created)

    @strawberry.mutation(description=(
        "Make the members of a directory (LDAP) group the lab's roster, as setRoster does; `group` "
        "is its name (redes-2026), RDN (cn=redes-2026) or DN; omitted, the group the lab was last "
        "filled from (a refresh). Members whose accounts are staff are left out."))
    async def fill_roster_from_group(self, info: strawberry.Info, name: str, group: str | None = None,
                                     match_replicas: bool = False) -> RosterChange:
        services = _services(info)
        lab, unbound, created, left_out = await services.fill_roster_from_group(
            name, group=group, match_replicas=match_replicas)
        return RosterChange(deployment=await _deployment(services, lab), unbound=unbound, created_accounts=created,
                            left_out=left_out)

    @strawberry.mutation
    async def start_machine(self, info: strawberry.Info, name: str) -> Machine:
        return Machine.of(await _services(info).start_machine(name))

    @strawberry.mutation
    async def stop_machine(self, info: strawberry.Info, name: str) -> Machine:
        return Machine.of(await _services(info).stop_machine(name))

    @strawberry.mutation(description="Rebuild the machine's disk from its template and start it.")
    async def reset_machine(self, info: strawberry.Info, name: str) -> Machine:
        return Machine.of(await _services(info).reset_machine(name))

    @strawberry.mutation(description="For host agents: announce the host and its capacity.")
    async def register_host(self, info: strawberry.Info, input: RegisterHostInput) -> Host:
        services = _services(info)
        await services.register_host(name=input.name, vcpus=input.vcpus, memory_mib=input.memory_mib,
                                     images=input.images, domain_type=input.domain_type,
                                     agent_version=input.agent_version)
        return Host.of(await services.host_status(input.name))

    @strawberry.mutation(description="For host agents: I am alive (and these images are here).")
    async def heartbeat(self, info: strawberry.Info, input: HeartbeatInput) -> Host:
        pulls = None if input.pulls is None else [
            models.ImagePull(image=p.image, done=_bytes(p.done_bytes), error=p.error,
                             total=None if p.total_bytes is None else _bytes(p.total_bytes)) for p in input.pulls]
        return Host.of(await _services(info).heartbeat(name=input.name, images=input.images, pulls=pulls))

    @strawberry.mutation(description=(
        "For host agents: what the host observes of a machine. Agents since the batched reports "
        "send `reportMachineStates`; this one stays for older agents."))
    async def report_machine_state(self, info: strawberry.Info, input: MachineReportInput) -> Machine:
        m = await _services(info).report_machine_state(
            machine_id=str(input.machine_id), host=input.host,
            state=input.state, message=input.message or "",
            power_generation=input.power_generation, cpu_seconds=input.cpu_seconds)
        return Machine.of(m)

    @strawberry.mutation(description=(
        "For host agents: what the host observes of several machines, one outcome per report in "
        "the same order. Each report is applied on its own: one the server refuses (its machine "
        "was removed, or is on another host) is said so in its outcome and the others are applied; "
        "a malformed batch (over 500 reports, a machine twice) is refused whole, nothing written."))
    async def report_machine_states(self, info: strawberry.Info,
                                    input: MachineStateReportsInput) -> list[MachineReportOutcome]:
        outcomes = await _services(info).report_machine_states(host=input.host, reports=[
            MachineReport(machine_id=str(report.machine_id), state=report.state, message=report.message or "",
                          power_generation=report.power_generation, cpu_seconds=report.cpu_seconds)
            for report in input.reports])
        return [MachineReportOutcome.of(outcome) for outcome in outcomes]

    @strawberry.mutation(description="For host agents: KubeKVM domains that no lab claims.")
    async def report_orphans(self, info: strawberry.Info, input: OrphanReportInput) -> Host:
        services = _services(info)
        await services.report_orphans(host=input.host, domains=input.domains)
        return Host.of(await services.host_status(input.host))

    @strawberry.mutation(description="Admins only: a new account.")
    async def create_user(self, info: strawberry.Info, input: UserInput) -> User:
        return User.of(await _services(info).create_user(name=input.name, role=input.role,
                                                         password=input.password))

    @strawberry.mutation(description=(
        "Admins only: set someone else's password (every session of theirs ends). Your own: changePassword."))
    async def set_user_password(self, info: strawberry.Info, name: str, password: str) -> User:
        return User.of(await _services(info).set_user_password(name, password))

    @strawberry.mutation(description=(
        "Change your own password, giving the current one; your other sessions end (the one "
        "this request came through stays). A wrong current password counts as a failed sign-in."))
    async def change_password(self, info: strawberry.Info, current_password: str, new_password: str) -> User:
        return User.of(await _services(info).change_password(current=current_password, new=new_password))

    @strawberry.mutation(description=(
        "Admins only: end every session of a user (signed in anywhere); returns how many ended."))
    async def end_user_sessions(self, info: strawberry.Info, name: str) -> int:
        return await _services(info).end_user_sessions(name)

    @strawberry.mutation(description=(
        "A one-time set-password link (a path on this server), good for 7 days; it replaces an "
        "older one. Admins: for anyone. Teachers: only for a student of theirs who has no password "
        "yet and is on no other teacher's lab (the link stops working if that changes)."))
    async def create_password_link(self, info: strawberry.Info, name: str) -> str:
        code = await _services(info).password_link(name)
        return f"/set-password?code={code}"

    @strawberry.mutation(description="A personal API token, acting as you. Shown once.")
    async def create_api_token(self, info: strawberry.Info, label: str = "") -> NewToken:
        record, token = await _services(info).create_token(label=label)
        return NewToken(token=token, api_token=ApiToken.of(record))

    @strawberry.mutation(description="Admins only: a token for the agent of `host` (it may act for that host only).")
    async def create_host_token(self, info: strawberry.Info, host: str, label: str = "") -> NewToken:
        record, token = await _services(info).create_host_token(host=host, label=label)
        return NewToken(token=token, api_token=ApiToken.of(record))

    @strawberry.mutation(description=(
        "Admins only: a token for Prometheus to scrape /metrics on every replica (it can do nothing else)."))
    async def create_scrape_token(self, info: strawberry.Info, label: str = "") -> NewToken:
        record, token = await _services(info).create_scrape_token(label=label)
        return NewToken(token=token, api_token=ApiToken.of(record))

    @strawberry.mutation(description="Revoke one of your tokens (admins: any token).")
    async def revoke_api_token(self, info: strawberry.Info, id: strawberry.ID) -> ApiToken:
        return ApiToken.of(await _services(info).revoke_token(str(id)))


@strawberry.type
class Subscription:
    @strawberry.subscription(description=(
        "One lab (by name) or every lab you may see: first its current state (a SNAPSHOT event "
        "per lab, with its machines, then SYNCED), then every phase and machine change. Each "
        "event has a `cursor`: subscribe again with the last one received to resume after a "
        "reconnect (the changes since are replayed, or the current state is sent again). A "
        "RESYNC event says changes may have been missed: the current state follows it."))
    async def deployment_events(self, info: strawberry.Info, name: str | None = None,
                                cursor: str | None = None) -> AsyncGenerator[DeploymentEvent, None]:
        services = _services(info)
        try:
            if name is not None:
                # Checked (the lab exists, the caller may see it) with one read shared by every
                # subscription to it arriving together (`kubekvm.shared_reads`).
                with services.services.shared_reads.joining():
                    await services.get_deployment(name)
            changes = await services.lab_changes(lab=name, current=True, cursor=cursor)
            slot = _subscription_slot(info)
        except KubeKVMError as error:
            raise coded(error) from None
        with slot:
            async for change in changes:
                yield await _deployment_event(services, change)
    @strawberry.subscription(description=(
        "The agent's feed: a SNAPSHOT of every machine assigned to `host`, then CHANGE batches. "
        "Pass the last batch's cursor when reconnecting to resume; a SNAPSHOT comes if the "
        "server cannot resume from it."))
    async def host_assignments(self, info: strawberry.Info, host: str,
                               cursor: str | None = None) -> AsyncGenerator[AssignmentBatch, None]:
        services = _services(info)
        try:
            await services.follow_host(host)
            slot = _subscription_slot(info)
        except KubeKVMError as error:
            raise coded(error) from None
        with slot:
            async for batch in streams.host_assignments(services=services, feed=services.feed,
                                                        host=host, cursor=cursor):
                yield AssignmentBatch(kind=batch.kind, cursor=batch.cursor,
                                      assignments=[Assignment.of(m) for m in batch.machines],
                                      removed=[strawberry.ID(i) for i in batch.removed])

    @strawberry.subscription(description=(
        "The agent's console feed: each console a browser opens on one of `host`'s machines (those "
        "still waiting first). Only that host's token may follow it."))
    async def console_requests(self, info: strawberry.Info, host: str) -> AsyncGenerator[ConsoleRequest, None]:
        services = _services(info)
        try:
            requests = await services.console_requests(host)
            slot = _subscription_slot(info)
        except KubeKVMError as error:
            raise coded(error) from None
        with slot:
            async for request in requests:
                yield ConsoleRequest.of(request)


class StorableArguments(SchemaExtension):
    """Refuses, before anything runs, a request whose variables hold a lone surrogate (JSON's
    `"\\ud800"`): no resolver could store or even look it up (BSON cannot encode it), and it
    would otherwise surface as an internal error. GraphQL's own string literals cannot hold one
    (graphql-core's lexer refuses them); every other text rule is the domain's (`validation`)."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        try:
            for variable, value in (context.variables or {}).items():
                try:
                    validation.storable(value, field=variable)
                except ValidationFailed as refused:
                    if refused.field != variable:
                        raise
                    # Named after the argument it is given to: looked up only now, as walking
                    # the document for every variable of every request costs more than the rest.
                    raise ValidationFailed(argument_of(context.graphql_document, variable) or variable,
                                           refused.message) from None
        except ValidationFailed as error:
            # Set before validation runs: strawberry then skips it and answers with this.
            context.pre_execution_errors = [coded(error)]
        yield


# Parsing and validating a document cost milliseconds of CPU (more than running a heartbeat),
# and the same few documents come again and again (every agent's heartbeat and reports, every
# page's queries): both outcomes are kept for this many distinct documents (least recently used
# out first).
DOCUMENTS_CACHED = 256


class CachedParse(SchemaExtension):
    """Parsing, remembered per document text and parse options (the token limit). Only documents
    that parse are kept: one that does not is left to strawberry's own parsing, which reports it
    with its code (`ErrorCodes`). The parsed document is shared by every request of that text,
    as nothing changes a document once parsed."""

    _documents: OrderedDict[tuple[str, tuple[tuple[str, Any], ...]], DocumentNode] = OrderedDict()

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query is not None and context.graphql_document is None:
            key = (context.query, tuple(sorted(context.parse_options.items())))
            document = self._documents.get(key)
            if document is None:
                with contextlib.suppress(GraphQLError):
                    document = parse(context.query, **context.parse_options)
                    self._documents[key] = document
                    if len(self._documents) > DOCUMENTS_CACHED:
                        self._documents.popitem(last=False)
            else:
                self._documents.move_to_end(key)
            if document is not None:
                context.graphql_document = document
        yield


class CachedValidation(SchemaExtension):
    """Validation, remembered per document text and rules (validation reads nothing else: not
    the variables, not the caller). The rules are made once per schema (`build_schema`), so
    the same document meets the same rules. A request refused before validation (`StorableArguments`)
    stays refused."""

    _results: OrderedDict[tuple[GraphQLSchema, str, tuple[type[ASTValidationRule], ...]], list[GraphQLError]] = \
        OrderedDict()

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.pre_execution_errors is None and context.validation_rules and context.query is not None:
            assert context.graphql_document is not None
            key = (context.schema._schema, context.query, tuple(context.validation_rules))
            errors = self._results.get(key)
            if errors is None:
                errors = validate(context.schema._schema, context.graphql_document, context.validation_rules)
                self._results[key] = errors
                if len(self._results) > DOCUMENTS_CACHED:
                    self._results.popitem(last=False)
            else:
                self._results.move_to_end(key)
            context.pre_execution_errors = errors
        yield


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError],
                       execution_context: ExecutionContext | None = None) -> None:
        # A refused request is the client's business, not an incident: only unexpected
        # failures are logged (by ErrorCodes, with their traceback).
        return None


def build_schema(settings: Settings | None = None) -> Schema:
    """The schema with this server's limits: depth 10, 5000 tokens, a number of aliases (so
    one request cannot ask for the same costly list hundreds of times), and introspection
    unless KUBEKVM_GRAPHQL_INTROSPECTION=0."""
    settings = settings or Settings()
    # The limiters' rules, made once: a new rule class per request would defeat the cache.
    rules = [*QueryDepthLimiter(max_depth=10).validation_rules,
             *MaxAliasesLimiter(max_alias_count=settings.graphql_max_aliases).validation_rules]
    if not settings.graphql_introspection:
        rules += DisableIntrospection().validation_rules
    extensions: list[Any] = [OperationMetrics, ErrorCodes, StorableArguments,
                             lambda: MaxTokensLimiter(max_token_count=5000), lambda: AddValidationRules(rules),
                             CachedParse, CachedValidation]
    return Schema(query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions,
                  execution_context_class=SharingExecutor)


schema = build_schema()


def sdl() -> str:
    return schema.as_str() + "\n"



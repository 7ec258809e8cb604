"""The authorization facade: `kubekvm.services` and `kubekvm.accounts` as one actor may use them.

GraphQL resolvers and page handlers get an `Authorized` for the request's actor (built by the
auth middleware, `kubekvm.auth`) and call it by the service layer's own method names. Each
method checks the rules of `kubekvm.access`, narrows lists in the database query (a teacher's
labs are found with `owner=`, a student's machines with `student=`), calls the service, and —
for everything that changes something — writes one audit entry with the outcome, refusals
included. So the pages and the API share one enforcement point, and nothing reaches the
service layer without passing through here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from kubekvm import access, validation
from kubekvm.access import Actor
from kubekvm.accounts import Accounts, AuditPage
from kubekvm.config import Settings
from kubekvm.consoles import ConsoleRequest, check_ready
from kubekvm.database import unavailable, uninterrupted
from kubekvm.errors import (
    Forbidden,
    KubeKVMError,
    NotFound,
    Unauthenticated,
    ValidationFailed,
)
from kubekvm.events import EventFeed
from kubekvm.models import (
    ApiToken,
    ConsoleSession,
    Deployment,
    Host,
    LabEvent,
    Machine,
    ObservedState,
    Phase,
    Power,
    Role,
    Template,
    TokenKind,
    User,
)
from kubekvm.services import HostStatus, Page, ServerInfo, Services, finish, host_name, lab_filter
from kubekvm.streams import LabChange, LabChangeKind, lab_changes

T = TypeVar("T")
# How often an open stream re-checks that the session it was opened with still exists.
SESSION_RECHECK_SECONDS = 5.0


class Authorized:
    def __init__(self, services: Services, accounts: Accounts, actor: Actor) -> None:
        self.services = services
        self.accounts = accounts
        self.actor = actor

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def feed(self) -> EventFeed:
        return self.services.feed

    async def _audited(self, action: str, target: str, work: Callable[[], Awaitable[T]], *,
                       routine: bool = False) -> T:
        """Run a change (its checks included) and record how it ended. `routine` calls (an agent's
        heartbeat and state reports, several a minute per host) are recorded only when refused:
        their successes are telemetry, which would bury the decisions people made.
        The change runs to its end even if the client leaves meanwhile (`services.finish`)."""
        return await finish(self._audited_work(action, target, work, routine=routine))

    async def _audited_work(self, action: str, target: str, work: Callable[[], Awaitable[T]], *,
                            routine: bool) -> T:
        try:
            result = await work()
        except KubeKVMError as error:
            await self.accounts.record(self.actor, action=action, target=target, outcome=error.code,
                                       message=error.message)
            raise
        except Exception as error:
            # A database fault cannot be recorded either (and trying would double the wait).
            if unavailable(error) is None:
                await self.accounts.record(self.actor, action=action, target=target, outcome="INTERNAL")
            raise
        if not routine:
            await self.accounts.record(self.actor, action=action, target=target)
        return result

    # ----------------------------------------------------------------- lookups

    async def _lab(self, name: str) -> Deployment:
        """A lab the actor may see; NotFound for one they may not (its existence is theirs to
        know only if they may see it)."""
        access.require_user(self.actor)
        lab = await self.services.labs.get_deployment(name)
        if not access.can_view_lab(self.actor, lab):
            raise NotFound(f"There is no lab named {name!r}.")
        return lab

    async def _managed_lab(self, name: str) -> Deployment:
        access.require_staff(self.actor)
        lab = await self._lab(name)
        if not access.can_manage_lab(self.actor, lab):
            raise Forbidden(f"Lab {name!r} is not yours to change.")
        return lab

    async def _machine(self, name: str) -> Machine:
        access.require_user(self.actor)
        machine = await self.services.machines.get_machine(name)
        lab = await self.services.labs.get_deployment(machine.deployment)
        if not access.can_view_machine(self.actor, machine, lab):
            raise NotFound(f"There is no machine named {name!r}.")
        return machine

    async def _usable_template(self, name: str) -> Template:
        template = await self.services.templates.get_template(name)
        if not access.can_use_template(self.actor, template):
            raise NotFound(f"There is no template named {name!r}.")
        return template

    # -------------------------------------------------------------- public

    def server_info(self) -> ServerInfo:
        return self.services.ctx.server_info()

    # --------------------------------------------------------------- templates

    async def list_templates(self) -> list[Template]:
        access.require_staff(self.actor)
        return await self.services.templates.list_templates(teacher=None if self.actor.is_admin else self.actor.name)

    async def get_template(self, name: str) -> Template:
        access.require_staff(self.actor)
        return await self._usable_template(name)

    async def create_template(self, *, name: str, title: str | None, description: str | None, os: str,
                              image: str, vcpus: int, memory_mib: int, disk_gib: int,
                              teachers: Sequence[str] = ()) -> Template:
        async def work() -> Template:
            access.require_admin(self.actor)
            return await self.services.templates.create_template(
                name=name, title=title, description=description, os=os, image=image, vcpus=vcpus,
                memory_mib=memory_mib, disk_gib=disk_gib, teachers=teachers)
        return await self._audited("createTemplate", f"template:{name}", work)

    async def update_template(self, name: str, *, title: str | None = None, description: str | None = None,
                              os: str | None = None, image: str | None = None, vcpus: int | None = None,
                              memory_mib: int | None = None, disk_gib: int | None = None,
                              teachers: Sequence[str] | None = None) -> Template:
        async def work() -> Template:
            access.require_admin(self.actor)
            return await self.services.templates.update_template(
                name, title=title, description=description, os=os, image=image, vcpus=vcpus,
                memory_mib=memory_mib, disk_gib=disk_gib, teachers=teachers)
        return await self._audited("updateTemplate", f"template:{name}", work)

    async def delete_template(self, name: str) -> Template:
        async def work() -> Template:
            access.require_admin(self.actor)
            return await self.services.templates.delete_template(name)
        return await self._audited("deleteTemplate", f"template:{name}", work)

    # -------------------------------------------------------------------- labs

    async def list_deployments(self, *, phase: Phase | None = None, offset: int = 0,
                               limit: int = 100) -> Page:
        access.require_user(self.actor)
        offset = validation.offset(offset)
        limit = validation.limit(limit, maximum=validation.DEPLOYMENTS_PAGE_MAX)
        return await self.services.labs.list_deployments(phase=phase, offset=offset, limit=limit,
                                                    only=lab_filter(self.actor))

    async def get_deployment(self, name: str) -> Deployment:
        return await self._lab(name)

    async def lab_counts(self, lab: Deployment) -> tuple[int, int]:
        # Counts of a lab the caller already holds (it came through here or its event filter).
        return await self.services.labs.lab_counts(lab)

    async def running_counts(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        # Counts of labs the caller already holds (they were listed or read through here).
        return await self.services.labs.running_counts(names)

    async def lab_events(self, name: str, *, limit: int = 50) -> list[LabEvent]:
        await self._lab(name)
        events = await self.services.labs.lab_events(name, limit=limit)
        if self.actor.is_student:
            # The lab's history names other students' machines: a student sees the lab's own
            # lines and those of their machine.
            mine = {m.name for m in await self.services.machines.list_machines(deployment=name,
                                                                               student=self.actor.name)}
            events = [e for e in events if e.machine is None or e.machine in mine]
        return events

    async def create_deployment(self, *, name: str, template: str, replicas: int, title: str | None = None,
                                power: Power = Power.RUNNING, owner: str | None = None) -> Deployment:
        async def work() -> Deployment:
            access.require_staff(self.actor)
            lab_owner = self.actor.name
            if owner is not None and owner != self.actor.name:
                if not self.actor.is_admin:
                    raise Forbidden("Teachers create labs of their own; only an admin may create one for someone else.")
                account = await self.accounts.find_user(owner)
                if account is None or account.role == Role.STUDENT:
                    raise ValidationFailed("owner", f"There is no teacher or admin named {owner!r}.")
                lab_owner = owner
            try:
                await self._usable_template(template)
            except NotFound:
                raise ValidationFailed("template", f"There is no template named {template!r}.") from None
            return await self.services.labs.create_deployment(name=name, template=template, replicas=replicas,
                                                         title=title, power=power, owner=lab_owner)
        return await self._audited("createDeployment", f"lab:{name}", work)

    async def update_deployment(self, name: str, *, title: str | None = None, replicas: int | None = None,
                                power: Power | None = None, template: str | None = None) -> Deployment:
        async def work() -> Deployment:
            await self._managed_lab(name)
            return await self.services.labs.update_deployment(name, title=title, replicas=replicas, power=power,
                                                         template=template)
        return await self._audited("updateDeployment", f"lab:{name}", work)

    async def start_deployment(self, name: str) -> Deployment:
        async def work() -> Deployment:
            await self._managed_lab(name)
            return await self.services.labs.start_deployment(name)
        return await self._audited("startDeployment", f"lab:{name}", work)

    async def stop_deployment(self, name: str) -> Deployment:
        async def work() -> Deployment:
            await self._managed_lab(name)
            return await self.services.labs.stop_deployment(name)
        return await self._audited("stopDeployment", f"lab:{name}", work)

    async def delete_deployment(self, name: str, *, force: bool = False) -> Deployment:
        async def work() -> Deployment:
            await self._managed_lab(name)
            return await self.services.labs.delete_deployment(name, force=force)
        return await self._audited("deleteDeployment", f"lab:{name}", work)

    async def set_roster(self, name: str, *, students: Sequence[str],
                         match_replicas: bool = False) -> tuple[Deployment, list[str], list[str]]:
        """The lab, the students left without a machine, and the accounts created."""
        async def work() -> tuple[Deployment, list[str], list[str]]:
            await self._managed_lab(name)
            # The whole request is checked before anything is written, accounts included.
            names = await self.services.rosters.check_roster(name, students=students, match_replicas=match_replicas)
            created = await self.accounts.ensure_students(names)
            lab, unbound = await self.services.rosters.set_roster(name, students=names, match_replicas=match_replicas)
            return lab, unbound, created
        return await self._audited("setRoster", f"lab:{name}", work)

    # ---------------------------------------------------------------- machines

    async def list_machines(self, *, deployment: str | None = None, host: str | None = None) -> list[Machine]:
        access.require_user(self.actor)
        if self.actor.is_admin:
            return await self.services.machines.list_machines(deployment=deployment, host=host)
        if self.actor.is_teacher:
            return await self.services.machines.list_machines(deployment=deployment, host=host, owner=self.actor.name)
        return await self.services.machines.list_machines(deployment=deployment, host=host, student=self.actor.name)

    async def get_machine(self, name: str) -> Machine:
        return await self._machine(name)

    async def start_machine(self, name: str) -> Machine:
        return await self._machine_action("startMachine", name, self.services.machines.start_machine)

    async def stop_machine(self, name: str) -> Machine:
        return await self._machine_action("stopMachine", name, self.services.machines.stop_machine)

    async def reset_machine(self, name: str) -> Machine:
        return await self._machine_action("resetMachine", name, self.services.machines.reset_machine)

    async def _machine_action(self, action: str, name: str,
                              call: Callable[[str], Awaitable[Machine]]) -> Machine:
        async def work() -> Machine:
            await self._machine(name)
            return await call(name)
        return await self._audited(action, f"machine:{name}", work)

    # ------------------------------------------------------------------- hosts

    async def list_hosts(self) -> list[HostStatus]:
        access.require_staff(self.actor)
        return await self.services.hosts.list_hosts()

    async def host_status(self, name: str) -> HostStatus:
        if not self.actor.is_host:
            access.require_staff(self.actor)
        else:
            access.require_host_or_admin(self.actor, name)
        for status in await self.services.hosts.list_hosts():
            if status.host.name == name:
                return status
        raise NotFound(f"There is no host named {name!r}.")

    async def get_host(self, name: str) -> Host:
        return (await self.host_status(name)).host

    async def register_host(self, *, name: str, vcpus: int, memory_mib: int, images: Iterable[str],
                            domain_type: str = "", agent_version: str = "") -> Host:
        async def work() -> Host:
            access.require_host_or_admin(self.actor, name)
            return await self.services.hosts.register_host(name=name, vcpus=vcpus, memory_mib=memory_mib,
                                                     images=images, domain_type=domain_type,
                                                     agent_version=agent_version)
        return await self._audited("registerHost", f"host:{name}", work)

    async def heartbeat(self, *, name: str, images: Iterable[str] | None = None) -> Host:
        async def work() -> Host:
            access.require_host_or_admin(self.actor, name)
            return await self.services.hosts.heartbeat(name=name, images=images)
        return await self._audited("heartbeat", f"host:{name}", work, routine=True)

    async def report_orphans(self, *, host: str, domains: Sequence[str]) -> Host:
        async def work() -> Host:
            access.require_host_or_admin(self.actor, host)
            return await self.services.hosts.report_orphans(host=host, domains=domains)
        return await self._audited("reportOrphans", f"host:{host}", work)

    async def report_machine_state(self, *, machine_id: str, host: str, state: ObservedState,
                                   message: str = "", power_generation: int | None = None) -> Machine:
        async def work() -> Machine:
            access.require_host_or_admin(self.actor, host)
            return await self.services.machines.report_machine_state(
                machine_id=machine_id, host=host, state=state, message=message,
                power_generation=power_generation)
        return await self._audited("reportMachineState", f"machine-id:{machine_id}", work, routine=True)

    async def host_assignments(self, host: str) -> list[Machine]:
        access.require_host_or_admin(self.actor, host)
        return await self.services.hosts.host_assignments(host)

    async def follow_host(self, host: str) -> None:
        """The check before a host's assignment feed: its own agent (or an admin), a known host."""
        access.require_host_or_admin(self.actor, host)
        await self.services.hosts.get_host(host)

    # ---------------------------------------------------------------- consoles

    async def console_machine(self, name: str) -> Machine:
        """A machine whose console the actor may open: FORBIDDEN for one of a lab they see
        (a classmate's), NOT_FOUND for one they may not even know of."""
        access.require_user(self.actor)
        machine = await self.services.machines.get_machine(name)
        lab = await self.services.labs.get_deployment(machine.deployment)
        if access.can_open_console(self.actor, machine, lab):
            return machine
        if access.can_view_lab(self.actor, lab):
            raise Forbidden(f"The console of {name} is not yours to open: only its student, the lab's "
                            "teacher and admins may.")
        raise NotFound(f"There is no machine named {name!r}.")

    async def _console_ready(self, machine: Machine) -> None:
        host = await Host.find_one(Host.name == machine.host) if machine.host else None
        check_ready(machine, host_ready=None if host is None else self.services.hosts.host_ready(host))

    async def console_ticket(self, name: str) -> str:
        """A one-time ticket to open the console of `name` within a minute. A refusal is audited
        as an `openConsole` attempt; a ticket is not (opening the console is)."""
        try:
            machine = await self.console_machine(name)
            await self._console_ready(machine)
            await self.services.consoles.check_room(self.actor.name)
        except KubeKVMError as error:
            await self.accounts.record(self.actor, action="openConsole", target=f"machine:{name}",
                                       outcome=error.code, message=error.message)
            raise
        return await self.services.consoles.issue_ticket(user=self.actor.name, machine=name)

    async def open_console(self, ticket: str) -> ConsoleSession:
        """Redeem a ticket (it works once, for the user it was issued to), check again that the
        console may be opened, and reserve the session for this replica (`Consoles.announce`
        then calls the agent); audited either way."""
        target = ""
        try:
            redeemed = await self.services.consoles.redeem_ticket(ticket)
            if redeemed is None:
                raise Unauthenticated("This console link has expired or was used already: reconnect for a new one.")
            target = f"machine:{redeemed.machine}"
            if not self.actor.is_user or self.actor.name != redeemed.user:
                raise Unauthenticated("This console link was made for another account: sign in as "
                                      f"{redeemed.user}, or open the console again.")
            machine = await self.console_machine(redeemed.machine)
            await self._console_ready(machine)
            session = await self.services.consoles.reserve(machine=machine, user=self.actor.name)
        except KubeKVMError as error:
            await self.accounts.record(self.actor, action="openConsole", target=target, outcome=error.code,
                                       message=error.message)
            raise
        await self.accounts.record(self.actor, action="openConsole", target=target, message=(
            f"session {session.session[:8]} on host {session.host} via {session.replica}"))
        return session

    async def close_console(self, session: ConsoleSession, *, reason: str) -> None:
        await self.services.consoles.close_session(session)
        await self.accounts.record(self.actor, action="closeConsole", target=f"machine:{session.machine}",
                                   message=f"session {session.session[:8]}: {reason}")

    def may_serve_console(self, host: str) -> bool:
        """Whether the actor may carry a console of `host`'s machines: that host's agent only."""
        return access.may_serve_console(self.actor, host)

    async def console_requests(self, host: str) -> AsyncIterator[ConsoleRequest]:
        """The console requests for `host`'s agent (`follow_host` checks the caller first)."""
        await self.follow_host(host)
        async for request in self.services.consoles.requests(host=host):
            yield request

    # ------------------------------------------------------------ live changes

    async def lab_changes(self, *, lab: str | None = None, include_hosts: bool = False,
                          subscribed: asyncio.Event | None = None) -> AsyncIterator[LabChange]:
        """`kubekvm.streams.lab_changes`, less what the actor may not see (a lab the actor may
        not see gives nothing, as a lab that does not exist)."""
        access.require_user(self.actor)
        visible: dict[str, bool] = {}
        checked = time.monotonic()
        async for change in lab_changes(feed=self.feed, lab=lab, include_hosts=include_hosts,
                                        subscribed=subscribed):
            # A cookie's session may end while the stream is open: it is checked again before a
            # change is passed on, at most every few seconds (the stream ends when it is gone).
            if time.monotonic() - checked >= SESSION_RECHECK_SECONDS:
                if not await self.still_signed_in():
                    raise Unauthenticated("Your session has ended: sign in again.")
                checked = time.monotonic()
            if await self._sees(change, visible):
                yield change

    async def _sees(self, change: LabChange, visible: dict[str, bool]) -> bool:
        if change.kind == LabChangeKind.RESYNC:
            visible.clear()  # who sees what may have changed in the gap too
            return True
        if self.actor.is_admin:
            return True
        if change.kind == LabChangeKind.HOST_CHANGED:
            return self.actor.is_teacher
        if change.deployment is not None:
            visible[change.lab] = access.can_view_lab(self.actor, change.deployment)
        elif change.lab not in visible:
            try:
                lab = await uninterrupted(self.services.labs.get_deployment(change.lab))
                visible[change.lab] = access.can_view_lab(self.actor, lab)
            except NotFound:
                visible[change.lab] = False
        if not visible[change.lab]:
            return False
        if self.actor.is_student and change.kind in (LabChangeKind.MACHINE_CHANGED, LabChangeKind.MACHINE_REMOVED):
            return change.machine is not None and change.machine.student == self.actor.name
        return True

    # ------------------------------------------------------------------- users

    async def me(self) -> User | None:
        return await self.accounts.find_user(self.actor.name) if self.actor.is_user else None

    async def list_users(self, *, role: Role | None = None) -> list[User]:
        access.require_admin(self.actor)
        return await self.accounts.list_users(role=role)

    async def students_of(self, name: str) -> list[User]:
        """The accounts on a lab's roster (for its page: who has a password yet)."""
        lab = await self._managed_lab(name)
        return await self.accounts.list_users(names=lab.roster)

    async def create_user(self, *, name: str, role: Role, password: str | None = None) -> User:
        async def work() -> User:
            access.require_admin(self.actor)
            return await self.accounts.create_user(name=name, role=role, password=password)
        return await self._audited("createUser", f"user:{name}", work)

    async def _account_facts(self, name: str) -> access.AccountFacts | None:
        user = await self.accounts.find_user(name)
        if user is None:
            return None
        return access.AccountFacts(name=user.name, role=user.role, has_password=bool(user.password_hash),
                                   lab_owners=frozenset(await self.accounts.lab_owners_of(user.name)))

    async def set_user_password(self, name: str, password: str) -> User:
        """An admin sets someone's password (every session of theirs ends)."""
        async def work() -> User:
            access.require_user(self.actor)
            facts = await self._account_facts(name)
            if facts is None:
                access.require_admin(self.actor)
                raise NotFound(f"There is no user named {name!r}.")
            access.check_set_password(self.actor, facts)
            return await self.accounts.set_password(name, password)
        return await self._audited("setUserPassword", f"user:{name}", work)

    async def change_password(self, *, current: str, new: str) -> User:
        """One's own password, given the current one; one's other sessions end (the one this
        request came through, if any, stays)."""
        async def work() -> User:
            access.require_user(self.actor)
            return await self.accounts.change_password(name=self.actor.name, current=current, new=new,
                                                       address=self.actor.address,
                                                       keep_session=self.actor.session or None)
        return await self._audited("changePassword", f"user:{self.actor.name}", work)

    async def password_link(self, name: str) -> str:
        async def work() -> str:
            access.require_staff(self.actor)
            access.check_password_link(self.actor, await self._account_facts(name), name=name)
            return await self.accounts.password_link(name, issuer=self.actor.name)
        return await self._audited("createPasswordLink", f"user:{name}", work)

    async def password_link_user(self, code: str) -> User:
        """The account a set-password link is for, if the link is still good (anyone holding
        the link may use it: it is the credential)."""
        user = await self.accounts.user_for_code(code)
        facts = await self._account_facts(user.name)
        issuer = await self.accounts.find_user(user.password_code_issuer) if user.password_code_issuer else None
        if facts is None or not access.link_still_good(issuer=user.password_code_issuer,
                                                       issuer_role=issuer.role if issuer else None, target=facts):
            raise NotFound("This set-password link no longer works (the account has a password now, or is on "
                           "another teacher's lab): ask an admin for a new one.")
        return user

    async def set_password_with_code(self, code: str, password: str) -> User:
        await self.password_link_user(code)
        return await self.accounts.set_password_with_code(code, password)

    async def end_user_sessions(self, name: str) -> int:
        """End every session of `name` (signed in anywhere); how many ended."""
        async def work() -> int:
            access.check_end_sessions(self.actor)
            await self.accounts.get_user(name)
            return await self.accounts.end_sessions(name)
        return await self._audited("endUserSessions", f"user:{name}", work)

    async def session_counts(self, names: Sequence[str]) -> dict[str, int]:
        access.require_admin(self.actor)
        return await self.accounts.count_sessions(names)

    async def still_signed_in(self, *, touch: bool = False) -> bool:
        """For long-lived connections (consoles, live streams, subscriptions): whether the
        session the actor came through still exists (`touch`: and it is in use, which keeps it
        from lapsing). Tokens and hosts are checked when they connect."""
        if self.actor.via != "session" or not self.actor.session:
            return True
        if touch:
            await self.accounts.touch_session(self.actor.session)
        return await self.accounts.session_alive(self.actor.session)

    # ------------------------------------------------------------------ tokens

    async def list_tokens(self, *, everyone: bool = False) -> list[ApiToken]:
        access.require_user(self.actor)
        if everyone:
            access.require_admin(self.actor)
            return await self.accounts.list_tokens()
        return await self.accounts.list_tokens(kind=TokenKind.USER, owner=self.actor.name)

    async def host_tokens(self) -> list[ApiToken]:
        access.require_admin(self.actor)
        return await self.accounts.list_tokens(kind=TokenKind.HOST)

    async def create_token(self, *, label: str) -> tuple[ApiToken, str]:
        async def work() -> tuple[ApiToken, str]:
            access.require_user(self.actor)
            return await self.accounts.create_token(kind=TokenKind.USER, owner=self.actor.name, label=label,
                                                    created_by=self.actor.name)
        return await self._audited("createApiToken", f"user:{self.actor.name}", work)

    async def create_host_token(self, *, host: str, label: str = "") -> tuple[ApiToken, str]:
        async def work() -> tuple[ApiToken, str]:
            access.require_admin(self.actor)
            host_name(host)
            return await self.accounts.create_token(kind=TokenKind.HOST, owner=host, label=label,
                                                    created_by=self.actor.name)
        return await self._audited("createHostToken", f"host:{host}", work)

    async def revoke_token(self, token_id: str) -> ApiToken:
        async def work() -> ApiToken:
            access.require_user(self.actor)
            record = await self.accounts.get_token(token_id)
            mine = record.kind == TokenKind.USER and record.owner == self.actor.name
            if not (mine or self.actor.is_admin):
                raise NotFound(f"There is no token with id {token_id!r}.")
            return await self.accounts.revoke_token(token_id)
        return await self._audited("revokeApiToken", f"token:{token_id}", work)

    # ------------------------------------------------------------------- audit

    async def audit_log(self, *, actor: str | None = None, action: str | None = None,
                        target: str | None = None, outcome: str | None = None,
                        since: datetime | None = None, offset: int = 0, limit: int = 100) -> AuditPage:
        access.require_admin(self.actor)
        offset = validation.offset(offset)
        limit = validation.limit(limit, maximum=validation.AUDIT_PAGE_MAX)
        return await self.accounts.audit_log(actor=actor, action=action, target=target, outcome=outcome,
                                             since=since, offset=offset, limit=limit)

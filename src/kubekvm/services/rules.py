"""Who may call each operation, declared beside it, and the one wrapper that enforces it.

Every operation an actor may call (the GraphQL resolvers and the page handlers call the same
ones) is a method of a noun's `…Operations` class carrying `@operation(rule, audit=…)`: the
`Rule` says who may call it (its check, made of `kubekvm.access`'s plain rules, looks up
what it needs and raises the refusal), `audit` names the action every call of it is recorded
under, refusals included. `operation` is the only wrapper: it checks the rule, runs the
operation to its end even if the client leaves (`finish`), and writes the audit entry. A
method of an operations class without a rule is a test failure
(`tests/api/test_authorization.py`), and so is a rule whose declared outcomes differ from the
authorization matrix.

Each rule also declares, as a table, what each kind of caller of the matrix gets from it
(`Rule.outcomes`: anonymous, a student on the lab's roster, another teacher, the host agent,
the lab's owner, an admin); an operation whose own checks refuse more says so (`outcomes=`).
The standing rules operations pick from (`EVERYONE`, `LAB_MANAGED`, `HOST_AGENT`, …) are in
`kubekvm.services.rulebook`; this module holds what they are made of and the wrapper.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import structlog

from kubekvm.access.actors import Actor
from kubekvm.access.objects import can_manage_lab, can_use_template, can_view_lab, can_view_machine
from kubekvm.access.roles import require_staff, require_user
from kubekvm.database import unavailable
from kubekvm.errors import Forbidden, KubeKVMError, NotFound
from kubekvm.services.context import finish

if TYPE_CHECKING:
    from kubekvm.models import Deployment, Machine, Template
    from kubekvm.services import Services
    from kubekvm.services.accounts import Accounts

P = ParamSpec("P")
T = TypeVar("T")
Ops = TypeVar("Ops", bound="Operations")
Arguments = Mapping[str, Any]
Check = Callable[["Operations", Arguments], Awaitable[None]]
# What an audit entry says of a call (its target, its message), from its arguments and caller.
Describe = Callable[[Arguments, Actor], str]
# An operation: a coroutine method; a feed: a method giving an async iterator, and the
# operation that checks its rule and hands the iterator out.
Op = Callable[Concatenate[Ops, P], Coroutine[Any, Any, T]]
Feed = Callable[Concatenate[Ops, P], AsyncIterator[T]]
CheckedFeed = Callable[Concatenate[Ops, P], Coroutine[Any, Any, AsyncIterator[T]]]

OK, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED = "ok", "FORBIDDEN", "NOT_FOUND", "UNAUTHENTICATED"
VALIDATION_FAILED = "VALIDATION_FAILED"
# The kinds of audit target an operation's log lines are tagged with (`kubekvm.logs`).
# How fresh the account and session checks of long-lived connections are when several share one.
RECHECK_SHARED_SECONDS = 1.0
_LOGGED = frozenset({"lab", "machine", "host"})
CALLERS = ("anonymous", "student", "other", "host", "owner", "admin")


def outcomes(*, anonymous: str = UNAUTHENTICATED, student: str = FORBIDDEN, other: str = FORBIDDEN,
             host: str = FORBIDDEN, owner: str = FORBIDDEN, admin: str = OK) -> dict[str, str]:
    """What each kind of caller gets: `other` is a teacher who does not own the lab, `owner` the
    one who does, `student` one on its roster (holding machine 1), `host` the agent of the host."""
    return {"anonymous": anonymous, "student": student, "other": other, "host": host, "owner": owner,
            "admin": admin}


@dataclass(frozen=True)
class Rule:
    """Who may call an operation: `check` raises the refusal (it may look documents up)."""

    name: str
    check: Check
    outcomes: dict[str, str] = field(default_factory=outcomes)


@dataclass(frozen=True)
class Declared:
    """What `@operation` attaches to an operation: its rule and how it is audited."""

    rule: Rule
    audit: str | None
    field: str | None
    outcomes: dict[str, str]
    routine: bool


def declared(method: object) -> Declared | None:
    found = getattr(method, "__declared__", None)
    return found if isinstance(found, Declared) else None


def _arguments(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = signature.bind(None, *args, **kwargs)
    bound.apply_defaults()
    named = dict(bound.arguments)
    named.pop(next(iter(signature.parameters)))
    return named


def operation(rule: Rule, *, audit: str | None = None, target: Describe | None = None,
              message: Describe | None = None, field: str | None = None, routine: bool = False,
              outcomes: dict[str, str] | None = None,
              ) -> Callable[[Op[Ops, P, T]], Op[Ops, P, T]]:
    """Declare who may call the operation below, and how it is audited.

    `audit`: the action recorded for every call, its outcome included (refusals too), with the
    `target` (and, for a success, the `message`) computed from the call's arguments and the
    caller; None for reads, which change nothing.
    `routine` calls (an agent's heartbeat and reports, several a minute per host) are recorded
    only when refused: their successes are telemetry, which would bury people's decisions.
    `field`: the GraphQL field the operation serves, when it is not named `audit`."""

    def decorate(run: Op[Ops, P, T]) -> Op[Ops, P, T]:
        signature = inspect.signature(run)

        @functools.wraps(run)
        async def checked(self: Ops, /, *args: P.args, **kwargs: P.kwargs) -> T:
            named = _arguments(signature, args, kwargs)

            async def work() -> T:
                await rule.check(self, named)
                return await run(self, *args, **kwargs)

            if audit is None:
                return await work()
            where = target(named, self.actor) if target is not None else ""
            said = message(named, self.actor) if message is not None else ""
            kind, _, value = where.partition(":")
            # The lab, machine or host acted on, in every log line this causes (kubekvm.logs).
            with structlog.contextvars.bound_contextvars(**({kind: value} if kind in _LOGGED else {})):
                return await finish(self.audited(audit, where, work, routine=routine, message=said))

        checked.__declared__ = Declared(  # type: ignore[attr-defined]
            rule=rule, audit=audit, field=field or audit, outcomes=outcomes or rule.outcomes, routine=routine)
        return checked

    return decorate


def stream(rule: Rule, *, field: str | None = None, outcomes: dict[str, str] | None = None,
           ) -> Callable[[Feed[Ops, P, T]], CheckedFeed[Ops, P, T]]:
    """`operation` for a feed: awaiting the operation checks the rule (so a refusal comes before
    anything is held open) and gives the feed, an async iterator, to read."""

    def decorate(run: Feed[Ops, P, T]) -> CheckedFeed[Ops, P, T]:
        signature = inspect.signature(run)

        @functools.wraps(run)
        async def checked(self: Ops, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
            await rule.check(self, _arguments(signature, args, kwargs))
            return run(self, *args, **kwargs)

        checked.__declared__ = Declared(  # type: ignore[attr-defined]
            rule=rule, audit=None, field=field, outcomes=outcomes or rule.outcomes, routine=False)
        return checked

    return decorate


class Operations:
    """The base of every noun's operations: the caller, the services, the accounts, and the
    look-ups the rules share. A noun's `…Operations` class adds its declared operations;
    `kubekvm.authorized.Authorized` gathers them all for one actor."""

    def __init__(self, services: Services, accounts: Accounts, actor: Actor) -> None:
        self.services = services
        self.accounts = accounts
        self.actor = actor

    async def audited(self, action: str, target: str, work: Callable[[], Awaitable[T]], *,
                      routine: bool = False, message: str = "") -> T:
        """Run `work` (its checks included) and record how it ended."""
        from kubekvm.services.audit import record  # the audit's own operation is declared with these rules

        try:
            result = await work()
        except KubeKVMError as error:
            await record(self.actor, action=action, target=target, outcome=error.code,
                                       message=error.message)
            raise
        except Exception as error:
            # A database fault cannot be recorded either (and trying would double the wait).
            if unavailable(error) is None:
                await record(self.actor, action=action, target=target, outcome="INTERNAL")
            raise
        if not routine:
            await record(self.actor, action=action, target=target, message=message)
        return result

    # The look-ups behind the rules: each returns the document it checked.

    async def seen_lab(self, name: str) -> Deployment:
        """A lab the actor may see; NotFound for one they may not (its existence is theirs to
        know only if they may see it)."""
        require_user(self.actor)
        lab = await self.services.labs.get_deployment(name)
        if not can_view_lab(self.actor, lab):
            raise NotFound(f"There is no lab named {name!r}.")
        return lab

    async def managed_lab(self, name: str) -> Deployment:
        require_staff(self.actor)
        lab = await self.seen_lab(name)
        if not can_manage_lab(self.actor, lab):
            raise Forbidden(f"Lab {name!r} is not yours to change.")
        return lab

    async def seen_machine(self, name: str) -> Machine:
        require_user(self.actor)
        machine = await self.services.machines.get_machine(name)
        lab = await self.services.labs.get_deployment(machine.deployment)
        if not can_view_machine(self.actor, machine, lab):
            raise NotFound(f"There is no machine named {name!r}.")
        return machine

    async def usable_template(self, name: str) -> Template:
        template = await self.services.templates.get_template(name)
        if not can_use_template(self.actor, template):
            raise NotFound(f"There is no template named {name!r}.")
        return template

    async def still_signed_in(self, *, touch: bool = False) -> bool:
        """For long-lived connections (consoles, live streams, subscriptions): whether the
        person is still who they were when it opened — their account enabled and of the same
        role (a connection opened before a role change ends, and the client's reconnect gets the
        new role) — and the session the actor came through still exists (`touch`: and it is in
        use, which keeps it from lapsing). Hosts are checked when they connect."""
        if not self.actor.is_user:
            return True
        # Thousands of a class's streams re-check at the same change: one read serves all those
        # asking within RECHECK_SHARED_SECONDS (`kubekvm.shared_reads`).
        reads = self.services.shared_reads
        name, role = self.actor.name, self.actor.role
        if not await reads.read(("account_current", name, role),
                                lambda: self.accounts.account_current(name, role=role),
                                max_age=RECHECK_SHARED_SECONDS):
            return False
        session = self.actor.session
        if self.actor.via != "session" or not session:
            return True
        if touch:
            await self.accounts.touch_session(session)
        return await reads.read(("session_alive", session), lambda: self.accounts.session_alive(session),
                                max_age=RECHECK_SHARED_SECONDS)


def named(prefix: str, argument: str = "name") -> Callable[[Arguments, Actor], str]:
    """An audit target from one argument: `named("lab")` gives "lab:<name>"."""
    return lambda args, actor: f"{prefix}:{args[argument]}"


def own(prefix: str) -> Callable[[Arguments, Actor], str]:
    """An audit target naming the caller: "user:<actor>"."""
    return lambda args, actor: f"{prefix}:{actor.name}"

"""Consoles: what every server replica must agree on about a machine's console — one-time
tickets, console sessions, the per-user limit — and how a host's agent hears of a session.

The bytes of a console go browser ⇄ the replica that accepted the browser's websocket ⇄ the
agent of the machine's host ⇄ the VM's VNC display, which listens on the host's loopback only.
The hypervisor opens no port: its agent dials out, once per console, to the replica holding the
browser. That replica may not be the one holding the agent's GraphQL websocket, so they meet
through MongoDB:

1. The console page asks for a **ticket** (`issue_ticket`): 256 random bits, kept as their
   sha256 with the user, the machine and an expiry a minute away. The browser's websocket
   presents it; `redeem_ticket` deletes it in one atomic `find_one_and_delete`, so a ticket
   opens one console, once, on whichever replica the websocket reaches.
2. That replica writes a **console session** naming the machine's host and its own advertised
   address (`Settings.advertise_url`), first as `reserved`, and counts the user's live sessions
   (the limit: insert, then count, then back out if over, so two replicas racing never both
   admit one too many). Once ready to pair the agent's socket with the browser's, it turns the
   session `requested` (`announce`).
3. The change stream carries that write to every replica; the one holding the host's
   `consoleRequests` subscription (`console_requests`; after a feed RESYNC it hands over again
   every session still waiting) hands it to the agent, which dials
   `<replica>/consoles/agent/<session>` with its host token (`kubekvm.console` pipes the two
   websockets together there).
4. While the console is open its replica renews the session's lease; closing deletes it (the
   audit log keeps the history). A replica that dies leaves sessions whose lease runs out, and
   those no longer count against their user's limit.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from kubekvm.access.objects import can_open_console, can_view_lab
from kubekvm.access.roles import require_user
from kubekvm.config import Settings
from kubekvm.credentials import token_hash
from kubekvm.errors import (
    Forbidden,
    HostUnreachable,
    KubeKVMError,
    MachineOff,
    NotFound,
    TooManyConsoles,
    Unauthenticated,
)
from kubekvm.events import EventFeed
from kubekvm.models import (
    ConsoleSession,
    ConsoleState,
    ConsoleTicket,
    Host,
    Machine,
    ObservedState,
    utcnow,
)
from kubekvm.services import audit
from kubekvm.services.rulebook import EVERYONE
from kubekvm.services.rules import NOT_FOUND, OK, Arguments, Operations, Rule, named, operation, outcomes

COLLECTION = "console_sessions"
# An open console's lease is renewed every third of this; a dead replica's sessions stop
# counting against their users' limit at most this long after it died.
LEASE = timedelta(seconds=60)


def check_ready(machine: Machine, *, host_ready: bool | None) -> None:
    """A console needs a running machine on a host whose agent is heard from; `host_ready` is
    None when the machine has no host."""
    if machine.observed != ObservedState.RUNNING:
        if machine.observed == ObservedState.PENDING and machine.desired.value == "running":
            raise MachineOff(f"{machine.name} is starting; its console opens once it runs.")
        raise MachineOff(f"{machine.name} is off ({machine.observed.value}). Start it to use its console.")
    if not host_ready:
        raise HostUnreachable(f"The host of {machine.name} ({machine.host or 'none'}) is unreachable: its agent "
                              "has not been heard from. Try again in a minute, or tell your teacher.")


def _too_many(cap: int) -> TooManyConsoles:
    return TooManyConsoles(f"You have {cap} console{'s' if cap != 1 else ''} open already, the most one person "
                           "may: close one (its browser tab) and try again.")


class Consoles:
    """Console tickets and sessions: the writes, unchecked (`ConsoleOperations` checks them)."""

    def __init__(self, *, settings: Settings, feed: EventFeed) -> None:
        self.settings = settings
        self.feed = feed

    async def issue_ticket(self, *, user: str, machine: str) -> str:
        """A one-time ticket for `user` to open the console of `machine`; returned once, kept
        only as its hash."""
        now = utcnow()
        # Tickets nobody redeemed would pile up: each new one sweeps the expired.
        await ConsoleTicket.get_pymongo_collection().delete_many({"expires": {"$lt": now}})
        ticket = secrets.token_urlsafe(32)
        await ConsoleTicket(ticket_hash=token_hash(ticket), user=user, machine=machine,
                            expires=now + timedelta(seconds=self.settings.console_ticket_seconds)).insert()
        return ticket

    async def redeem_ticket(self, ticket: str) -> ConsoleTicket | None:
        """The ticket's record if it is good, consumed; None if it is unknown, used or expired."""
        if not ticket:
            return None
        raw = await ConsoleTicket.get_pymongo_collection().find_one_and_delete(
            {"ticket_hash": token_hash(ticket)})
        if raw is None:
            return None
        redeemed = ConsoleTicket.model_validate(raw)
        return redeemed if redeemed.expires > utcnow() else None

    async def reserve(self, *, machine: Machine, user: str) -> ConsoleSession:
        """Record a console of `machine` for `user` served by this replica (not yet announced to
        the host's agent); TooManyConsoles if the user has their limit open already."""
        assert machine.host is not None
        now = utcnow()
        collection = ConsoleSession.get_pymongo_collection()
        # Sessions whose replica died without closing them: their lease ran out.
        await collection.delete_many({"user": user, "lease_until": {"$lt": now}})
        session = ConsoleSession(
            session=secrets.token_urlsafe(24), machine=machine.name, machine_id=str(machine.id),
            deployment=machine.deployment, index=machine.index, host=machine.host, user=user,
            replica=self.settings.advertise_url, state=ConsoleState.RESERVED, lease_until=now + LEASE)
        try:
            await session.insert()
        except DuplicateKeyError:  # 192 random bits collided: astronomically unlikely, say so plainly
            raise HostUnreachable("Could not open a console session; try again.") from None
        cap = self.settings.console_max_per_user
        # Every replica sorts the user's live sessions the same way, so when several open at
        # once they agree on which ones are within the limit.
        live = await collection.find(
            {"user": user, "lease_until": {"$gt": now}},
            {"session": 1}).sort([("opened_at", 1), ("session", 1)]).limit(cap).to_list()
        if session.session not in {row["session"] for row in live}:
            await collection.delete_one({"session": session.session})
            raise _too_many(cap)
        return session

    async def announce(self, session: ConsoleSession) -> None:
        """Ask the host's agent to dial in (once this replica is ready to pair it)."""
        await self._set(session, state=ConsoleState.REQUESTED)

    async def mark_open(self, session: ConsoleSession) -> None:
        await self._set(session, state=ConsoleState.OPEN, lease_until=utcnow() + LEASE)

    async def renew(self, session: ConsoleSession) -> None:
        await self._set(session, lease_until=utcnow() + LEASE)

    async def close_session(self, session: ConsoleSession) -> None:
        await ConsoleSession.get_pymongo_collection().delete_one({"session": session.session})
        # Idle shutdown counts a machine's quiet time from its last console's closing.
        await Machine.get_pymongo_collection().update_one({"name": session.machine},
                                                          {"$set": {"console_closed_at": utcnow()}})
        if self.feed.publishes_locally:
            self.feed.publish(collection=COLLECTION, operation="delete", id=str(session.id), document=None)

    async def check_room(self, user: str) -> None:
        """TooManyConsoles if `user` has their limit open (a courtesy before a ticket: the limit
        itself is enforced when a session opens)."""
        cap = self.settings.console_max_per_user
        if await ConsoleSession.get_pymongo_collection().count_documents(
                {"user": user, "lease_until": {"$gt": utcnow()}}) >= cap:
            raise _too_many(cap)

    async def _set(self, session: ConsoleSession, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(session, key, value)
        fields = {key: getattr(value, "value", value) for key, value in changes.items()}
        await ConsoleSession.get_pymongo_collection().update_one({"session": session.session}, {"$set": fields})
        if self.feed.publishes_locally:
            # Without change streams only this process hears of it: fine for one server.
            self.feed.publish(collection=COLLECTION, operation="update", id=str(session.id),
                              document=session.model_dump(by_alias=True))


async def _console_machine(ops: Operations, name: str) -> Machine:
    """A machine whose console the actor may open: FORBIDDEN for one of a lab they see (a
    classmate's), NOT_FOUND for one they may not even know of."""
    require_user(ops.actor)
    machine = await ops.services.machines.get_machine(name)
    lab = await ops.services.labs.get_deployment(machine.deployment)
    if can_open_console(ops.actor, machine, lab):
        return machine
    if can_view_lab(ops.actor, lab):
        raise Forbidden(f"The console of {name} is not yours to open: only its student, the lab's "
                        "teacher and admins may.")
    raise NotFound(f"There is no machine named {name!r}.")


async def _may_open(ops: Operations, args: Arguments) -> None:
    await _console_machine(ops, args["name"])


async def _holds_session(ops: Operations, args: Arguments) -> None:
    """The console session is the caller's own (the replica that opened it acts for them)."""
    session: ConsoleSession = args["session"]
    if not ops.actor.is_user or ops.actor.name != session.user:
        raise Forbidden("This console session is another account's.")


CONSOLE_OPENER = Rule("the machine's student, the lab's owner, admins", _may_open,
                      outcomes(student=OK, other=NOT_FOUND, owner=OK))
# A ticket is the credential: whoever holds one may present it (it is checked for its user).
TICKET_HOLDER = Rule("whoever holds a console ticket", EVERYONE.check, EVERYONE.outcomes)
SESSION_HOLDER = Rule("the user of the console session", _holds_session, outcomes(student=OK, other=OK, owner=OK))


class ConsoleOperations(Operations):
    """Consoles as a caller may open them (`kubekvm.console` carries the bytes)."""

    @operation(CONSOLE_OPENER)
    async def console_machine(self, name: str) -> Machine:
        return await _console_machine(self, name)

    async def _console_ready(self, machine: Machine) -> None:
        host = await Host.find_one(Host.name == machine.host) if machine.host else None
        check_ready(machine, host_ready=None if host is None else self.services.hosts.host_ready(host))

    # A ticket is not audited (opening the console is); a refusal is, as an `openConsole` attempt.
    @operation(CONSOLE_OPENER, audit="openConsole", target=named("machine"), routine=True)
    async def console_ticket(self, name: str) -> str:
        """A one-time ticket to open the console of `name` within a minute."""
        machine = await _console_machine(self, name)
        await self._console_ready(machine)
        await self.services.consoles.check_room(self.actor.name)
        return await self.services.consoles.issue_ticket(user=self.actor.name, machine=name)

    @operation(TICKET_HOLDER)
    async def open_console(self, ticket: str) -> ConsoleSession:
        """Redeem a ticket (it works once, for the user it was issued to), check again that the
        console may be opened, and reserve the session for this replica (`announce_console`
        then calls the agent); audited either way — here, not by `operation`, since which
        machine it is for is known only once the ticket is redeemed."""
        target = ""
        try:
            redeemed = await self.services.consoles.redeem_ticket(ticket)
            if redeemed is None:
                raise Unauthenticated("This console link has expired or was used already: reconnect for a new one.")
            target = f"machine:{redeemed.machine}"
            if not self.actor.is_user or self.actor.name != redeemed.user:
                raise Unauthenticated("This console link was made for another account: sign in as "
                                      f"{redeemed.user}, or open the console again.")
            machine = await _console_machine(self, redeemed.machine)
            await self._console_ready(machine)
            session = await self.services.consoles.reserve(machine=machine, user=self.actor.name)
        except KubeKVMError as error:
            await audit.record(self.actor, action="openConsole", target=target, outcome=error.code,
                                       message=error.message)
            raise
        await audit.record(self.actor, action="openConsole", target=target, message=(
            f"session {session.session[:8]} on host {session.host} via {session.replica}"))
        return session

    @operation(SESSION_HOLDER)
    async def announce_console(self, session: ConsoleSession) -> None:
        await self.services.consoles.announce(session)

    @operation(SESSION_HOLDER)
    async def console_opened(self, session: ConsoleSession) -> None:
        await self.services.consoles.mark_open(session)

    @operation(SESSION_HOLDER)
    async def renew_console(self, session: ConsoleSession) -> None:
        await self.services.consoles.renew(session)

    @operation(SESSION_HOLDER, audit="closeConsole", target=lambda args, actor: f"machine:{args['session'].machine}",
               message=lambda args, actor: f"session {args['session'].session[:8]}: {args['reason']}")
    async def close_console(self, session: ConsoleSession, *, reason: str) -> None:
        await self.services.consoles.close_session(session)

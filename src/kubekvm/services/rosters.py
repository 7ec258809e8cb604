"""Rosters: a lab's students, each bound to one of its machines (`kubekvm.roster` decides who
gets which; this writes it, conditionally, until no student holds two machines of a lab). A
roster may be filled from a directory group (`kubekvm.directory`), and refreshed from it on
demand: the lab remembers the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kubekvm import identity, roster
from kubekvm.errors import Conflict, Unavailable, ValidationFailed
from kubekvm.models import (
    Deployment,
    DesiredState,
    Machine,
    Phase,
    Role,
    User,
    utcnow,
)
from kubekvm.services.context import WRITE_ATTEMPTS, Noun, backoff
from kubekvm.services.convergence import LabUpdate
from kubekvm.services.rulebook import LAB_MANAGED, SIGNED_IN
from kubekvm.services.rules import NOT_FOUND, VALIDATION_FAILED, Operations, named, operation, outcomes

if TYPE_CHECKING:
    pass


STAFF_ROLES = (Role.TEACHER, Role.ADMIN)


class Rosters(Noun):
    """Setting a lab's roster and binding it to the lab's machines."""

    async def check_roster(self, name: str, *, students: Sequence[str],
                           match_replicas: bool = False) -> list[str]:
        """The usernames of a roster request, or ValidationFailed/NotFound/Conflict having
        written nothing: everything a roster change can refuse is checked here, before anything
        (the students' accounts included) is made."""
        names = roster.students(students)
        lab = await self.core.labs.get_deployment(name)
        if lab.phase == Phase.DELETING:
            raise Conflict(f"Lab {name!r} is being deleted.")
        if match_replicas and len(names) > self.ctx.settings.max_replicas:
            raise ValidationFailed("students", (
                f"A lab has at most {self.ctx.settings.max_replicas} machines: {len(names)} students "
                "cannot each get one."))
        return names

    async def set_roster(self, name: str, *, students: Sequence[str], match_replicas: bool = False,
                         group: str | None = None) -> tuple[Deployment, list[str]]:
        """Make `students` the lab's roster and bind each to a machine; with `match_replicas`
        the lab is first scaled to one machine per student. `group`: the directory group they
        came from (None: typed in). Returns the lab and the students left without a machine
        (more students than machines)."""
        names = await self.check_roster(name, students=students, match_replicas=match_replicas)

        def change(lab: Deployment) -> LabUpdate:
            if lab.phase == Phase.DELETING:
                raise Conflict(f"Lab {name!r} is being deleted.")
            changes: dict[str, Any] = {"roster": names, "roster_group": group, "updated_at": utcnow()}
            scaled = match_replicas and names and len(names) != lab.replicas
            if scaled:
                changes["replicas"] = len(names)
            return {"$set": changes, "$inc": {"generation": 1 if scaled else 0}}

        before, _ = await self.core.convergence.change_lab(name, change)
        if match_replicas and names and len(names) != before.replicas:
            await self.ctx.note(name, f"scaled from {before.replicas} to {len(names)} machine(s)")
        await self.core.convergence.apply_spec(name, power_request=False)
        added = sorted(set(names) - set(before.roster))
        removed = sorted(set(before.roster) - set(names))
        if added or removed:
            said = [f"added {', '.join(added)}" if added else "", f"removed {', '.join(removed)}" if removed else ""]
            await self.ctx.note(name, "roster: " + "; ".join(x for x in said if x))
        lab = await self.core.convergence.refresh_phase(name, always_publish=True)
        return lab, await self._unbound(lab)

    async def _unbound(self, lab: Deployment) -> list[str]:
        bound = {m.student for m in await self.core.machines.list_machines(deployment=lab.name)
                 if m.desired != DesiredState.ABSENT}
        return [student for student in lab.roster if student not in bound]

    async def anyone_bound(self, name: str) -> bool:
        return await Machine.find({"deployment": name, "student": {"$ne": None}}).count() > 0

    async def bind_roster(self, name: str) -> None:
        """Bind the lab's roster to its kept machines (`roster.bind`). Each machine is written
        only if it still has the student it was read with; afterwards no student may hold two
        machines of the lab and the roster must be the one bound, or it is done again."""
        collection = Machine.get_pymongo_collection()
        for attempt in range(WRITE_ATTEMPTS):
            lab = await self.core.convergence.read_lab(name)
            # A machine on its way out belongs to nobody any more.
            await collection.update_many({"deployment": name, "desired": DesiredState.ABSENT.value,
                                          "student": {"$ne": None}}, {"$set": {"student": None}})
            kept = await Machine.find({"deployment": name, "retired": False,
                                       "desired": {"$ne": DesiredState.ABSENT.value}}).to_list()
            plan = roster.bind(roster=lab.roster, machines={m.index: m.student for m in kept})
            # Free first, then bind: a student moving between machines never holds two.
            moves: list[tuple[Machine, str | None]] = [
                (m, None) for m in kept if m.student is not None and plan.machines.get(m.index) != m.student]
            moves += [(m, plan.machines[m.index]) for m in kept
                      if plan.machines.get(m.index) is not None and plan.machines[m.index] != m.student]
            lost = False
            for machine, student in moves:
                result = await collection.update_one(
                    {"_id": machine.id, "student": machine.student, "retired": False,
                     "desired": {"$ne": DesiredState.ABSENT.value}},
                    {"$set": {"student": student, "updated_at": utcnow()}})
                if not result.matched_count:
                    lost = True  # changed since read: bind again from a fresh read
                    break
                machine.student = student
                self.ctx.published(machine)
            settled = not lost and (await self.core.convergence.read_lab(name)).roster == lab.roster
            if settled and not await self._doubly_bound(name):
                return
            await backoff(attempt)
        raise Unavailable(f"The roster of lab {name!r} is changing too fast; try again.")

    async def _doubly_bound(self, name: str) -> list[str]:
        """Students holding more than one kept machine of the lab (there must be none)."""
        cursor = await Machine.get_pymongo_collection().aggregate([
            {"$match": {"deployment": name, "retired": False, "student": {"$ne": None},
                        "desired": {"$ne": DesiredState.ABSENT.value}}},
            {"$group": {"_id": "$student", "n": {"$sum": 1}}},
            {"$match": {"n": {"$gt": 1}}},
        ])
        return [str(row["_id"]) async for row in cursor]


class RosterOperations(Operations):
    """Rosters as a caller may use them: the lab's owner and admins set them and see who is on
    them; a student sees the lab, not who else is in it."""

    @operation(LAB_MANAGED, audit="setRoster", target=named("lab"))
    async def set_roster(self, name: str, *, students: Sequence[str],
                         match_replicas: bool = False) -> tuple[Deployment, list[str], list[str]]:
        """The lab, the students left without a machine, and the accounts created."""
        # The whole request is checked before anything is written, accounts included.
        names = await self.services.rosters.check_roster(name, students=students, match_replicas=match_replicas)
        created = await self.accounts.ensure_students(names)
        lab, unbound = await self.services.rosters.set_roster(name, students=names, match_replicas=match_replicas)
        return lab, unbound, created

    # The matrix's server has no directory: there the call is refused as bad input (VALIDATION_FAILED).
    @operation(LAB_MANAGED, audit="fillRosterFromGroup", target=named("lab"),
               outcomes=outcomes(other=NOT_FOUND, owner=VALIDATION_FAILED, admin=VALIDATION_FAILED))
    async def fill_roster_from_group(self, name: str, *, group: str | None = None, match_replicas: bool = False,
                                     ) -> tuple[Deployment, list[str], list[str], list[str]]:
        """Make the members of a directory group (`group`, else the one the lab was last filled
        from) the lab's roster. Members whose accounts here are staff are left out (only students
        can be on a roster). The lab, the students without a machine, the accounts created and
        the members left out."""
        directory, ldap = self.accounts.directory, self.accounts.settings.identity.ldap
        if directory is None or ldap is None:
            raise ValidationFailed("group", "No directory (LDAP) is configured on this server: fill the roster "
                                            "by hand.")
        lab = await self.services.labs.get_deployment(name)
        chosen = (group or "").strip() or lab.roster_group
        if not chosen:
            raise ValidationFailed("group", "Name the directory group (e.g. redes-2026); this lab has none yet.")
        members = await directory.group_members(chosen)
        # Staff are left out: those the directory's groups make staff, and accounts here that are.
        staff = {m.username for m in members
                 if identity.decide_role(ldap.roles, username=m.username, groups=m.groups) in STAFF_ROLES}
        staff |= {u.name for u in await self.accounts.list_users(names=[m.username for m in members])
                  if u.role != Role.STUDENT}
        names = await self.services.rosters.check_roster(
            name, students=[m.username for m in members if m.username not in staff], match_replicas=match_replicas)
        created = await self.accounts.ensure_students(names)
        lab, unbound = await self.services.rosters.set_roster(name, students=names, match_replicas=match_replicas,
                                                             group=chosen)
        return lab, unbound, created, sorted(staff)

    @operation(LAB_MANAGED)
    async def students_of(self, name: str) -> list[User]:
        """The accounts on a lab's roster (for its page: who has a password yet)."""
        lab = await self.services.labs.get_deployment(name)
        return await self.accounts.list_users(names=lab.roster)

    @operation(SIGNED_IN)
    async def visible_roster(self, roster: Sequence[str]) -> list[str]:
        """The roster of a lab the caller holds, as they may see it: a student may see the lab,
        not who else is in it."""
        return [] if self.actor.is_student else list(roster)

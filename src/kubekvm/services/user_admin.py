"""Administering accounts: disable and enable, change a role, delete, and the admins' paged,
filtered list of users. The rules of what may be changed are `kubekvm.stewardship`'s; the
writes are `UserAdminRecords` (part of `accounts.Accounts`), the operations callers use
`UserAdminOperations` (each declared with its rule and audited by `rules.operation`).

What ends when: the sign-in middleware (`kubekvm.auth`) reads a session's or a token's user on
every request, so a disabled account (or a new role) holds at the next request on every
replica. Disabling also deletes the account's sessions; its API tokens are kept but refused
while it is disabled (enabling it again brings them back). Long-lived connections (consoles,
live streams, subscriptions) re-check the account (`Operations.still_signed_in`): a console
twice a second, the others every few seconds.

Deleting is done in an order that a failure half-way can only leave resumable: the account
is disabled first (nothing new can start under it), its labs change owner, it leaves the
rosters and its machines, its sessions and tokens go, and only then its record; calling
delete again finishes the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubekvm import stewardship, validation
from kubekvm.errors import Conflict, NotFound
from kubekvm.models import ApiToken, Deployment, Machine, Role, User, UserSession
from kubekvm.services.rulebook import ADMIN
from kubekvm.services.rules import Operations, named, operation
from kubekvm.services.sessions import SessionRecords
from kubekvm.stewardship import Change

USERS_PAGE_MAX = 200


@dataclass(frozen=True, kw_only=True)
class UserPage:
    items: list[User]
    total: int


@dataclass(frozen=True, kw_only=True)
class DeletedUser:
    name: str
    role: Role
    labs_reassigned: list[str]
    rosters_left: list[str]


class UserAdminRecords(SessionRecords):
    """The writes of administering accounts, unchecked."""

    async def page_users(self, *, role: Role | None = None, disabled: bool | None = None, text: str = "",
                         offset: int = 0, limit: int = USERS_PAGE_MAX) -> UserPage:
        """A page of users by name. `text` is a name prefix (lower-cased: names are), so every
        filter is served by an index that also gives the order."""
        query: dict[str, Any] = {}
        if role is not None:
            query["role"] = role.value
        if disabled is True:
            query["disabled"] = True
        elif disabled is False:
            query["disabled"] = {"$ne": True}
        if text:
            query["name"] = {"$regex": "^" + re.escape(text.lower())}
        found = User.find(query)
        total = await found.count()
        items = await found.sort("name").skip(offset).limit(max(min(limit, USERS_PAGE_MAX), 1)).to_list()
        return UserPage(items=items, total=total)

    async def other_enabled_admins(self, name: str) -> int:
        return await User.find({"role": Role.ADMIN.value, "disabled": {"$ne": True}, "name": {"$ne": name}}).count()

    async def target(self, name: str) -> stewardship.Target:
        user = await self.find_user(name)
        if user is None:
            raise NotFound(f"There is no user named {name!r}.")
        return stewardship.Target(name=user.name, role=user.role, disabled=user.disabled)

    async def set_disabled(self, name: str, *, disabled: bool) -> User:
        """Disable (every session ends; tokens are refused while disabled) or enable again."""
        await User.get_pymongo_collection().update_one({"name": name}, {"$set": {"disabled": disabled}})
        if disabled:
            await self.end_sessions(name)
        return await self._reread(name)

    async def set_role(self, name: str, role: Role) -> User:
        """The new role holds at the account's next request (sessions read it on each one);
        its long-lived connections end at their next check, and reconnect with it."""
        await User.get_pymongo_collection().update_one({"name": name}, {"$set": {"role": role.value}})
        return await self._reread(name)

    async def undo_if_no_admin_left(self, name: str, undo: dict[str, Any]) -> None:
        """Two admins demoting or disabling each other at once could each see the other as the
        remaining admin: after the write, if no enabled admin is left, this one is undone."""
        if await User.find({"role": Role.ADMIN.value, "disabled": {"$ne": True}}).count() == 0:
            await User.get_pymongo_collection().update_one({"name": name}, {"$set": undo})
            raise Conflict(stewardship.last_admin(name))

    async def owned_labs(self, name: str) -> list[str]:
        found = Deployment.get_pymongo_collection().find({"owner": name}, {"name": 1}).sort("name", 1)
        return [doc["name"] async for doc in found]

    async def delete_user(self, name: str, *, heir: str | None) -> DeletedUser:
        user = await self.get_user_record(name)
        await User.get_pymongo_collection().update_one({"_id": user.id}, {"$set": {"disabled": True}})
        await self.end_sessions(name)
        labs = await self.owned_labs(name)
        if labs:
            await Deployment.get_pymongo_collection().update_many({"owner": name}, {"$set": {"owner": heir}})
        rosters = [doc["name"] async for doc in Deployment.get_pymongo_collection().find({"roster": name},
                                                                                         {"name": 1})]
        await Machine.get_pymongo_collection().update_many({"student": name}, {"$set": {"student": None}})
        await Deployment.get_pymongo_collection().update_many({"roster": name}, {"$pull": {"roster": name}})
        await ApiToken.get_pymongo_collection().delete_many({"kind": "user", "owner": name})
        await UserSession.get_pymongo_collection().delete_many({"user": name})
        await User.get_pymongo_collection().delete_one({"_id": user.id})
        return DeletedUser(name=name, role=user.role, labs_reassigned=labs, rosters_left=sorted(rosters))

    async def get_user_record(self, name: str) -> User:
        user = await self.find_user(name)
        if user is None:
            raise NotFound(f"There is no user named {name!r}.")
        return user

    async def _reread(self, name: str) -> User:
        return await self.get_user_record(name)


class UserAdminOperations(Operations):
    """Administering accounts, as an admin may."""

    @operation(ADMIN, field="userPage")
    async def page_users(self, *, role: Role | None = None, disabled: bool | None = None, text: str = "",
                         offset: int = 0, limit: int = 50) -> UserPage:
        offset = validation.offset(offset)
        limit = validation.limit(limit, maximum=USERS_PAGE_MAX)
        text = validation.text(text, field="text", label="The search text", max_length=64).strip()
        return await self.accounts.page_users(role=role, disabled=disabled, text=text, offset=offset, limit=limit)

    async def _check(self, name: str, change: Change, *, new_role: Role | None = None) -> stewardship.Target:
        target = await self.accounts.target(name)
        stewardship.check_change(by=self.actor.name, target=target, change=change, new_role=new_role,
                                 other_enabled_admins=await self.accounts.other_enabled_admins(name))
        return target

    @operation(ADMIN, audit="disableUser", target=named("user"))
    async def disable_user(self, name: str) -> User:
        """Disable an account: its sessions end, its tokens and consoles stop working, and it
        cannot sign in (by password, the directory or an OpenID provider) until enabled."""
        target = await self._check(name, Change.DISABLE)
        user = await self.accounts.set_disabled(name, disabled=True)
        if target.role == Role.ADMIN:
            await self.accounts.undo_if_no_admin_left(name, {"disabled": False})
        return user

    @operation(ADMIN, audit="enableUser", target=named("user"))
    async def enable_user(self, name: str) -> User:
        await self._check(name, Change.ENABLE)
        return await self.accounts.set_disabled(name, disabled=False)

    @operation(ADMIN, audit="setUserRole", target=named("user"), message=lambda args, actor: f"to {args['role']}")
    async def set_user_role(self, name: str, role: Role) -> User:
        """A new role, applied at the account's next request (and its open connections end,
        to reconnect with it). An account from a directory or OpenID provider gets its role
        from their groups again at its next sign-in."""
        target = await self._check(name, Change.ROLE, new_role=role)
        user = await self.accounts.set_role(name, role)
        if target.role == Role.ADMIN and role != Role.ADMIN:
            await self.accounts.undo_if_no_admin_left(name, {"role": Role.ADMIN.value})
        return user

    @operation(ADMIN, audit="deleteUser", target=named("user"),
               message=lambda args, actor: f"labs to {args['reassign_to']}" if args.get("reassign_to") else "")
    async def delete_user(self, name: str, *, reassign_to: str | None = None) -> DeletedUser:
        """Delete an account. Labs it owns go to `reassign_to` (an enabled teacher or admin),
        else the deletion is refused with the reason; a student leaves the rosters and their
        machines are unbound."""
        await self._check(name, Change.DELETE)
        labs = await self.accounts.owned_labs(name)
        heir = await self.accounts.find_user(reassign_to) if reassign_to else None
        stewardship.check_heir(leaving=name, labs=labs, heir=reassign_to, heir_role=heir.role if heir else None,
                               heir_disabled=bool(heir and heir.disabled))
        return await self.accounts.delete_user(name, heir=reassign_to if labs else None)

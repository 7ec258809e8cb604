"""GraphQL of administering accounts: the paged, filtered list of users, disabling and enabling,
role changes and deletion. Thin adapters over `kubekvm.services.user_admin.UserAdminOperations`
(the rules of what may be changed are `kubekvm.stewardship`'s); `Query` and `Mutation`
(`kubekvm.graphql.schema`) take these fields in by inheriting the classes below."""

from __future__ import annotations

import strawberry

from kubekvm import models
from kubekvm.authorized import Authorized
from kubekvm.graphql.types import User


def _services(info: strawberry.Info) -> Authorized:
    services: Authorized = info.context["services"]
    return services


@strawberry.type(description="A page of accounts, by name, and how many match in all.")
class UserPage:
    items: list[User]
    total: int


@strawberry.type(description="What deleting an account did.")
class DeletedUser:
    name: str
    role: models.Role
    labs_reassigned: list[str] = strawberry.field(description="The labs it owned, now the chosen teacher's.")
    rosters_left: list[str] = strawberry.field(description="The labs whose roster it was on (its machines unbound).")


@strawberry.type
class UserAdminQuery:
    @strawberry.field(description=(
        "Admins only: a page of accounts by name, filtered by role, by status (disabled: true or false; "
        "null: both) and by a name prefix (`text`). At most 200 a page."))
    async def user_page(self, info: strawberry.Info, role: models.Role | None = None, disabled: bool | None = None,
                        text: str = "", offset: int = 0, limit: int = 50) -> UserPage:
        page = await _services(info).page_users(role=role, disabled=disabled, text=text, offset=offset, limit=limit)
        return UserPage(items=[User.of(u) for u in page.items], total=page.total)


@strawberry.type
class UserAdminMutation:
    @strawberry.mutation(description=(
        "Admins only: disable an account. Its sessions end, its API tokens are refused and its open consoles "
        "and subscriptions close (within a second for consoles), on every replica; it cannot sign in (password, "
        "LDAP or OpenID) until enabled. Not your own account, nor the last enabled admin."))
    async def disable_user(self, info: strawberry.Info, name: str) -> User:
        return User.of(await _services(info).disable_user(name))

    @strawberry.mutation(description="Admins only: enable a disabled account again (its API tokens work again).")
    async def enable_user(self, info: strawberry.Info, name: str) -> User:
        return User.of(await _services(info).enable_user(name))

    @strawberry.mutation(description=(
        "Admins only: change an account's role; it holds from the account's next request, and its open "
        "connections end to reconnect with it. Not your own, nor the last enabled admin's. A directory's or "
        "OpenID provider's account gets its role from its groups again at its next sign-in."))
    async def set_user_role(self, info: strawberry.Info, name: str, role: models.Role) -> User:
        return User.of(await _services(info).set_user_role(name, role))

    @strawberry.mutation(description=(
        "Admins only: delete an account. Labs it owns go to `reassignTo` (an enabled teacher or admin); "
        "without one the deletion is refused (CONFLICT, naming the labs). A student leaves every roster and "
        "their machines are unbound. Its sessions and tokens go; the audit log keeps its history."))
    async def delete_user(self, info: strawberry.Info, name: str, reassign_to: str | None = None) -> DeletedUser:
        gone = await _services(info).delete_user(name, reassign_to=reassign_to)
        return DeletedUser(name=gone.name, role=gone.role, labs_reassigned=gone.labs_reassigned,
                           rosters_left=gone.rosters_left)

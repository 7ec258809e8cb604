"""People's accounts as a caller may use them: signing in and out, the first admin, passwords
and set-password links, sessions, and the users list.

The records are `kubekvm.services.accounts`'; the password rules (who may set whose password,
who may make a set-password link) are `kubekvm.access`'s, applied here. Signing in, the first
admin and a password set with a link are recorded in the audit log under the account they
are for, so those operations write their own entries; every other one is audited by its rule's
wrapper (`rules.operation`).
"""

from __future__ import annotations

from collections.abc import Sequence

from kubekvm import access
from kubekvm.access import Actor, ActorKind
from kubekvm.errors import KubeKVMError, NotFound, Throttled, Unauthenticated, ValidationFailed
from kubekvm.models import Role, User
from kubekvm.services import audit
from kubekvm.services.rules import (
    ADMIN,
    EVERYONE,
    NOT_FOUND,
    OK,
    SIGNED_IN,
    VALIDATION_FAILED,
    Arguments,
    Operations,
    Rule,
    named,
    operation,
    outcomes,
    own,
)


async def _account_facts(ops: Operations, name: str) -> access.AccountFacts | None:
    user = await ops.accounts.find_user(name)
    if user is None:
        return None
    return access.AccountFacts(name=user.name, role=user.role, has_password=bool(user.password_hash),
                               lab_owners=frozenset(await ops.accounts.lab_owners_of(user.name)))


async def _may_set_password(ops: Operations, args: Arguments) -> None:
    access.require_user(ops.actor)
    facts = await _account_facts(ops, args["name"])
    if facts is None:
        access.require_admin(ops.actor)
        raise NotFound(f"There is no user named {args['name']!r}.")
    access.check_set_password(ops.actor, facts)


async def _may_link(ops: Operations, args: Arguments) -> None:
    access.require_staff(ops.actor)
    access.check_password_link(ops.actor, await _account_facts(ops, args["name"]), name=args["name"])


async def _may_end_sessions(ops: Operations, args: Arguments) -> None:
    access.check_end_sessions(ops.actor)


PASSWORD_SETTER = Rule("admins, for another account", _may_set_password, ADMIN.outcomes)
LINK_MAKER = Rule("admins; a teacher, a first link for a student of their own labs only", _may_link,
                  outcomes(other=NOT_FOUND, owner=OK))
SESSION_ENDER = Rule("admins", _may_end_sessions, ADMIN.outcomes)


class UserOperations(Operations):
    """Accounts, passwords and sessions as a caller may use them."""

    @operation(EVERYONE, field="me")
    async def me(self) -> User | None:
        return await self.accounts.find_user(self.actor.name) if self.actor.is_user else None

    @operation(ADMIN, field="users")
    async def list_users(self, *, role: Role | None = None) -> list[User]:
        return await self.accounts.list_users(role=role)

    @operation(ADMIN, audit="createUser", target=named("user"))
    async def create_user(self, *, name: str, role: Role, password: str | None = None) -> User:
        return await self.accounts.create_user(name=name, role=role, password=password)

    @operation(PASSWORD_SETTER, audit="setUserPassword", target=named("user"))
    async def set_user_password(self, name: str, password: str) -> User:
        """An admin sets someone's password (every session of theirs ends)."""
        return await self.accounts.set_password(name, password)

    # The bootstrap admin of the matrix has no password, so no current one of theirs can match.
    @operation(SIGNED_IN, audit="changePassword", target=own("user"),
               outcomes=outcomes(student=OK, other=OK, owner=OK, admin=VALIDATION_FAILED))
    async def change_password(self, *, current: str, new: str) -> User:
        """One's own password, given the current one; one's other sessions end (the one this
        request came through, if any, stays)."""
        return await self.accounts.change_password(name=self.actor.name, current=current, new=new,
                                                   address=self.actor.address,
                                                   keep_session=self.actor.session or None)

    @operation(LINK_MAKER, audit="createPasswordLink", target=named("user"))
    async def password_link(self, name: str) -> str:
        return await self.accounts.password_link(name, issuer=self.actor.name)

    # The link is the credential: anyone holding it may use it, while it is still good.
    @operation(EVERYONE)
    async def password_link_user(self, code: str) -> User:
        """The account a set-password link is for, if the link is still good."""
        user = await self.accounts.user_for_code(code)
        facts = await _account_facts(self, user.name)
        issuer = await self.accounts.find_user(user.password_code_issuer) if user.password_code_issuer else None
        if facts is None or not access.link_still_good(issuer=user.password_code_issuer,
                                                       issuer_role=issuer.role if issuer else None, target=facts):
            raise NotFound("This set-password link no longer works (the account has a password now, or is on "
                           "another teacher's lab): ask an admin for a new one.")
        return user

    @operation(EVERYONE)
    async def set_password_with_code(self, code: str, password: str) -> User:
        """The password of the link's account (recorded under that account)."""
        await self.password_link_user(code)
        user = await self.accounts.set_password_with_code(code, password)
        await audit.record(self._as(user), action="setPasswordWithLink", target=f"user:{user.name}")
        return user

    @operation(SESSION_ENDER, audit="endUserSessions", target=named("user"))
    async def end_user_sessions(self, name: str) -> int:
        """End every session of `name` (signed in anywhere); how many ended."""
        await self.accounts.get_user(name)
        return await self.accounts.end_sessions(name)

    @operation(ADMIN)
    async def session_counts(self, names: Sequence[str]) -> dict[str, int]:
        return await self.accounts.count_sessions(names)

    def _as(self, user: User) -> Actor:
        """The caller, as the account they just proved to be."""
        return Actor(kind=ActorKind.USER, name=user.name, role=user.role, address=self.actor.address)

    # Signing in is anyone's to try; each try is recorded (a refused one under the name typed).
    @operation(EVERYONE)
    async def sign_in(self, *, name: str, password: str) -> User:
        """The account, if the password is right and the sign-in throttle lets this try through."""
        attempt = Actor(kind=ActorKind.ANONYMOUS, name=name, address=self.actor.address)
        try:
            user = await self.accounts.authenticate(name=name, password=password, address=self.actor.address)
        except Throttled as error:
            await audit.record(attempt, action="login", target=f"user:{name}", outcome="THROTTLED",
                               message=error.message)
            raise
        except Unauthenticated:
            await audit.record(attempt, action="login", target=f"user:{name}", outcome="WRONG_PASSWORD",
                               message="unknown user or wrong password")
            raise
        await audit.record(self._as(user), action="login", target=f"user:{user.name}")
        return user

    @operation(SIGNED_IN, audit="logout", target=own("user"))
    async def sign_out(self) -> None:
        """Recorded before the session ends (`kubekvm.auth.sign_out` ends it)."""

    @operation(EVERYONE)
    async def setup_open(self, code: str) -> bool:
        """Whether `code` opens the first-admin form (no admin yet, the code good)."""
        return await self.accounts.setup_open(code)

    @operation(EVERYONE)
    async def complete_setup(self, *, code: str, name: str, password: str) -> User:
        """The first admin, with the one-time code the server logged at its first start. A refusal
        is recorded (a form error, VALIDATION_FAILED, is not: nothing was attempted yet)."""
        try:
            user = await self.accounts.complete_setup(code=code, name=name, password=password)
        except ValidationFailed:
            raise
        except KubeKVMError as error:
            await audit.record(self.actor, action="setup", outcome=error.code, message=error.message)
            raise
        await audit.record(self._as(user), action="setup", target=f"user:{user.name}")
        return user

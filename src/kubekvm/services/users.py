"""People's accounts: the users' records (who exists, with which role and password) and the
operations a caller may use on them — signing in and out, the first admin, passwords and
set-password links, sessions, and the users list.

`UserRecords` are the writes, unchecked (sessions and sign-in are `sessions`', set-password
links `links`', the server's first start `server`'s; `accounts.Accounts` gathers them).
Passwords are hashed and checked in `kubekvm.credentials`' worker pool, never on the loop; a
password change is compare-and-set on the old hash, so two changes at once cannot both win.

`UserOperations` are what a caller may do; the password rules (who may set whose password, who
may make a set-password link) are `kubekvm.access.passwords`', applied here. Signing in, the first admin
and a password set with a link are recorded in the audit log under the account they are for,
so those operations write their own entries; every other one is audited by its rule's wrapper
(`rules.operation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo.errors import DuplicateKeyError

from kubekvm import credentials, metrics, roster, throttle, validation
from kubekvm.access.actors import Actor, ActorKind
from kubekvm.access.passwords import (
    AccountFacts,
    check_end_sessions,
    check_password_link,
    check_set_password,
    link_still_good,
)
from kubekvm.access.roles import require_admin, require_staff, require_user
from kubekvm.errors import Conflict, KubeKVMError, NotFound, Throttled, Unauthenticated, ValidationFailed
from kubekvm.models import Deployment, Role, User
from kubekvm.services import audit
from kubekvm.services.rulebook import ADMIN, EVERYONE, SIGNED_IN
from kubekvm.services.rules import (
    NOT_FOUND,
    OK,
    VALIDATION_FAILED,
    Arguments,
    Operations,
    Rule,
    named,
    operation,
    outcomes,
    own,
)
from kubekvm.services.sessions import WRONG_CREDENTIALS, SessionRecords

WRONG_CURRENT_PASSWORD = "Your current password is not right; nothing changed."  # noqa: S105 (a message)


class UserRecords(SessionRecords):
    """Users and their passwords (and, from `SessionRecords`, sessions and sign-in)."""

    async def get_user(self, name: str) -> User:
        user = await self.find_user(name)
        if user is None:
            raise NotFound(f"There is no user named {name!r}.")
        return user

    async def list_users(self, *, role: Role | None = None, names: Sequence[str] | None = None) -> list[User]:
        query: dict[str, Any] = {}
        if role is not None:
            query["role"] = role.value
        if names is not None:
            query["name"] = {"$in": list(names)}
        return await User.find(query).sort("name").to_list()

    async def create_user(self, *, name: str, role: Role, password: str | None = None) -> User:
        checks = validation.Checks()
        checks(lambda: roster.username(name))
        if password:
            checks(lambda: credentials.check_password_rules(password))
        checks.done()
        user = User(name=name, role=role,
                    password_hash=await credentials.hash_password(password) if password else None)
        try:
            await user.insert()
        except DuplicateKeyError:
            raise Conflict(f"A user named {name!r} already exists.") from None
        return user

    async def ensure_students(self, names: Sequence[str]) -> list[str]:
        """Student accounts (without a usable password) for those of `names` that have no
        account; returns the names created. A name that is a teacher's or an admin's account is
        refused: rostering it would give that person's lab access to whoever holds it."""
        existing = {u.name: u for u in await self.list_users(names=names)}
        staff = sorted(n for n, u in existing.items() if u.role != Role.STUDENT)
        if staff:
            raise ValidationFailed("students", (
                f"{', '.join(staff)} {'is' if len(staff) == 1 else 'are'} not a student account; "
                "only students can be on a roster."))
        created = []
        for name in names:
            if name not in existing:
                try:
                    await self.create_user(name=name, role=Role.STUDENT)
                    created.append(name)
                except Conflict:
                    pass  # made meanwhile by another request
        return created

    async def set_password(self, name: str, password: str, *, keep_session: str | None = None) -> User:
        """A new password; every session of the user ends but `keep_session` (a session
        document's id: the one the user changed it from), and any set-password link dies."""
        user = await self.get_user(name)
        hashed = await credentials.hash_password(password)
        await User.get_pymongo_collection().update_one(
            {"_id": user.id},
            {"$set": {"password_hash": hashed, "password_code_hash": None, "password_code_expires": None,
                      "password_code_issuer": None}})
        await self.end_sessions(name, keep=keep_session)
        return await self.get_user(name)

    async def change_password(self, *, name: str, current: str, new: str, address: str,
                              keep_session: str | None = None) -> User:
        """One's own password, given the current one (a stolen session alone cannot lock its
        owner out). A wrong current password counts as a failed sign-in from `address`."""
        credentials.check_password_rules(new, field="newPassword")
        keys = throttle.keys(name, address)
        await self._check_throttle(keys)
        user = await self.get_user(name)
        if not await credentials.verify_password(user.password_hash, current):
            await self._failed(keys)
            raise ValidationFailed("currentPassword", WRONG_CURRENT_PASSWORD)
        hashed = await credentials.hash_password(new)
        # Compare-and-set on the old hash: two changes at once cannot both win.
        result = await User.get_pymongo_collection().update_one(
            {"_id": user.id, "password_hash": user.password_hash},
            {"$set": {"password_hash": hashed, "password_code_hash": None, "password_code_expires": None,
                      "password_code_issuer": None}})
        if not result.modified_count:
            raise Conflict("Your password was changed elsewhere just now; nothing changed here.")
        await self.end_sessions(name, keep=keep_session)
        return await self.get_user(name)

    async def admin_exists(self) -> bool:
        return await User.find_one({"role": Role.ADMIN.value}) is not None

    async def lab_owners_of(self, student: str) -> set[str | None]:
        """The owners of the labs whose roster holds `student` (None: a lab of no one's)."""
        found = Deployment.get_pymongo_collection().find({"roster": student}, {"owner": 1})
        return {doc.get("owner") async for doc in found}


async def _account_facts(ops: Operations, name: str) -> AccountFacts | None:
    user = await ops.accounts.find_user(name)
    if user is None:
        return None
    return AccountFacts(name=user.name, role=user.role, has_password=bool(user.password_hash or user.identity),
                               lab_owners=frozenset(await ops.accounts.lab_owners_of(user.name)))


async def _may_set_password(ops: Operations, args: Arguments) -> None:
    require_user(ops.actor)
    facts = await _account_facts(ops, args["name"])
    if facts is None:
        require_admin(ops.actor)
        raise NotFound(f"There is no user named {args['name']!r}.")
    check_set_password(ops.actor, facts)


async def _may_link(ops: Operations, args: Arguments) -> None:
    require_staff(ops.actor)
    check_password_link(ops.actor, await _account_facts(ops, args["name"]), name=args["name"])


async def _may_end_sessions(ops: Operations, args: Arguments) -> None:
    check_end_sessions(ops.actor)


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
        if facts is None or not link_still_good(issuer=user.password_code_issuer,
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
            metrics.SIGN_INS.labels(method="password", outcome="throttled").inc()
            await audit.record(attempt, action="login", target=f"user:{name}", outcome="THROTTLED",
                               message=error.message)
            raise
        except Unauthenticated as error:
            metrics.SIGN_INS.labels(method="password", outcome="refused").inc()
            # A directory's refusal of a right password (no group, an account not theirs) says why.
            wrong = error.message == WRONG_CREDENTIALS
            await audit.record(attempt, action="login", target=f"user:{name}",
                               outcome="WRONG_PASSWORD" if wrong else error.code,
                               message="unknown user or wrong password" if wrong else error.message)
            raise
        metrics.SIGN_INS.labels(method="password", outcome="ok").inc()
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

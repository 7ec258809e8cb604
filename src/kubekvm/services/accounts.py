"""Accounts: the records of people — users and their passwords, set-password links, API and
host tokens, and the first start (no admin yet); sessions and sign-in are `sessions`'.

The identity half of the service layer's records. It decides nothing about who may do what:
the operations callers use are `users`' and `tokens`' (each declaring its rule), the sign-in
middleware (`kubekvm.auth`) resumes sessions and tokens here, and the audit log is `audit`'s.
Like the rest, it is shared by several server replicas through MongoDB:

- passwords are hashed and checked in `kubekvm.credentials`' worker pool, never on the loop;
  a password change is compare-and-set on the old hash, a link's use on the link;
- the session-signing key, unless configured, is created once with an upsert
  (`$setOnInsert`) and read back, so every replica signs with the same key;
- the first admin is made once, even if two people post the setup form to two replicas.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from kubekvm import credentials, roster, throttle, validation
from kubekvm.access import Actor, ActorKind
from kubekvm.errors import Conflict, NotFound, ValidationFailed
from kubekvm.models import (
    ApiToken,
    Deployment,
    Role,
    ServerSecret,
    TokenKind,
    User,
    utcnow,
)
from kubekvm.services.context import object_id
from kubekvm.services.sessions import SessionRecords

log = logging.getLogger(__name__)

SESSION_KEY = "session-key"
SETUP_PREFIX = "setup:"
SETUP_DONE = "setup-done"
SETUP_CODE_LIFETIME = timedelta(hours=24)
PASSWORD_LINK_LIFETIME = timedelta(days=7)
TOKEN_LABEL_MAX = 80
WRONG_CURRENT_PASSWORD = "Your current password is not right; nothing changed."  # noqa: S105 (a message)


class Accounts(SessionRecords):
    """People's records: users and passwords, set-password links, tokens, the first admin (and,
    from `SessionRecords`, sessions and sign-in)."""

    # ------------------------------------------------------------------ users

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
        roster.username(name)
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

    # ------------------------------------------------------ set-password links

    async def password_link(self, name: str, *, issuer: str) -> str:
        """A one-time code for /set-password; a newer one replaces an older one."""
        user = await self.get_user(name)
        code = credentials.new_code()
        await User.get_pymongo_collection().update_one(
            {"_id": user.id}, {"$set": {"password_code_hash": credentials.token_hash(code),
                                        "password_code_expires": utcnow() + PASSWORD_LINK_LIFETIME,
                                        "password_code_issuer": issuer}})
        return code

    async def user_for_code(self, code: str) -> User:
        user = await User.find_one({"password_code_hash": credentials.token_hash(code)}) if code else None
        expires = user.password_code_expires if user else None
        if user is None or expires is None or expires < utcnow():
            raise NotFound("This set-password link is not valid (any more): ask your teacher for a new one.")
        return user

    async def set_password_with_code(self, code: str, password: str) -> User:
        user = await self.user_for_code(code)
        credentials.check_password_rules(password)
        hashed = await credentials.hash_password(password)
        # Compare-and-set on the code: a link is good for one password only.
        result = await User.get_pymongo_collection().update_one(
            {"_id": user.id, "password_code_hash": credentials.token_hash(code)},
            {"$set": {"password_hash": hashed, "password_code_hash": None, "password_code_expires": None,
                      "password_code_issuer": None}})
        if not result.modified_count:
            raise NotFound("This set-password link was just used.")
        await self.end_sessions(user.name)
        return await self.get_user(user.name)

    # ------------------------------------------------------------------ tokens

    async def create_token(self, *, kind: TokenKind, owner: str, label: str,
                           created_by: str) -> tuple[ApiToken, str]:
        """A new token and its record; the token itself is returned here and never again."""
        label = validation.text(label, field="label", label="A token's label", max_length=TOKEN_LABEL_MAX)
        token = credentials.new_token(credentials.HOST_TOKEN_PREFIX if kind == TokenKind.HOST
                                      else credentials.USER_TOKEN_PREFIX)
        record = ApiToken(kind=kind, owner=owner, label=label or f"{kind.value} token",
                          token_hash=credentials.token_hash(token), prefix=token[:8],
                          created_by=created_by)
        await record.insert()
        return record, token

    async def list_tokens(self, *, kind: TokenKind | None = None, owner: str | None = None) -> list[ApiToken]:
        query: dict[str, Any] = {}
        if kind is not None:
            query["kind"] = kind.value
        if owner is not None:
            query["owner"] = owner
        return await ApiToken.find(query).sort("owner", "created_at").to_list()

    async def get_token(self, token_id: str) -> ApiToken:
        record = await ApiToken.get(object_id(token_id, what="token"))
        if record is None:
            raise NotFound(f"There is no token with id {token_id!r}.")
        return record

    async def revoke_token(self, token_id: str) -> ApiToken:
        record = await self.get_token(token_id)
        await record.delete()
        return record

    async def actor_for_token(self, token: str, *, address: str) -> Actor | None:
        """Who a bearer token speaks for, or None if it is unknown or revoked (or its user is
        gone)."""
        record = await ApiToken.find_one(ApiToken.token_hash == credentials.token_hash(token))
        if record is None:
            return None
        if record.kind == TokenKind.HOST:
            return Actor(kind=ActorKind.HOST, name=record.owner, address=address, via="token")
        user = await self.find_user(record.owner)
        if user is None:
            return None
        return Actor(kind=ActorKind.USER, name=user.name, role=user.role, address=address, via="token")

    # ------------------------------------------------------------ server start

    async def session_secret(self) -> str:
        if self.settings.secret_key:
            return self.settings.secret_key
        collection = ServerSecret.get_pymongo_collection()
        try:
            await collection.update_one(
                {"name": SESSION_KEY}, {"$setOnInsert": {"value": secrets.token_urlsafe(48), "expires": None}},
                upsert=True)
        except DuplicateKeyError:
            pass  # another replica made it first: use theirs
        found = await ServerSecret.find_one(ServerSecret.name == SESSION_KEY)
        assert found is not None
        return found.value

    async def bootstrap_admin(self) -> bool:
        """KUBEKVM_BOOTSTRAP_ADMIN_TOKEN_FILE: an admin "admin" with that token, only while no
        admin exists. True if it made one."""
        path = self.settings.bootstrap_admin_token_file
        if path is None or await self.admin_exists():
            return False
        token = path.read_text().strip()
        if len(token) < 32:
            raise SystemExit(f"{path}: a bootstrap token has at least 32 characters")
        try:
            user = await self.create_user(name="admin", role=Role.ADMIN)
        except Conflict:
            return False  # another replica bootstrapped
        await ApiToken(kind=TokenKind.USER, owner=user.name, label="bootstrap",
                       token_hash=credentials.token_hash(token), prefix=token[:8],
                       created_by="bootstrap").insert()
        return True

    async def new_setup_code(self) -> str | None:
        """While no admin exists: a one-time code for /setup (each replica makes its own and
        logs it; any one of them works, once). None once an admin exists."""
        if await self.admin_exists():
            await ServerSecret.find({"name": {"$regex": f"^{SETUP_PREFIX}"}}).delete()
            return None
        code = credentials.new_code()
        await ServerSecret(name=SETUP_PREFIX + credentials.token_hash(code), value="",
                           expires=utcnow() + SETUP_CODE_LIFETIME).insert()
        return code

    async def setup_open(self, code: str) -> bool:
        if not code or await self.admin_exists():
            return False
        found = await ServerSecret.find_one(ServerSecret.name == SETUP_PREFIX + credentials.token_hash(code))
        return found is not None and found.expires is not None and found.expires > utcnow()

    async def complete_setup(self, *, code: str, name: str, password: str) -> User:
        if not await self.setup_open(code):
            raise NotFound("This setup link is not valid: an admin exists already, or the code is wrong or old.")
        roster.username(name)
        credentials.check_password_rules(password)
        try:  # one setup only, even if two people post at once to two replicas
            await ServerSecret(name=SETUP_DONE, value=name).insert()
        except DuplicateKeyError:
            raise Conflict("The first admin was just created by someone else.") from None
        user = await self.create_user(name=name, role=Role.ADMIN, password=password)
        await ServerSecret.find({"name": {"$regex": f"^{SETUP_PREFIX}"}}).delete()
        return user

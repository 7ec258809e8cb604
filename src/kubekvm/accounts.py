"""Accounts: users and their passwords, sessions, API and host tokens, sign-in throttling, the
audit log, and the first start (no admin yet).

The identity half of the service layer, beside `kubekvm.services` (the labs half). It decides
nothing about who may do what (that is `kubekvm.access`, applied by `kubekvm.authorized`); it
keeps the records. Like the rest, it is shared by several server replicas through MongoDB:

- a signed-in browser is a session document (`UserSession`); its cookie carries only a random
  id, so ending a session (sign-out, a password change, an admin) is deleting the document,
  and holds on every replica at once;
- sign-in failures are counted with atomic `$inc`s on one document per (account, address),
  per account and per address, and judged by the rules of `kubekvm.throttle`, so a lockout
  holds whichever replica the next try reaches;
- passwords are hashed and checked in `kubekvm.credentials`' worker pool, never on the loop;
- the session-signing key, unless configured, is created once with an upsert
  (`$setOnInsert`) and read back, so every replica signs with the same key;
- the audit log is only ever inserted into: there is no method here that updates or deletes
  an entry.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from kubekvm import credentials, roster, throttle, validation
from kubekvm.access import Actor, ActorKind
from kubekvm.config import Settings
from kubekvm.errors import Conflict, NotFound, Throttled, Unauthenticated, ValidationFailed
from kubekvm.models import (
    ApiToken,
    AuditEntry,
    Deployment,
    LoginThrottle,
    Role,
    ServerSecret,
    TokenKind,
    User,
    UserSession,
    utcnow,
)
from kubekvm.services import object_id

log = logging.getLogger(__name__)

SESSION_KEY = "session-key"
SETUP_PREFIX = "setup:"
SETUP_DONE = "setup-done"
SETUP_CODE_LIFETIME = timedelta(hours=24)
PASSWORD_LINK_LIFETIME = timedelta(days=7)
TOKEN_LABEL_MAX = 80
WRONG_CREDENTIALS = "Wrong username or password."
WRONG_CURRENT_PASSWORD = "Your current password is not right; nothing changed."  # noqa: S105 (a message)


@dataclass(frozen=True, kw_only=True)
class AuditPage:
    items: list[AuditEntry]
    total: int


class Accounts:
    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings
        self.rules = throttle.Rules(
            pair_failures=settings.login_max_failures, lockout_seconds=settings.login_lockout_seconds,
            max_lockout_seconds=settings.login_window_seconds, account_slow_after=settings.login_slow_after,
            address_failures=settings.login_max_failures_per_address,
            window_seconds=settings.login_window_seconds)

    # ------------------------------------------------------------------ users

    async def find_user(self, name: str) -> User | None:
        return await User.find_one(User.name == name)

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

    # ---------------------------------------------------------------- sessions

    def _session_expiry(self, *, created: datetime, now: datetime) -> datetime:
        return min(now + timedelta(seconds=self.settings.session_idle_seconds),
                   created + timedelta(seconds=self.settings.session_max_seconds))

    async def start_session(self, user: User, *, address: str) -> tuple[str, UserSession]:
        """A new session of `user`: the random id for the cookie (returned here only) and its
        record (which keeps the id's sha256 and the session's CSRF token)."""
        session_id = credentials.new_token("")
        now = utcnow()
        record = UserSession(key_hash=credentials.token_hash(session_id), user=user.name,
                             csrf=credentials.new_code(), address=address, created_at=now, last_seen=now,
                             expires_at=self._session_expiry(created=now, now=now))
        await record.insert()
        # The user's sessions that lapsed meanwhile go now (the TTL monitor may be slower).
        await UserSession.get_pymongo_collection().delete_many({"user": user.name, "expires_at": {"$lte": now}})
        return session_id, record

    async def resume_session(self, session_id: str) -> tuple[UserSession, User] | None:
        """The live session of a cookie's id and its user, or None (ended, lapsed, or its user
        gone or without a password). Use moves its idle expiry forward (written at most every
        few seconds, not on every request)."""
        record = await UserSession.find_one(UserSession.key_hash == credentials.token_hash(session_id))
        now = utcnow()
        if record is None or record.expires_at <= now:
            return None
        user = await self.find_user(record.user)
        if user is None or not user.password_hash:
            await UserSession.get_pymongo_collection().delete_one({"_id": record.id})
            return None
        touch_every = min(60.0, self.settings.session_idle_seconds / 4)
        if (now - record.last_seen).total_seconds() >= touch_every:
            await self.touch_session(str(record.id), created=record.created_at, now=now)
        return record, user

    async def touch_session(self, session: str, *, created: datetime | None = None,
                            now: datetime | None = None) -> None:
        now = now or utcnow()
        if created is None:
            record = await self.session_record(session)
            if record is None:
                return
            created = record.created_at
        await UserSession.get_pymongo_collection().update_one(
            {"_id": object_id(session, what="session"), "expires_at": {"$gt": now}},
            {"$max": {"last_seen": now, "expires_at": self._session_expiry(created=created, now=now)}})

    async def session_record(self, session: str) -> UserSession | None:
        """A session by its document id (what an `Actor` carries), if it is still live."""
        record = await UserSession.get(object_id(session, what="session"))
        if record is None or record.expires_at <= utcnow():
            return None
        return record

    async def session_alive(self, session: str) -> bool:
        return await self.session_record(session) is not None

    async def end_session(self, session_id: str) -> None:
        """Sign-out: the session of a cookie's id ends, on every replica."""
        await UserSession.get_pymongo_collection().delete_one({"key_hash": credentials.token_hash(session_id)})

    async def end_sessions(self, name: str, *, keep: str | None = None) -> int:
        """End every session of `name` (but `keep`, a session document's id); how many ended."""
        query: dict[str, Any] = {"user": name}
        if keep:
            query["_id"] = {"$ne": object_id(keep, what="session")}
        result = await UserSession.get_pymongo_collection().delete_many(query)
        return int(result.deleted_count)

    async def count_sessions(self, names: Sequence[str]) -> dict[str, int]:
        """Live sessions per user, for the admins' users page."""
        counts: dict[str, int] = {}
        found = UserSession.get_pymongo_collection().find(
            {"user": {"$in": list(names)}, "expires_at": {"$gt": utcnow()}}, {"user": 1})
        async for doc in found:
            counts[doc["user"]] = counts.get(doc["user"], 0) + 1
        return counts

    # ----------------------------------------------------------------- sign-in

    async def authenticate(self, *, name: str, password: str, address: str) -> User:
        """The user, if the password is right and the throttle (`kubekvm.throttle`) lets this
        (account, address) try now; Throttled or Unauthenticated otherwise (the same message for
        an unknown name and a wrong password)."""
        keys = throttle.keys(name, address)
        await self._check_throttle(keys)
        user = await self.find_user(name)
        if not await credentials.verify_password(user.password_hash if user else None, password):
            await self._failed(keys)
            raise Unauthenticated(WRONG_CREDENTIALS)
        assert user is not None and user.password_hash is not None
        await self._succeeded(keys)
        if credentials.needs_rehash(user.password_hash):
            await User.get_pymongo_collection().update_one(
                {"_id": user.id, "password_hash": user.password_hash},
                {"$set": {"password_hash": await credentials.hash_password(password)}})
        return user

    async def _counters(self, keys: throttle.Keys) -> dict[str, throttle.Counter]:
        found = LoginThrottle.get_pymongo_collection().find({"key": {"$in": list(keys.all)}})
        counters = {key: throttle.Counter() for key in keys.all}
        async for doc in found:
            counters[doc["key"]] = throttle.Counter(
                failures=int(doc.get("failures") or 0), window_start=_aware(doc.get("window_start")),
                last_failure=_aware(doc.get("last_failure")), good_at=_aware(doc.get("good_at")))
        return counters

    async def _check_throttle(self, keys: throttle.Keys) -> None:
        counters = await self._counters(keys)
        wait = throttle.wait_seconds(rules=self.rules, now=utcnow(), pair=counters[keys.pair],
                                     account=counters[keys.account], address=counters[keys.address])
        if wait:
            raise Throttled(f"Too many failed sign-ins. Try again in {wait} s.", retry_after=wait)

    async def _failed(self, keys: throttle.Keys) -> None:
        now = utcnow()
        collection = LoginThrottle.get_pymongo_collection()
        window = timedelta(seconds=self.settings.login_window_seconds)
        for key in keys.all:
            # An old window starts over (its own atomic update, so two replicas cannot both reset).
            await collection.update_one({"key": key, "window_start": {"$lt": now - window}},
                                        {"$set": {"failures": 0, "window_start": now}})
            try:
                await collection.update_one(
                    {"key": key}, {"$inc": {"failures": 1}, "$max": {"last_failure": now},
                                   "$setOnInsert": {"window_start": now}}, upsert=True)
            except DuplicateKeyError:  # two first failures raced on the upsert
                await collection.update_one({"key": key}, {"$inc": {"failures": 1}, "$max": {"last_failure": now}})

    async def _succeeded(self, keys: throttle.Keys) -> None:
        """This account is known-good at this address from now on, and the pair's failures are
        forgiven (the account's and the address's stay: they describe other people's tries)."""
        now = utcnow()
        update = {"$set": {"failures": 0, "window_start": now, "good_at": now}}
        try:
            await LoginThrottle.get_pymongo_collection().update_one({"key": keys.pair}, update, upsert=True)
        except DuplicateKeyError:
            await LoginThrottle.get_pymongo_collection().update_one({"key": keys.pair}, update)

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

    # ------------------------------------------------------------------- audit

    async def record(self, actor: Actor, *, action: str, target: str = "", outcome: str = "ok",
                     message: str = "") -> None:
        # What was attempted is recorded as sent (a refused lab name, a typed sign-in name), so
        # it is made harmless to show: no control or text-direction characters, bounded.
        await AuditEntry(actor=validation.note(actor.name, max_length=200, multiline=False),
                         actor_kind=actor.kind.value, role=actor.role.value if actor.role else "", action=action,
                         target=validation.note(target, max_length=300, multiline=False), address=actor.address,
                         outcome=outcome, message=validation.note(message)).insert()

    async def audit_log(self, *, actor: str | None = None, action: str | None = None,
                        target: str | None = None, outcome: str | None = None,
                        since: datetime | None = None, offset: int = 0, limit: int = 100) -> AuditPage:
        query: dict[str, Any] = {}
        for key, value in (("actor", actor), ("action", action), ("target", target)):
            if value:
                query[key] = value
        if outcome == "refused":
            query["outcome"] = {"$ne": "ok"}
        elif outcome:
            query["outcome"] = outcome
        if since is not None:
            query["at"] = {"$gte": since}
        found = AuditEntry.find(query)
        total = await found.count()
        items = await found.sort("-at").skip(max(offset, 0)).limit(max(min(limit, 500), 1)).to_list()
        return AuditPage(items=items, total=total)

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


def _aware(value: object) -> datetime | None:
    """A stored time as an aware UTC datetime (the driver may hand back naive ones)."""
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

"""Sessions and sign-in: a signed-in browser's session, and the sign-in throttle.

- a signed-in browser is a session document (`UserSession`); its cookie carries only a random
  id, so ending a session (sign-out, a password change, an admin) is deleting the document,
  and holds on every replica at once; an idle session lapses (MongoDB's TTL monitor removes it);
- sign-in failures are counted with atomic `$inc`s on one document per (account, address),
  per account and per address, and judged by the rules of `kubekvm.throttle`, so a lockout
  holds whichever replica the next try reaches;
- passwords are checked in `kubekvm.credentials`' worker pool, never on the loop.

`SessionRecords` is the base of the people's records (`users.UserRecords`, `tokens.TokenRecords`),
gathered in `kubekvm.services.accounts.Accounts`, which the sign-in middleware (`kubekvm.auth`)
and the operations use.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from kubekvm import credentials, throttle
from kubekvm.config import Settings
from kubekvm.errors import Throttled, Unauthenticated
from kubekvm.models import LoginThrottle, Role, User, UserSession, utcnow
from kubekvm.services.context import object_id
from kubekvm.stewardship import ACCOUNT_DISABLED

WRONG_CREDENTIALS = "Wrong username or password."


class SessionRecords:
    """Sessions and sign-in (the base of the people's records)."""

    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings
        self.rules = throttle.Rules(
            pair_failures=settings.login_max_failures, lockout_seconds=settings.login_lockout_seconds,
            max_lockout_seconds=settings.login_window_seconds, account_slow_after=settings.login_slow_after,
            slow_seconds=settings.login_slow_seconds,
            address_failures=settings.login_max_failures_per_address,
            window_seconds=settings.login_window_seconds)

    async def find_user(self, name: str) -> User | None:
        return await User.find_one(User.name == name)

    async def account_current(self, name: str, *, role: Role | None) -> bool:
        """Whether `name` still exists, enabled, with `role` (one indexed read, for the re-checks
        of long-lived connections)."""
        found = await User.get_pymongo_collection().find_one({"name": name}, {"role": 1, "disabled": 1})
        return found is not None and not found.get("disabled") and found.get("role") == role

    def _session_expiry(self, *, created: datetime, now: datetime) -> datetime:
        return min(now + timedelta(seconds=self.settings.session_idle_seconds),
                   created + timedelta(seconds=self.settings.session_max_seconds))

    async def start_session(self, user: User, *, address: str,
                            provider: str | None = None) -> tuple[str, UserSession]:
        """A new session of `user`: the random id for the cookie (returned here only) and its
        record (which keeps the id's sha256 and the session's CSRF token, and the OpenID
        provider it was signed in through, if any)."""
        session_id = credentials.new_token("")
        now = utcnow()
        record = UserSession(key_hash=credentials.token_hash(session_id), user=user.name,
                             csrf=credentials.new_code(), address=address, provider=provider, created_at=now,
                             last_seen=now, expires_at=self._session_expiry(created=now, now=now))
        await record.insert()
        # The user's sessions that lapsed meanwhile go now (the TTL monitor may be slower).
        await UserSession.get_pymongo_collection().delete_many({"user": user.name, "expires_at": {"$lte": now}})
        return session_id, record

    async def resume_session(self, session_id: str) -> tuple[UserSession, User] | None:
        """The live session of a cookie's id and its user, or None (ended, lapsed, or its user
        gone, disabled, or with neither a password nor an outside identity). The user is read on
        every request, so a role change or a disabling holds at the next one, on every replica.
        Use moves its idle expiry forward (written at most every few seconds, not on every
        request)."""
        record = await UserSession.find_one(UserSession.key_hash == credentials.token_hash(session_id))
        now = utcnow()
        if record is None or record.expires_at <= now:
            return None
        user = await self.find_user(record.user)
        if user is None or user.disabled or not (user.password_hash or user.identity):
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
        if user.disabled:  # said only to whoever knows the password
            raise Unauthenticated(ACCOUNT_DISABLED)
        if credentials.needs_rehash(user.password_hash):
            await User.get_pymongo_collection().update_one(
                {"_id": user.id, "password_hash": user.password_hash},
                {"$set": {"password_hash": await credentials.rehash_password(password)}})
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


def _aware(value: object) -> datetime | None:
    """A stored time as an aware UTC datetime (the driver may hand back naive ones)."""
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

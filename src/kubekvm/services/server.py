"""The server itself: what it says of itself (which replica answered, its database and event
stream), and what it needs at its start — the key that signs sessions, and a first admin.

Several replicas start against one database, so each of these is made once, whichever replica
gets there first:
- the session-signing key, unless configured, is created with an upsert (`$setOnInsert`) and
  read back, so every replica signs with the same key;
- while no admin exists, each replica logs a one-time code for /setup (any one of them works,
  once); the first admin is made once, even if two people post the setup form to two replicas;
- or an admin "admin" is made with the token of `KUBEKVM_BOOTSTRAP_ADMIN_TOKEN_FILE`.

`ServerStart` are the records (gathered in `accounts.Accounts`; `users.UserOperations` offers
the setup form's operations); `ServerOperations` what a caller may ask of the server.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from pymongo.errors import DuplicateKeyError

from kubekvm import credentials, roster, validation
from kubekvm.errors import Conflict, NotFound
from kubekvm.models import ApiToken, Role, ServerSecret, TokenKind, User, utcnow
from kubekvm.services.context import ServerInfo
from kubekvm.services.rulebook import EVERYONE
from kubekvm.services.rules import Operations, operation
from kubekvm.services.users import UserRecords

SESSION_KEY = "session-key"
SETUP_PREFIX = "setup:"
SETUP_DONE = "setup-done"
SETUP_CODE_LIFETIME = timedelta(hours=24)


class ServerStart(UserRecords):
    """The session-signing key and the first admin (on top of the users' records)."""

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
        checks = validation.Checks()
        checks(lambda: roster.username(name))
        checks(lambda: credentials.check_password_rules(password))
        checks.done()
        try:  # one setup only, even if two people post at once to two replicas
            await ServerSecret(name=SETUP_DONE, value=name).insert()
        except DuplicateKeyError:
            raise Conflict("The first admin was just created by someone else.") from None
        user = await self.create_user(name=name, role=Role.ADMIN, password=password)
        await ServerSecret.find({"name": {"$regex": f"^{SETUP_PREFIX}"}}).delete()
        return user


class ServerOperations(Operations):
    @operation(EVERYONE, field="serverInfo")
    async def server_info(self) -> ServerInfo:
        return self.services.ctx.server_info()

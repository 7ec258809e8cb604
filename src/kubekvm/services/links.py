"""Set-password links: a one-time code, made by an admin or a teacher for an account, with which
its person sets a password at /set-password without signing in.

Only the code's sha256 is kept, on the user's record, with an expiry and who issued it; a newer
link replaces an older one, and a new password (however set) kills the link. Using a link is
compare-and-set on the code, so a link is good for one password only, even if it is posted to
two replicas at once; it ends every session of the account. Who may make a link, and whether
it still works, are `kubekvm.access.passwords`' rules, applied by `users.UserOperations`.
"""

from __future__ import annotations

from datetime import timedelta

from kubekvm import credentials
from kubekvm.errors import NotFound
from kubekvm.models import User, utcnow
from kubekvm.services.users import UserRecords

PASSWORD_LINK_LIFETIME = timedelta(days=7)


class PasswordLinks(UserRecords):
    """Set-password links (on top of the users' records)."""

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

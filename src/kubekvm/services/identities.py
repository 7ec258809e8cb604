"""People from outside: accounts of those an LDAP directory or an OpenID provider vouches for,
and the password sign-in that asks the directory.

`IdentityRecords` is the part of `accounts.Accounts` that
- checks a password typed on the sign-in form: against the directory (`kubekvm.directory`) for
  everyone but a local account (one with a password of its own and no outside identity), and
  against nothing local at all when local passwords are switched off; the sign-in throttle
  (`kubekvm.throttle`) counts directory failures exactly like local ones;
- makes or finds the account of a person vouched for (just in time, at their first sign-in),
  with the role `kubekvm.identity.decide_role` gives them, every time they sign in; an existing
  account is taken only where `kubekvm.identity.binding_refusal` allows.

`IdentityOperations.sign_in_external` is what the OpenID callback page calls once the provider's
answer is validated (`kubekvm.oidc`); it is recorded in the audit log like a password sign-in.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from kubekvm import identity, metrics, throttle
from kubekvm.access.actors import Actor, ActorKind
from kubekvm.config import Settings
from kubekvm.directory import Directory
from kubekvm.errors import KubeKVMError, Unauthenticated, ValidationFailed
from kubekvm.identity import ExternalIdentity, RoleRules
from kubekvm.models import User
from kubekvm.services import audit
from kubekvm.services.rulebook import EVERYONE
from kubekvm.services.rules import Operations, operation
from kubekvm.services.sessions import WRONG_CREDENTIALS
from kubekvm.services.users import UserRecords
from kubekvm.stewardship import ACCOUNT_DISABLED

LOCAL_PASSWORDS_OFF = "Passwords kept here are switched off: sign in with your university account."


class IdentityRecords(UserRecords):
    """Accounts of people from outside, and the password sign-in that asks the directory."""

    def __init__(self, *, settings: Settings) -> None:
        super().__init__(settings=settings)
        ldap = settings.identity.ldap
        self.directory = Directory(ldap) if ldap is not None else None

    async def authenticate(self, *, name: str, password: str, address: str) -> User:
        local_on = self.settings.identity.local_passwords
        if self.directory is None:
            if not local_on:
                raise Unauthenticated(LOCAL_PASSWORDS_OFF)
            return await super().authenticate(name=name, password=password, address=address)
        user = await self.find_user(name)
        if local_on and user is not None and user.password_hash and user.identity is None:
            return await super().authenticate(name=name, password=password, address=address)
        keys = throttle.keys(name, address)
        await self._check_throttle(keys)
        person = await self.directory.authenticate(name, password)
        if person is None:
            await self._failed(keys)
            raise Unauthenticated(WRONG_CREDENTIALS)
        await self._succeeded(keys)
        assert self.settings.identity.ldap is not None
        found = ExternalIdentity(key=f"ldap:{person.dn.lower()}", source="the directory", groups=person.groups,
                                 username=identity.account_name(person.username, source="The directory"))
        return await self.external_account(found, rules=self.settings.identity.ldap.roles)

    async def external_account(self, person: ExternalIdentity, *, rules: RoleRules) -> User:
        """The account of someone vouched for: made at their first sign-in, its role set by the
        rules at every one. Unauthenticated (with the reason) when they may not have one."""
        role = identity.decide_role(rules, username=person.username, groups=person.groups)
        if role is None:
            raise Unauthenticated(f"{person.source.capitalize()} puts you in no group that may use KubeKVM; "
                                  "ask your teacher or an admin.")
        users = User.get_pymongo_collection()
        for _ in range(2):  # a second round only if a first sign-in raced another on the same name
            bound = await User.find_one({"identity": person.key})
            if bound is not None and bound.disabled:
                raise Unauthenticated(ACCOUNT_DISABLED)
            if bound is not None:
                if bound.role != role:
                    await users.update_one({"_id": bound.id}, {"$set": {"role": role.value}})
                return await self.get_user(bound.name)
            existing = await self.find_user(person.username)
            if existing is None:
                try:
                    created = User(name=person.username, role=role, identity=person.key)
                    await created.insert()
                    return created
                except DuplicateKeyError:
                    continue
            if existing.disabled:
                raise Unauthenticated(ACCOUNT_DISABLED)
            refusal = identity.binding_refusal(name=existing.name, key=person.key, bound_to=existing.identity,
                                               has_password=bool(existing.password_hash))
            if refusal:
                raise Unauthenticated(refusal)
            # Taken only as it was read: without a password or an identity.
            query: dict[str, Any] = {"_id": existing.id, "identity": None, "password_hash": None}
            result = await users.update_one(query, {"$set": {"identity": person.key, "role": role.value}})
            if result.modified_count:
                return await self.get_user(existing.name)
        raise Unauthenticated("Your account changed while you signed in; try again.")


class IdentityOperations(Operations):
    """Signing in through an OpenID provider, as a caller may."""

    # Anyone may try: the provider's answer was validated by the callback (`kubekvm.oidc`) before.
    @operation(EVERYONE)
    async def sign_in_external(self, person: ExternalIdentity, *, rules: RoleRules) -> User:
        attempt = Actor(kind=ActorKind.ANONYMOUS, name=person.username, address=self.actor.address)
        # The metric's label is the kind of source, never its configured title (kubekvm.metrics).
        method = "ldap" if person.key.startswith("ldap:") else "oidc"
        try:
            user = await self.accounts.external_account(person, rules=rules)
        except (Unauthenticated, ValidationFailed) as error:
            metrics.SIGN_INS.labels(method=method, outcome="refused").inc()
            await audit.record(attempt, action="login", target=f"user:{person.username}", outcome=error.code,
                               message=f"via {person.source}: {error.message}")
            raise
        except KubeKVMError:
            raise
        metrics.SIGN_INS.labels(method=method, outcome="ok").inc()
        await audit.record(Actor(kind=ActorKind.USER, name=user.name, role=user.role, address=self.actor.address),
                           action="login", target=f"user:{user.name}", message=f"via {person.source}")
        return user

"""Who a person from outside is here: the rules that turn what a directory (LDAP) or an OpenID
provider says about someone — a username, a stable identifier, groups — into a KubeKVM account
name and role, and decide whether such a person may take an existing account.

Plain rules over plain values (no network, no database): `kubekvm.services.identities` applies
them when someone signs in through LDAP or OpenID Connect, `kubekvm.identity_config` reads the
settings they take.

How a role is decided (the README's "How roles are decided" says the same):
1. a username in the source's admins list is an admin;
2. otherwise the highest role any of the person's groups maps to (admin > teacher > student);
3. otherwise the source's default role, or no sign-in at all when it has none.
A group matches a mapping by its full name (an LDAP DN, a Keycloak path such as `/staff`) or by
its last part (the DN's first value, the path's last segment), without regard to case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kubekvm import roster
from kubekvm.domain import Role
from kubekvm.errors import ValidationFailed

_RANK = {Role.STUDENT: 0, Role.TEACHER: 1, Role.ADMIN: 2}


@dataclass(frozen=True, kw_only=True)
class RoleRules:
    """How one source's people get their roles: group → role, the admins by name, and the
    role of someone in no mapped group (None: they may not sign in)."""

    groups: tuple[tuple[str, Role], ...] = ()
    admins: frozenset[str] = field(default_factory=frozenset)
    default: Role | None = Role.STUDENT


@dataclass(frozen=True, kw_only=True)
class ExternalIdentity:
    """A person as a directory or a provider vouched for them just now. `key` names them for
    good ("ldap:<dn>", "oidc:<provider>:<sub>"); `username` is the account name they get."""

    key: str
    username: str
    groups: tuple[str, ...] = ()
    source: str = ""  # what the audit log and the pages call it: "LDAP", the provider's title


def parse_role_map(raw: str, *, setting: str) -> tuple[tuple[str, Role], ...]:
    """`GROUP=ROLE` pairs separated by ';' (a group may be a DN: the role is after its last
    '='), e.g. `staff=teacher; cn=students,ou=groups,dc=uni,dc=example=student`."""
    pairs: list[tuple[str, Role]] = []
    for item in raw.split(";"):
        item = item.strip()
        if not item:
            continue
        group, sep, role = item.rpartition("=")
        try:
            if not sep or not group.strip():
                raise ValueError
            pairs.append((group.strip(), Role(role.strip().lower())))
        except ValueError:
            raise SystemExit(f"{setting}: {item!r} is not GROUP=ROLE with ROLE admin, teacher or student") from None
    return tuple(pairs)


def parse_names(raw: str) -> frozenset[str]:
    """Usernames separated by commas, semicolons or spaces, lowercased."""
    return frozenset(n.strip().lower() for n in raw.replace(";", ",").replace(" ", ",").split(",") if n.strip())


def _normal(name: str) -> str:
    return " ".join(name.split()).lower().replace(", ", ",")


def group_names(group: str) -> set[str]:
    """The names a person's group may be mapped by: its full name and its last part, lowercased
    (a mapping's own key is taken whole: `cn=staff,ou=x` does not match every `staff`)."""
    full = _normal(group)
    names = {full}
    if "=" in full.split(",", 1)[0]:  # a DN: its first RDN's value
        names.add(full.split(",", 1)[0].split("=", 1)[1].strip())
    if "/" in full:  # a path (Keycloak's full group paths): its last segment
        names.add(full.rstrip("/").rsplit("/", 1)[-1])
    return {n for n in names if n}


def decide_role(rules: RoleRules, *, username: str, groups: Iterable[str]) -> Role | None:
    """The role of `username` with `groups`, by the rules above; None: no sign-in."""
    if username.lower() in rules.admins:
        return Role.ADMIN
    mine = set().union(*(group_names(g) for g in groups)) if groups else set()
    matched = [role for group, role in rules.groups if _normal(group) in mine]
    if matched:
        return max(matched, key=_RANK.__getitem__)
    return rules.default


def account_name(raw: str, *, source: str) -> str:
    """The account name for a username a source gave (lowercased); ValidationFailed with a
    sentence the person can take to their admin when it is not a valid KubeKVM username."""
    name = raw.strip().lower()
    try:
        return roster.username(name)
    except ValidationFailed as error:
        raise ValidationFailed("name", f"{source} calls you {raw[:70]!r}, which cannot be a username here: "
                                       f"{error.message}") from None


def binding_refusal(*, name: str, key: str, bound_to: str | None, has_password: bool) -> str | None:
    """Why the person `key` may not take the existing account `name` (None: they may).

    An account already bound to this identity is theirs. One bound to another identity is not
    (a renamed or recycled username must not inherit someone's labs). One with a local password
    and no identity is someone's local account: taking it by name would let whoever holds that
    name in the directory into it, so an admin must remove its password or rename one of them
    first. One with neither (made by a roster or an admin, waiting for its person) is theirs.
    """
    if bound_to == key:
        return None
    if bound_to is not None:
        return (f"The account {name!r} here belongs to another sign-in ({bound_to.split(':', 1)[0]}); "
                "ask an admin.")
    if has_password:
        return (f"An account named {name!r} with its own password exists here; an admin must settle "
                "which one is yours before you can sign in this way.")
    return None

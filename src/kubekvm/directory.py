"""The LDAP directory (ldap3): proving a person's password by binding as them, their groups, and
the members of a group (a lab's roster filled from it).

ldap3 is synchronous, so every call runs in this module's own small thread pool, never on the
event loop; each connection has ldap3's connect and receive timeouts and each whole call a
deadline of its own, so a directory that hangs answers "unavailable", it does not hold a request.
A directory that cannot be reached is `Unavailable`; a wrong password, an unknown name or an
entry outside the user filter is the same `None` (nothing tells which).

Nothing typed by a person reaches a filter unescaped (`escape_filter_chars`): `*)(uid=*` as a
username is a name that matches nobody, not a filter that matches everybody. An empty password
is refused before any bind: LDAP treats a bind with a DN and no password as an anonymous bind,
which succeeds.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ldap3 import BASE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from kubekvm.errors import NotFound, Unavailable, ValidationFailed
from kubekvm.identity_config import LdapDirectory

T = TypeVar("T")
# At most this many directory calls at once per server process (each holds a thread).
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ldap")
_RDN = re.compile(r"([A-Za-z][A-Za-z0-9-]*)=(.+)")
# A roster from a group is at most this many people (a lab's replicas are far fewer).
MAX_MEMBERS = 2000


@dataclass(frozen=True)
class DirectoryPerson:
    dn: str
    username: str
    groups: tuple[str, ...]


class Directory:
    """One configured LDAP directory."""

    def __init__(self, config: LdapDirectory) -> None:
        self.config = config
        tls = Tls(validate=ssl.CERT_REQUIRED if config.tls_verify else ssl.CERT_NONE,
                  ca_certs_file=str(config.ca_file) if config.ca_file else None)
        # ldap3 packs its timeouts into socket options as whole seconds.
        self.seconds = max(1, math.ceil(config.timeout_seconds))
        self.server = Server(config.url, use_ssl=config.url.startswith("ldaps://"), tls=tls,
                             connect_timeout=self.seconds, get_info=NONE)

    async def authenticate(self, username: str, password: str) -> DirectoryPerson | None:
        """The person, if `username` is one entry under the user filter and `password` binds as it."""
        return await self._run(lambda: self._authenticate(username, password))

    async def lookup(self, username: str) -> DirectoryPerson | None:
        """The person `username` names, with their groups, found as KubeKVM's own account would
        find them (no password: for checking the settings, `kubekvm sign-in check`)."""
        return await self._run(lambda: self._lookup(username))

    async def group_members(self, group: str) -> list[DirectoryPerson]:
        """`group`'s members that pass the user filter (with their own groups, which decide
        their roles), by username; `group` is a name (`redes-2026`), an RDN (`cn=redes-2026`)
        or a DN under the group base."""
        # Two searches per member, each bounded by the connection's timeouts: a bigger backstop.
        return await self._run(lambda: self._group_members(group), rounds=20)

    async def _run(self, call: Callable[[], T], *, rounds: int = 4) -> T:
        loop = asyncio.get_running_loop()
        try:
            # Several round trips each bounded by the connection's timeouts; the whole by this.
            return await asyncio.wait_for(loop.run_in_executor(_POOL, call), rounds * self.config.timeout_seconds)
        except TimeoutError:
            raise Unavailable("The directory did not answer in time; try again.") from None
        except LDAPException as error:
            raise Unavailable(f"The directory cannot be reached now ({type(error).__name__}); try again.") from None

    def _connect(self, user: str | None = None, password: str | None = None) -> Connection | None:
        """An open, bound connection (StartTLS first where set), or None if the bind failed."""
        connection = Connection(self.server, user=user or None, password=password or None,
                                receive_timeout=self.seconds, read_only=True,
                                raise_exceptions=False)
        connection.open()
        if self.config.start_tls and not connection.start_tls():
            connection.unbind()
            raise Unavailable("The directory refused StartTLS.")
        if not connection.bind():
            connection.unbind()
            return None
        return connection

    def _service(self) -> Connection:
        """The connection that searches: as the bind DN, or anonymously."""
        connection = self._connect(self.config.bind_dn, self.config.bind_password)
        if connection is None:
            raise Unavailable("The directory refused KubeKVM's own bind (KUBEKVM_LDAP_BIND_DN); tell an admin.")
        return connection

    def _user_filter(self, username: str, *, escaped: bool = True) -> str:
        return self.config.user_filter.replace("{username}", escape_filter_chars(username) if escaped else username)

    def _authenticate(self, username: str, password: str) -> DirectoryPerson | None:
        if not username or not password:
            return None
        return self._lookup(username, password=password)

    def _lookup(self, username: str, *, password: str | None = None) -> DirectoryPerson | None:
        """The one entry `username` finds under the user filter, with its groups; with a
        `password`, only if it binds as that entry."""
        service = self._service()
        try:
            found = self._search(service, self.config.user_base, self._user_filter(username),
                                 attributes=[self.config.username_attribute], limit=2)
            if len(found) != 1:
                return None
            dn, attributes = found[0]
            if password is not None:
                mine = self._connect(dn, password)
                if mine is None:
                    return None
                mine.unbind()
            name = _first(attributes.get(self.config.username_attribute)) or username
            return DirectoryPerson(dn=dn, username=name, groups=tuple(self._groups_of(service, dn, name)))
        finally:
            service.unbind()

    def _groups_of(self, service: Connection, dn: str, username: str) -> list[str]:
        wanted = (f"(|(member={escape_filter_chars(dn)})(uniqueMember={escape_filter_chars(dn)})"
                  f"(memberUid={escape_filter_chars(username)}))")
        found = self._search(service, self.config.group_base, f"(&{self.config.group_filter}{wanted})",
                             attributes=["cn"], limit=1000)
        return [group_dn for group_dn, _ in found]

    def _group_members(self, group: str) -> list[DirectoryPerson]:
        base, scope, wanted = self._group_query(group.strip())
        service = self._service()
        try:
            try:
                found = self._search(service, base, wanted, attributes=["member", "uniqueMember", "memberUid"],
                                     limit=2, scope=scope)
            except LDAPInvalidDnError:
                raise ValidationFailed("group", f"{group!r} is not a valid group name or DN.") from None
            if len(found) != 1:
                raise NotFound(f"The directory has no group {group!r} under {self.config.group_base}."
                               if not found else f"{group!r} names more than one group: give its DN.")
            _, attributes = found[0]
            dns = [*_all(attributes.get("member")), *_all(attributes.get("uniqueMember"))]
            uids = _all(attributes.get("memberUid"))
            if len(dns) + len(uids) > MAX_MEMBERS:
                raise ValidationFailed("group", f"{group!r} has more than {MAX_MEMBERS} members.")
            entries: list[tuple[str, dict[str, Any]]] = []
            # Each member must pass the user filter too: a disabled account is nobody's student.
            everyone = self._user_filter("*", escaped=False)
            for member in dns:
                try:
                    entries += self._search(service, member, everyone, attributes=[self.config.username_attribute],
                                            limit=1, scope=BASE)
                except LDAPInvalidDnError:
                    continue
            for uid in uids:
                entries += self._search(service, self.config.user_base, self._user_filter(uid),
                                        attributes=[self.config.username_attribute], limit=1)
            people: dict[str, DirectoryPerson] = {}
            for dn, attributes in entries:
                name = _first(attributes.get(self.config.username_attribute)).lower()
                if name and name not in people:
                    people[name] = DirectoryPerson(dn=dn, username=name,
                                                   groups=tuple(self._groups_of(service, dn, name)))
            return [people[name] for name in sorted(people)]
        finally:
            service.unbind()

    def _group_query(self, group: str) -> tuple[str, str, str]:
        """Where and how to find `group`: a name or an RDN under the group base, or a DN within it."""
        if not group:
            raise ValidationFailed("group", "Name the directory group (e.g. redes-2026 or cn=redes-2026).")
        if "," in group:
            try:
                parse_dn(group)
            except LDAPInvalidDnError:
                raise ValidationFailed("group", f"{group!r} is not a valid DN.") from None
            if not _within(group, self.config.group_base):
                raise ValidationFailed("group", f"The group must be under {self.config.group_base}.")
            return group, BASE, self.config.group_filter
        match = _RDN.fullmatch(group)
        attribute, value = (match.group(1), match.group(2)) if match else ("cn", group)
        wanted = f"(&{self.config.group_filter}({attribute}={escape_filter_chars(value)}))"
        return self.config.group_base, SUBTREE, wanted

    def _search(self, connection: Connection, base: str, query: str, *, attributes: list[str], limit: int,
                scope: str = SUBTREE) -> list[tuple[str, dict[str, Any]]]:
        connection.search(base, query, search_scope=scope, attributes=attributes, size_limit=limit,
                          time_limit=self.seconds)
        result = connection.result or {}
        # 32: noSuchObject (a base that is not there: no entries); 4: size limit (entries so far).
        if result.get("result") not in (0, 4, 32):
            raise Unavailable(f"The directory refused a search: {result.get('description')}.")
        return [(str(entry["dn"]), dict(entry.get("attributes") or {}))
                for entry in connection.response or [] if entry.get("type") == "searchResEntry"]


def _all(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _first(value: object) -> str:
    values = _all(value)
    return values[0] if values else ""


def _normal_dn(dn: str) -> list[str]:
    return [f"{attribute.lower()}={value.lower()}" for attribute, value, _ in parse_dn(dn)]


def _within(dn: str, base: str) -> bool:
    inner, outer = _normal_dn(dn), _normal_dn(base)
    return len(inner) > len(outer) and inner[-len(outer):] == outer

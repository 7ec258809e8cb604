"""Who may do what: the authorization rules as plain functions of an `Actor` and a document.

An actor is whoever sent a request: nobody (anonymous), a person (a user with a role, signed
in with a session cookie or an API token) or a host agent (a host token, acting for that one
host). The rules:

- admin: everything.
- teacher: their own labs (create, change, delete, their machines and roster); templates
  they may use (all, unless a template lists the teachers it is for); hosts, read-only.
- student: the labs they are on the roster of (read-only), and only their own machine of each
  (read, start, stop, reset).
- host: register, heartbeat and report for its own host, and follow its own assignments
  and console requests.
- a machine's console (its screen and keyboard): the student bound to it, the teacher whose
  lab it is, admins. A classmate on the same roster is FORBIDDEN (they see the lab already).

Refusals say as little as they must: what a role may never do is FORBIDDEN without looking
anything up; an object the actor may not even see is NOT_FOUND, so that teacher B learns
nothing of teacher A's labs. Nothing here imports GraphQL, HTML or the database; the
authorization facade (`kubekvm.authorized`) reads the documents and asks these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubekvm.errors import Forbidden, Unauthenticated
from kubekvm.models import Deployment, Machine, Role, Template


class ActorKind(StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    HOST = "host"


@dataclass(frozen=True, kw_only=True)
class Actor:
    kind: ActorKind
    name: str = ""
    role: Role | None = None
    address: str = ""
    # "session" (a browser's cookie: state-changing requests need the CSRF token) or "token".
    via: str = ""

    @property
    def is_admin(self) -> bool:
        return self.kind == ActorKind.USER and self.role == Role.ADMIN

    @property
    def is_teacher(self) -> bool:
        return self.kind == ActorKind.USER and self.role == Role.TEACHER

    @property
    def is_student(self) -> bool:
        return self.kind == ActorKind.USER and self.role == Role.STUDENT

    @property
    def is_user(self) -> bool:
        return self.kind == ActorKind.USER

    @property
    def is_host(self) -> bool:
        return self.kind == ActorKind.HOST

    @property
    def label(self) -> str:
        return self.name if self.kind != ActorKind.ANONYMOUS else "anonymous"


def anonymous(address: str = "") -> Actor:
    return Actor(kind=ActorKind.ANONYMOUS, address=address)


# ------------------------------------------------------------------ role checks

def require_user(actor: Actor, *roles: Role) -> None:
    """A signed-in person, of one of `roles` (any role if none given)."""
    if actor.kind == ActorKind.ANONYMOUS:
        raise Unauthenticated("Sign in first: this needs an account (a session or an API token).")
    if actor.kind != ActorKind.USER:
        raise Forbidden("A host token can only register, report and follow its own host.")
    if roles and actor.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise Forbidden(f"Only {allowed} accounts may do this; you are signed in as a {actor.role}.")


def require_admin(actor: Actor) -> None:
    require_user(actor, Role.ADMIN)


def require_staff(actor: Actor) -> None:
    """Admins and teachers."""
    require_user(actor, Role.ADMIN, Role.TEACHER)


def require_host_or_admin(actor: Actor, host: str) -> None:
    """The agent of `host` (its host token), or an admin."""
    if actor.kind == ActorKind.ANONYMOUS:
        raise Unauthenticated("Sign in first: host agents authenticate with their host token.")
    if actor.is_admin or (actor.is_host and actor.name == host):
        return
    if actor.is_host:
        raise Forbidden(f"This token is for host {actor.name!r}; it cannot act for host {host!r}.")
    raise Forbidden("Only a host's agent (with its host token) or an admin may do this.")


# ---------------------------------------------------------------- object rules

def can_view_lab(actor: Actor, lab: Deployment) -> bool:
    if actor.is_admin:
        return True
    if actor.is_teacher:
        return lab.owner == actor.name
    if actor.is_student:
        return actor.name in lab.roster
    return False


def can_manage_lab(actor: Actor, lab: Deployment) -> bool:
    return actor.is_admin or (actor.is_teacher and lab.owner == actor.name)


def can_view_machine(actor: Actor, machine: Machine, lab: Deployment) -> bool:
    if actor.is_student:
        return machine.student == actor.name
    return can_manage_lab(actor, lab)


def can_open_console(actor: Actor, machine: Machine, lab: Deployment) -> bool:
    """Whoever sits at the machine: its student, the lab's owner, an admin; never a host."""
    if actor.is_admin:
        return True
    if actor.is_teacher:
        return lab.owner == actor.name
    if actor.is_student:
        return machine.student == actor.name
    return False


def may_serve_console(actor: Actor, host: str) -> bool:
    """Only the agent of the machine's host carries its console (not even an admin's token)."""
    return actor.is_host and actor.name == host


def can_use_template(actor: Actor, template: Template) -> bool:
    if actor.is_admin:
        return True
    if actor.is_teacher:
        return not template.teachers or actor.name in template.teachers
    return False


# ------------------------------------------------------- filters for queries

def lab_filter(actor: Actor) -> dict[str, Any] | None:
    """The MongoDB filter of the labs `actor` may see (None: all), so lists are filtered in
    the database rather than after reading everything."""
    if actor.is_admin:
        return None
    if actor.is_teacher:
        return {"owner": actor.name}
    if actor.is_student:
        return {"roster": actor.name}
    return {"_id": None}  # nothing


def template_filter(actor: Actor) -> dict[str, Any] | None:
    if actor.is_admin:
        return None
    if actor.is_teacher:
        return {"$or": [{"teachers": {"$exists": False}}, {"teachers": []}, {"teachers": actor.name}]}
    return {"_id": None}

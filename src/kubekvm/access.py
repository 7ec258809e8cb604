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
- scraper (a scrape token, for Prometheus): `/metrics` only; every operation refuses it.
- a machine's console (its screen and keyboard): the student bound to it, the teacher whose
  lab it is, admins. A classmate on the same roster is FORBIDDEN (they see the lab already).
- passwords, so that no teacher can take over a student's account (and with it the student's
  machines in another teacher's lab): an existing password is changed only by its owner (who
  must give the current one) or by an admin; a teacher may only make a first-time
  set-password link, for a student who has no password yet and whose every lab is that
  teacher's own; such a link stops working once that no longer holds (the student gained a
  password or landed on another teacher's roster). Ending all of a user's sessions is an
  admin's act.

Refusals say as little as they must: what a role may never do is FORBIDDEN without looking
anything up; an object the actor may not even see is NOT_FOUND, so that teacher B learns
nothing of teacher A's labs. Nothing here imports GraphQL, HTML or the database: the rules read
a document's fields through the shapes of `kubekvm.domain`; the layer that enforces them
(`kubekvm.authorized`) reads the documents, asks these functions, and builds the database
filters that narrow lists to what an actor may see.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kubekvm.domain import LabFacts, MachineFacts, Role, TemplateFacts
from kubekvm.errors import Forbidden, NotFound, Unauthenticated


class ActorKind(StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    HOST = "host"
    # A scrape token (Prometheus): reads /metrics and nothing else.
    SCRAPER = "scraper"
    # The platform itself, acting on its own rules rather than a request (the timetable's starts
    # and stops, a course's expiry, an idle machine stopped): it appears in the audit log as such,
    # is never the actor of a request, and every rule refuses it.
    SYSTEM = "system"


@dataclass(frozen=True, kw_only=True)
class Actor:
    kind: ActorKind
    name: str = ""
    role: Role | None = None
    address: str = ""
    # "session" (a browser's cookie: state-changing requests need the CSRF token) or "token".
    via: str = ""
    # The id of the session document a cookie-signed-in actor acts through ("" otherwise): a
    # password change keeps this one, and long-lived connections check it is still live.
    session: str = ""

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


def system(job: str) -> Actor:
    """The platform acting on its own rules, as the audit log names it (`kubekvm:<job>`)."""
    return Actor(kind=ActorKind.SYSTEM, name=f"kubekvm:{job}")


# ------------------------------------------------------------------ role checks

def require_user(actor: Actor, *roles: Role) -> None:
    """A signed-in person, of one of `roles` (any role if none given)."""
    if actor.kind == ActorKind.ANONYMOUS:
        raise Unauthenticated("Sign in first: this needs an account (a session or an API token).")
    if actor.kind == ActorKind.SCRAPER:
        raise Forbidden("A scrape token can only read /metrics.")
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

def can_view_lab(actor: Actor, lab: LabFacts) -> bool:
    if actor.is_admin:
        return True
    if actor.is_teacher:
        return lab.owner == actor.name
    if actor.is_student:
        return actor.name in lab.roster
    return False


def can_manage_lab(actor: Actor, lab: LabFacts) -> bool:
    return actor.is_admin or (actor.is_teacher and lab.owner == actor.name)


def can_view_machine(actor: Actor, machine: MachineFacts, lab: LabFacts) -> bool:
    if actor.is_student:
        return machine.student == actor.name
    return can_manage_lab(actor, lab)


def can_open_console(actor: Actor, machine: MachineFacts, lab: LabFacts) -> bool:
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


def can_use_template(actor: Actor, template: TemplateFacts) -> bool:
    if actor.is_admin:
        return True
    if actor.is_teacher:
        return not template.teachers or actor.name in template.teachers
    return False


# -------------------------------------------------------------- accounts

@dataclass(frozen=True, kw_only=True)
class AccountFacts:
    """What the password rules need to know of an account."""

    name: str
    role: Role
    has_password: bool
    # Owners of the labs whose roster holds the account (None: a lab of no one's).
    lab_owners: frozenset[str | None]


def check_set_password(actor: Actor, target: AccountFacts) -> None:
    """Setting a password without knowing the current one: an admin's act only. One's own is
    changed by giving the current password (`changePassword`), even for an admin, so that a
    stolen session cannot lock its owner out."""
    require_user(actor)
    if actor.name == target.name:
        raise Forbidden("Change your own password with your current one (the Account page, or changePassword).")
    if not actor.is_admin:
        raise Forbidden("Only the account's owner or an admin may change a password; a teacher may make a "
                        "first-time set-password link for a student of theirs who has none.")


def _teacher_may_link(teacher: str, target: AccountFacts) -> bool:
    return target.role == Role.STUDENT and not target.has_password and target.lab_owners == {teacher}


def check_password_link(actor: Actor, target: AccountFacts | None, *, name: str) -> None:
    """A set-password link: admins for anyone; a teacher only a first-time one, for a student
    without a password whose every lab is the teacher's own. A student on none of the
    teacher's rosters (or no account at all) is NOT_FOUND: the teacher learns nothing of it."""
    require_staff(actor)
    if actor.is_admin:
        if target is None:
            raise NotFound(f"There is no user named {name!r}.")
        return
    if target is None or target.role != Role.STUDENT or actor.name not in target.lab_owners:
        raise NotFound(f"There is no student named {name!r} on your labs' rosters.")
    if target.has_password:
        raise Forbidden(f"{name} has set a password: only they (or an admin) can change it.")
    if not _teacher_may_link(actor.name, target):
        raise Forbidden(f"{name} is also on another teacher's lab: ask an admin for their set-password link.")


def link_still_good(*, issuer: str | None, issuer_role: Role | None, target: AccountFacts) -> bool:
    """Whether a set-password link may still be used: one an admin made, yes; one a teacher
    made, while the rule that let them make it still holds."""
    if issuer is None:  # made before links named their maker: the rule cannot be checked
        return False
    if issuer_role == Role.ADMIN:
        return True
    return issuer_role == Role.TEACHER and _teacher_may_link(issuer, target)


def check_end_sessions(actor: Actor) -> None:
    require_admin(actor)

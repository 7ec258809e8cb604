"""Who may set whose password, so that no teacher can take over a student's account.

An existing password is changed only by its owner (who must give the current one) or by an
admin; a teacher may only make a first-time set-password link, for a student who has no
password yet and whose every lab is that teacher's own; such a link stops working once that no
longer holds. Ending all of a user's sessions is an admin's act.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubekvm.access.actors import Actor
from kubekvm.access.roles import require_admin, require_staff, require_user
from kubekvm.domain import Role
from kubekvm.errors import Forbidden, NotFound


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

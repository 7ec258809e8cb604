"""The rules of administering accounts: which disabling, role change or deletion an admin may
make, and what a refusal says. Plain rules over plain facts (the service layer,
`kubekvm.services.user_admin`, looks the facts up and applies the changes).

- Nobody disables, demotes or deletes their own account from the admin screens: an admin
  doing it by accident would lock themself out (another admin can do it).
- The last enabled admin is never disabled, demoted or deleted: nobody could administer the
  server after (the server's first-admin set-up runs only on an empty database).
- A teacher (or an admin) who still owns labs is deleted only with a teacher to hand them to;
  a deleted student leaves the rosters and their machines become unbound (the rows stay for
  the lab's teacher to re-roster).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kubekvm.domain import Role
from kubekvm.errors import Conflict, Forbidden, ValidationFailed

ACCOUNT_DISABLED = "This account is disabled: ask an admin of KubeKVM to enable it again."


class Change(StrEnum):
    DISABLE = "disable"
    ENABLE = "enable"
    ROLE = "role"
    DELETE = "delete"


@dataclass(frozen=True)
class Target:
    """The account to change, as it is now."""

    name: str
    role: Role
    disabled: bool


def check_change(*, by: str, target: Target, change: Change, new_role: Role | None = None,
                 other_enabled_admins: int) -> None:
    """Raise the refusal of `change` to `target` by the admin `by`, if it is refused.
    `other_enabled_admins`: enabled admins other than `target`."""
    if change == Change.ENABLE:
        return
    if target.name == by:
        what = {Change.DISABLE: "disable", Change.ROLE: "change the role of", Change.DELETE: "delete"}[change]
        raise Forbidden(f"You cannot {what} your own account; another admin can.")
    takes_an_admin = target.role == Role.ADMIN and not target.disabled and (
        change != Change.ROLE or new_role != Role.ADMIN)
    if takes_an_admin and other_enabled_admins == 0:
        raise Conflict(last_admin(target.name))


def last_admin(name: str) -> str:
    return f"{name} is the last enabled admin: make another admin first, or nobody could administer KubeKVM."


def check_heir(*, leaving: str, labs: list[str], heir: str | None, heir_role: Role | None,
               heir_disabled: bool) -> None:
    """Who takes over the labs of a deleted account: required when it owns labs, and must be
    another enabled teacher or admin."""
    if not labs:
        return
    shown = ", ".join(labs[:5]) + (f" and {len(labs) - 5} more" if len(labs) > 5 else "")
    if not heir:
        raise Conflict(f"{leaving} owns {len(labs)} lab(s) ({shown}): choose a teacher to give them to, "
                       "or delete the labs first.")
    if heir == leaving:
        raise ValidationFailed("reassignTo", "Give the labs to someone other than the account being deleted.")
    if heir_role is None:
        raise ValidationFailed("reassignTo", f"There is no user named {heir!r}.")
    if heir_role == Role.STUDENT or heir_disabled:
        raise ValidationFailed("reassignTo", f"{heir} cannot take labs over: choose an enabled teacher or admin.")

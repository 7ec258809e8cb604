"""The rules of administering accounts (`kubekvm.stewardship`), as plain functions."""

from __future__ import annotations

import pytest

from kubekvm.domain import Role
from kubekvm.errors import Conflict, Forbidden, ValidationFailed
from kubekvm.stewardship import Change, Target, check_change, check_heir

ADMIN = Target(name="root", role=Role.ADMIN, disabled=False)


@pytest.mark.parametrize("change", [Change.DISABLE, Change.ROLE, Change.DELETE])
def test_nobody_changes_their_own_account(change: Change) -> None:
    with pytest.raises(Forbidden, match="your own account"):
        check_change(by="root", target=ADMIN, change=change, new_role=Role.TEACHER, other_enabled_admins=3)


@pytest.mark.parametrize(("change", "role"), [(Change.DISABLE, None), (Change.ROLE, Role.TEACHER),
                                              (Change.DELETE, None)])
def test_the_last_enabled_admin_stays(change: Change, role: Role | None) -> None:
    with pytest.raises(Conflict, match="last enabled admin"):
        check_change(by="other", target=ADMIN, change=change, new_role=role, other_enabled_admins=0)
    check_change(by="other", target=ADMIN, change=change, new_role=role, other_enabled_admins=1)


def test_what_takes_no_admin_away_is_allowed_with_none_left() -> None:
    check_change(by="other", target=ADMIN, change=Change.ROLE, new_role=Role.ADMIN, other_enabled_admins=0)
    check_change(by="other", target=Target(name="x", role=Role.ADMIN, disabled=True), change=Change.DELETE,
                 other_enabled_admins=0)
    check_change(by="root", target=ADMIN, change=Change.ENABLE, other_enabled_admins=0)


def test_a_teachers_labs_need_an_enabled_staff_heir() -> None:
    check_heir(leaving="t", labs=[], heir=None, heir_role=None, heir_disabled=False)
    with pytest.raises(Conflict, match=r"owns 7 lab\(s\) \(a, b, c, d, e and 2 more\)"):
        check_heir(leaving="t", labs=list("abcdefg"), heir=None, heir_role=None, heir_disabled=False)
    for heir, role, disabled in (("t", Role.TEACHER, False), ("ghost", None, False), ("s", Role.STUDENT, False),
                                 ("off", Role.TEACHER, True)):
        with pytest.raises(ValidationFailed) as refused:
            check_heir(leaving="t", labs=["a"], heir=heir, heir_role=role, heir_disabled=disabled)
        assert refused.value.field == "reassignTo"
    check_heir(leaving="t", labs=["a"], heir="u", heir_role=Role.ADMIN, heir_disabled=False)

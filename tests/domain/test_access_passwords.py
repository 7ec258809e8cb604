"""The password rules of `kubekvm.access.passwords`: no teacher can take over a student's account."""

from __future__ import annotations

import pytest

from kubekvm.access.actors import Actor, ActorKind, anonymous
from kubekvm.access.passwords import AccountFacts, check_password_link, check_set_password, link_still_good
from kubekvm.errors import Forbidden, NotFound, Unauthenticated
from kubekvm.models import Role

ADMIN = Actor(kind=ActorKind.USER, name="root", role=Role.ADMIN)
TA = Actor(kind=ActorKind.USER, name="ta", role=Role.TEACHER)
TB = Actor(kind=ActorKind.USER, name="tb", role=Role.TEACHER)
STU = Actor(kind=ActorKind.USER, name="stu", role=Role.STUDENT)


def student(*, password: bool, owners: set[str | None]) -> AccountFacts:
    return AccountFacts(name="stu", role=Role.STUDENT, has_password=password, lab_owners=frozenset(owners))


def test_only_an_admin_sets_someone_elses_password_and_nobody_their_own_without_the_current_one() -> None:
    target = student(password=True, owners={"ta"})
    check_set_password(ADMIN, target)
    for actor in (TA, TB, STU):
        with pytest.raises(Forbidden):
            check_set_password(actor, target)
    with pytest.raises(Forbidden):
        check_set_password(ADMIN, AccountFacts(name="root", role=Role.ADMIN, has_password=True,
                                                      lab_owners=frozenset()))
    with pytest.raises(Unauthenticated):
        check_set_password(anonymous(), target)


def test_a_teacher_links_only_their_own_students_first_password() -> None:
    check_password_link(TA, student(password=False, owners={"ta"}), name="stu")
    with pytest.raises(Forbidden):  # has a password: theirs to change
        check_password_link(TA, student(password=True, owners={"ta"}), name="stu")
    with pytest.raises(Forbidden):  # also on another teacher's lab
        check_password_link(TA, student(password=False, owners={"ta", "tb"}), name="stu")
    with pytest.raises(NotFound):  # not on any of tb's labs: tb learns nothing
        check_password_link(TB, student(password=False, owners={"ta"}), name="stu")
    with pytest.raises(NotFound):
        check_password_link(TB, None, name="nobody")
    check_password_link(ADMIN, student(password=True, owners={"ta", "tb"}), name="stu")
    with pytest.raises(Forbidden):
        check_password_link(STU, student(password=False, owners={"ta"}), name="stu")


def test_a_teachers_link_dies_when_the_rule_that_allowed_it_no_longer_holds() -> None:
    alone = student(password=False, owners={"ta"})
    assert link_still_good(issuer="ta", issuer_role=Role.TEACHER, target=alone)
    assert not link_still_good(issuer="ta", issuer_role=Role.TEACHER,
                                      target=student(password=False, owners={"ta", "tb"}))
    assert not link_still_good(issuer="ta", issuer_role=Role.TEACHER,
                                      target=student(password=True, owners={"ta"}))
    assert link_still_good(issuer="root", issuer_role=Role.ADMIN,
                                  target=student(password=False, owners={"ta", "tb"}))
    assert not link_still_good(issuer=None, issuer_role=None, target=alone)

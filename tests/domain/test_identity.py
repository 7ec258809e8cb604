"""The rules of outside identities (`kubekvm.identity`): roles from groups and admins lists,
group names in their several spellings, account names, and who may take an existing account."""

from __future__ import annotations

import pytest

from kubekvm.domain import Role
from kubekvm.errors import ValidationFailed
from kubekvm.identity import RoleRules, account_name, binding_refusal, decide_role, parse_names, parse_role_map

RULES = RoleRules(groups=parse_role_map("staff=teacher; cn=Students,ou=groups,dc=uni=student", setting="X"),
                  admins=parse_names("Ana, bea"), default=None)


@pytest.mark.parametrize(("username", "groups", "role"), [
    ("ana", [], Role.ADMIN),  # the admins list wins, groups or none
    ("carl", ["cn=staff,ou=groups,dc=uni"], Role.TEACHER),  # a DN matches by its cn
    ("carl", ["/faculty/Staff"], Role.TEACHER),  # a Keycloak path by its last segment, any case
    ("dan", ["cn=students, ou=groups, dc=uni"], Role.STUDENT),  # a mapped DN, spaces and case aside
    ("dan", ["students"], None),  # ...but a mapping's DN is matched whole, not by its cn
    ("eve", ["students", "staff"], Role.TEACHER),  # the highest role of one's groups
    ("fay", ["other"], None),  # no mapped group and no default: no sign-in
])
def test_roles_come_from_the_admins_list_then_the_highest_mapped_group(username: str, groups: list[str],
                                                                       role: Role | None) -> None:
    assert decide_role(RULES, username=username, groups=groups) == role


def test_someone_in_no_mapped_group_gets_the_default_role() -> None:
    assert decide_role(RoleRules(), username="x", groups=["whatever"]) == Role.STUDENT


@pytest.mark.parametrize("raw", ["staff", "staff=boss", "=teacher"])
def test_a_role_map_that_is_not_group_equals_role_stops_the_server(raw: str) -> None:
    with pytest.raises(SystemExit, match="GROUP=ROLE"):
        parse_role_map(raw, setting="KUBEKVM_LDAP_ROLES")


def test_an_account_name_is_the_lowercased_username_or_a_sentence_saying_why_not() -> None:
    assert account_name("Ana.Lopez", source="Keycloak") == "ana.lopez"
    with pytest.raises(ValidationFailed, match=r"Keycloak calls you 'ana@uni\.example'"):
        account_name("ana@uni.example", source="Keycloak")


def test_only_an_account_waiting_for_its_person_or_already_theirs_may_be_taken() -> None:
    key = "ldap:uid=ana,ou=people,dc=uni"
    assert binding_refusal(name="ana", key=key, bound_to=None, has_password=False) is None
    assert binding_refusal(name="ana", key=key, bound_to=key, has_password=False) is None
    assert "own password" in (binding_refusal(name="ana", key=key, bound_to=None, has_password=True) or "")
    assert "another sign-in" in (binding_refusal(name="ana", key=key, bound_to="oidc:kc:123",
                                                 has_password=False) or "")

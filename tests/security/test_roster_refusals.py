"""Attack: roster changes that must be refused write nothing — not the roster, not a single
student account. A bad or repeated name, more than the cap of names (the same cap over GraphQL
and the form), a staff account slipped into the list, a lab being deleted: each is refused as
VALIDATION_FAILED (or CONFLICT) on field `students`, and the users collection is unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient

from kubekvm.roster import MAX_ROSTER
from tests.support.processes import Server

SET_ROSTER = ("mutation($n: String!, $s: [String!]!, $m: Boolean!) { setRoster(name: $n, students: $s, "
              "matchReplicas: $m) { createdAccounts unbound deployment { name } } }")


@pytest.fixture(scope="module")
def lab_server(server: Server) -> Server:
    body = server.graphql('mutation { createDeployment(input: {name: "roster-lab", template: "redes-neuronales", '
                          'replicas: 2}) { name } }')
    assert not body.get("errors"), body
    server.user("teacher-rl", "teacher")
    return server


def _users(server: Server) -> set[str]:
    with MongoClient(server.database_uri) as client:
        return {str(u["name"]) for u in client[server.database_name]["users"].find({}, {"name": 1})}


def _roster(server: Server) -> list[str]:
    with MongoClient(server.database_uri) as client:
        lab = client[server.database_name]["deployments"].find_one({"name": "roster-lab"})
    assert lab is not None
    return list(lab["roster"])


def _refused(server: Server, students: list[str], *, match: bool = False) -> dict[str, Any]:
    before, roster = _users(server), _roster(server)
    body = server.graphql(SET_ROSTER, {"n": "roster-lab", "s": students, "m": match})
    assert body.get("errors") and body.get("data") is None, body
    assert _users(server) == before, f"a refused roster made accounts: {_users(server) - before}"
    assert _roster(server) == roster
    error: dict[str, Any] = body["errors"][0]
    return error


@pytest.mark.parametrize("students", [
    ["fresh-a1", "Bad Name!"],
    ["fresh-b1", "fresh-b2", "fresh-b1"],
    ["fresh-c1", ""],
    ["fresh-d1", "x" * 65],
    ["fresh-e1", "nul\x00byte"],
])
def test_a_bad_or_repeated_name_creates_no_account(lab_server: Server, students: list[str]) -> None:
    error = _refused(lab_server, students)
    assert error["extensions"] == {"code": "VALIDATION_FAILED", "field": "students"}, error


def test_more_names_than_the_cap_are_refused_over_graphql(lab_server: Server) -> None:
    error = _refused(lab_server, [f"cap{i}" for i in range(MAX_ROSTER + 1)])
    assert error["extensions"] == {"code": "VALIDATION_FAILED", "field": "students"}, error
    assert str(MAX_ROSTER) in error["message"]


def test_more_students_than_a_lab_may_have_machines_creates_no_account(lab_server: Server) -> None:
    error = _refused(lab_server, [f"many{i}" for i in range(201)], match=True)
    assert error["extensions"] == {"code": "VALIDATION_FAILED", "field": "students"}, error


def test_a_staff_account_in_the_list_creates_no_account(lab_server: Server) -> None:
    error = _refused(lab_server, ["fresh-f1", "teacher-rl"])
    assert error["extensions"] == {"code": "VALIDATION_FAILED", "field": "students"}, error


def test_the_form_holds_the_same_cap_over_typed_and_uploaded_names(lab_server: Server) -> None:
    lab_server.user("admin-rl", "admin")
    browser = lab_server.session("admin-rl")
    try:
        before = _users(lab_server)
        typed = "\n".join(f"typed{i}" for i in range(600))
        upload = "username\n" + "\n".join(f"csv{i}" for i in range(600))
        answer = browser.post("/labs/roster-lab/roster", data={"students": typed},
                              files={"csv": ("class.csv", upload.encode(), "text/csv")})
        assert answer.status_code == 422, answer.status_code
        assert f"at most {MAX_ROSTER} students" in answer.text
        assert _users(lab_server) == before
    finally:
        browser.close()


def test_a_valid_roster_is_written_after_the_refusals(lab_server: Server) -> None:
    body = lab_server.graphql(SET_ROSTER, {"n": "roster-lab", "s": ["fresh-ok1", "fresh-ok2"], "m": False})
    assert not body.get("errors"), body
    assert sorted(body["data"]["setRoster"]["createdAccounts"]) == ["fresh-ok1", "fresh-ok2"]
    assert {"fresh-ok1", "fresh-ok2"} <= _users(lab_server)
    assert not {u for u in _users(lab_server) if u.startswith(("fresh-a", "fresh-b", "cap", "many"))}


def test_a_lab_being_deleted_takes_no_roster(server: Server) -> None:
    # A host holds its machine, so the lab stays Deleting until the host confirms removal.
    assert not server.graphql(
        "mutation($i: RegisterHostInput!) { registerHost(input: $i) { name } }",
        {"i": {"name": "kvm-rl", "vcpus": 4, "memoryMib": 8192, "images": ["ubuntu16.04.qcow2"],
               "domainType": "test", "agentVersion": "tests"}}).get("errors")
    server.graphql('mutation { createDeployment(input: {name: "going", template: "redes-neuronales", '
                   'replicas: 1}) { name } }')
    assert not server.graphql('mutation { deleteDeployment(name: "going") { name } }').get("errors")
    before = _users(server)
    body = server.graphql(SET_ROSTER, {"n": "going", "s": ["late1"], "m": False})
    assert body["errors"][0]["extensions"]["code"] == "CONFLICT", body
    assert _users(server) == before

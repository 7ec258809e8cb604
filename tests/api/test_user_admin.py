"""Administering accounts against two real server replicas on one database: a disabled
account's open session and API token stop working on the other replica at its next request
(timed: within a second), and its sign-in is refused with the reason; a role change holds for
an open session at once; an admin cannot disable, demote or delete themself; a deleted
teacher's labs go to the teacher chosen, or the deletion is refused naming them; a deleted
student leaves the rosters; the Users page filters and pages through thousands of accounts,
before JavaScript and as htmx fragments, and its forms Post/Redirect/Get."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from tests.security.signin import browser, try_sign_in
from tests.support.processes import Server


@dataclass
class Replicas:
    a: Server
    b: Server


@pytest.fixture(scope="module")
def replicas(start_kubekvm: Callable[..., Server]) -> Replicas:
    a = start_kubekvm()
    b = start_kubekvm(database_name=a.database_name)
    b.admin_token = a.admin_token
    a.graphql("mutation { createTemplate(input: {name: \"ua-tpl\", image: \"x.qcow2\", memoryMib: 128, "
              "diskGib: 1}) { name } }")
    return Replicas(a, b)


def ok(server: Server, query: str, token: object = None, **variables: Any) -> dict[str, Any]:
    body = server.graphql(query, variables, token=token) if token is not None else server.graphql(query, variables)
    assert not body.get("errors"), body
    data: dict[str, Any] = body["data"]  # type: ignore[assignment]
    return data


def code(body: dict[str, Any]) -> str:
    errors = body.get("errors")
    return str(errors[0]["extensions"]["code"]) if errors else "ok"


def me(client: httpx.Client) -> dict[str, Any] | None:
    """Who the session is, through GraphQL (None: the session is gone)."""
    found: dict[str, Any] = client.post("/graphql", json={"query": "{ me { kind name role } }"}).json()["data"]["me"]
    return found if found["kind"] == "user" else None


def test_disabling_ends_sessions_and_tokens_on_every_replica_at_once(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    token = a.token_for("ua-dis", "teacher")
    b.passwords["ua-dis"] = a.passwords["ua-dis"]
    session = b.session("ua-dis")
    assert me(session) == {"kind": "user", "name": "ua-dis", "role": "TEACHER"}
    assert code(b.graphql("{ me { name } }", token=token)) == "ok"

    done = ok(a, 'mutation { disableUser(name: "ua-dis") { disabled } }')
    assert done["disableUser"]["disabled"] is True
    # The very next requests on the other replica: no waiting, no propagation delay (nothing
    # waits before them, so no clock is asked: how long they take says nothing of the rule).
    assert me(session) is None
    refused = httpx.post(b.graphql_url, json={"query": "{ me { name } }"},
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert refused.status_code == 401 and "disabled" in refused.text
    assert session.get("/account").status_code == 303  # to the sign-in page

    answer = try_sign_in(browser(b), "ua-dis", a.passwords["ua-dis"])
    assert answer.status_code == 401 and "This account is disabled" in answer.text
    # A wrong password still says only that: the disabled state is for whoever knows the password.
    wrong = try_sign_in(browser(b), "ua-dis", "not-the-password")
    assert wrong.status_code == 401 and "disabled" not in wrong.text

    ok(b, 'mutation { enableUser(name: "ua-dis") { disabled } }')
    assert code(a.graphql("{ me { name } }", token=token)) == "ok"  # the token works again
    assert try_sign_in(browser(a), "ua-dis", a.passwords["ua-dis"]).status_code == 303
    with MongoClient(a.database_uri) as client:
        actions = [e["action"] for e in client[a.database_name]["audit_log"].find({"target": "user:ua-dis"})]
    assert "disableUser" in actions and "enableUser" in actions


def test_a_role_change_holds_for_an_open_session_at_once(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    a.user("ua-role", "teacher")
    b.passwords["ua-role"] = a.passwords["ua-role"]
    session = b.session("ua-role")
    assert session.get("/labs").status_code == 200
    ok(a, 'mutation { setUserRole(name: "ua-role", role: STUDENT) { role } }')
    assert me(session) == {"kind": "user", "name": "ua-role", "role": "STUDENT"}
    assert session.get("/labs").status_code == 403  # a teachers' page, refused on the next request
    with MongoClient(a.database_uri) as client:
        entry = client[a.database_name]["audit_log"].find_one({"action": "setUserRole", "target": "user:ua-role"})
    assert entry is not None and entry["outcome"] == "ok" and entry["message"] == "to student"


def test_an_admin_cannot_lock_themself_out(replicas: Replicas) -> None:
    a = replicas.a
    a.user("ua-admin2", "admin")
    token = a.token_for("ua-admin2", "admin")
    for query in ('mutation { disableUser(name: "ua-admin2") { name } }',
                  'mutation { setUserRole(name: "ua-admin2", role: TEACHER) { name } }',
                  'mutation { deleteUser(name: "ua-admin2") { name } }'):
        body = a.graphql(query, token=token)
        assert code(body) == "FORBIDDEN" and "your own account" in body["errors"][0]["message"]  # type: ignore[index]
    assert code(a.graphql("{ me { role } }", token=token)) == "ok"
    # Another admin may: ua-admin2 is not the last one.
    ok(a, 'mutation { setUserRole(name: "ua-admin2", role: TEACHER) { role } }')
    assert ok(a, "{ me { role } }", token=token)["me"]["role"] == "TEACHER"


def _lab(server: Server, owner_token: str, name: str, replicas_: int = 1) -> None:
    ok(server, "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }", owner_token,
       i={"name": name, "template": "ua-tpl", "replicas": replicas_})


def test_deleting_a_teacher_gives_their_labs_to_the_one_chosen_or_is_refused(replicas: Replicas) -> None:
    a = replicas.a
    leaving = a.token_for("ua-leaving", "teacher")
    a.user("ua-heir", "teacher")
    a.user("ua-kid", "student")
    for lab in ("ua-lab-1", "ua-lab-2"):
        _lab(a, leaving, lab)
    with MongoClient(a.database_uri) as client:
        db = client[a.database_name]
        before = sorted((d["name"], d["owner"]) for d in db["deployments"].find({"name": {"$regex": "^ua-lab"}}))

        refused = a.graphql('mutation { deleteUser(name: "ua-leaving") { name } }')
        assert code(refused) == "CONFLICT"
        assert "ua-lab-1, ua-lab-2" in refused["errors"][0]["message"]  # type: ignore[index]
        student_heir = a.graphql('mutation { deleteUser(name: "ua-leaving", reassignTo: "ua-kid") { name } }')
        assert code(student_heir) == "VALIDATION_FAILED"
        assert student_heir["errors"][0]["extensions"]["field"] == "reassignTo"  # type: ignore[index]
        # Nothing half-written: the account, its labs and its token are as they were.
        assert sorted((d["name"], d["owner"]) for d in db["deployments"].find({"name": {"$regex": "^ua-lab"}})) == before
        assert code(a.graphql("{ me { name } }", token=leaving)) == "ok"

        gone = ok(a, 'mutation { deleteUser(name: "ua-leaving", reassignTo: "ua-heir") { name labsReassigned } }')
        assert gone["deleteUser"]["labsReassigned"] == ["ua-lab-1", "ua-lab-2"]
        owners = {d["owner"] for d in db["deployments"].find({"name": {"$regex": "^ua-lab"}})}
        assert owners == {"ua-heir"}
        assert db["users"].find_one({"name": "ua-leaving"}) is None
        assert db["api_tokens"].find_one({"owner": "ua-leaving"}) is None
        entry = db["audit_log"].find_one({"action": "deleteUser", "target": "user:ua-leaving", "outcome": "ok"})
        assert entry is not None and entry["message"] == "labs to ua-heir"
    assert httpx.post(a.graphql_url, json={"query": "{ me { name } }"},
                      headers={"Authorization": f"Bearer {leaving}"}, timeout=30).status_code == 401


def test_deleting_a_student_takes_them_off_rosters_and_machines(replicas: Replicas) -> None:
    a = replicas.a
    owner = a.token_for("ua-owner", "teacher")
    _lab(a, owner, "ua-course", replicas_=2)
    ok(a, 'mutation { setRoster(name: "ua-course", students: ["ua-s1", "ua-s2"]) { unbound } }', owner)
    gone = ok(a, 'mutation { deleteUser(name: "ua-s1") { rostersLeft } }')
    assert gone["deleteUser"]["rostersLeft"] == ["ua-course"]
    with MongoClient(a.database_uri) as client:
        db = client[a.database_name]
        lab = db["deployments"].find_one({"name": "ua-course"})
        assert lab is not None and lab["roster"] == ["ua-s2"]
        students = {m["student"] for m in db["machines"].find({"deployment": "ua-course"})}
        assert "ua-s1" not in students and "ua-s2" in students


SEEDED = 3000


def test_the_users_page_filters_and_pages_through_thousands(replicas: Replicas) -> None:
    a = replicas.a
    with MongoClient(a.database_uri) as client:
        # Seeded directly: thousands of accounts through the API would be the test's whole time.
        client[a.database_name]["users"].insert_many([
            {"name": f"ub-{i:05d}", "role": "student" if i % 3 else "teacher", "password_hash": None,
             "disabled": i % 10 == 0, "created_at": datetime.now(UTC)} for i in range(SEEDED)])
    page = httpx.get(f"{a.url}/users?q=ub-&role=student&status=disabled", headers=a.admin_headers, timeout=30)
    assert page.status_code == 200
    matching = sum(1 for i in range(SEEDED) if i % 3 and i % 10 == 0)
    assert f"{matching} accounts" in page.text
    names = re.findall(r'<tr id="user-(ub-\d+)"', page.text)
    assert names == sorted(names) and len(names) == 50
    assert all(int(n[3:]) % 10 == 0 and int(n[3:]) % 3 for n in names)
    # The next page, as htmx asks for it: only the list, starting after the first page.
    fragment = httpx.get(f"{a.url}/users?q=ub-&role=student&status=disabled&offset=50", timeout=30,
                         headers={**a.admin_headers, "HX-Request": "true", "HX-Target": "user-list"})
    assert fragment.status_code == 200 and fragment.text.lstrip().startswith("<div id=\"user-list\">")
    assert "<html" not in fragment.text and "New account" not in fragment.text
    more = re.findall(r'<tr id="user-(ub-\d+)"', fragment.text)
    assert more and more[0] > names[-1]
    assert "offset=100" in fragment.text and "offset=0" in fragment.text
    # GraphQL: the same filter.
    listed = ok(a, '{ userPage(text: "ub-0001", disabled: false, limit: 5) { total items { name disabled } } }')
    assert listed["userPage"]["total"] == 9  # ub-00010 .. ub-00019 but the disabled ub-00010
    assert [u["name"] for u in listed["userPage"]["items"]] == [f"ub-0001{i}" for i in range(1, 6)]
    too_many = a.graphql("{ userPage(limit: 1000) { total } }")
    assert code(too_many) == "VALIDATION_FAILED"


def test_the_users_page_forms_post_redirect_get(replicas: Replicas) -> None:
    a = replicas.a
    a.user("ua-form", "student")
    a.user("ua-formadmin", "admin")
    admin = a.session("ua-formadmin")
    answer = admin.post("/users/ua-form/disable", data={"back": "role=student&offset=50"})
    assert answer.status_code == 303 and answer.headers["location"] == "/users?role=student&offset=50"
    shown = admin.get(answer.headers["location"])
    assert "ua-form is disabled" in shown.text
    refused = admin.post("/users/ua-formadmin/role", data={"role": "teacher", "back": ""})
    assert refused.status_code == 303 and refused.headers["location"] == "/users"
    assert "your own account" in admin.get("/users").text
    assert admin.post("/users/ua-form/enable", data={}).status_code == 303
    with MongoClient(a.database_uri) as mongo:
        user = mongo[a.database_name]["users"].find_one({"name": "ua-form"})
    assert user is not None and user["disabled"] is False

"""Attack: a teacher takes over a student's account (issue 11, class 4).

The path the review found: any teacher could roster any existing student onto a lab of their
own, then set that student's password (or make a set-password link), sign in as them and reach
their machines in another teacher's lab — start, reset (which wipes the disk), console. The rule
now (`access/passwords.py`): changing an existing password is the student's own act or an admin's; a
teacher may only issue a first-time link, for a student without a password who is on that
teacher's labs alone. Here the attacker walks the whole path as a browser and over GraphQL,
and every step after the (harmless) rostering is refused with nothing written; the authorization
matrix (`tests/api/test_authorization.py`) holds the same path among every operation.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from tests.security.signin import signed_in, try_sign_in
from tests.support.processes import Server

CREATE = "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }"
ROSTER = "mutation($n: String!, $s: [String!]!) { setRoster(name: $n, students: $s) { unbound } }"


def _code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors")
    return str(errors[0]["extensions"]["code"]) if errors else None


def _account(server: Server, name: str) -> dict[str, Any]:
    """What an attacker would want to change: the stored user (hash included) and their sessions."""
    with MongoClient(server.database_uri) as client:
        db = client[server.database_name]
        user = db["users"].find_one({"name": name})
        assert user is not None
        sessions = sorted(str(s["_id"]) for s in db["sessions"].find({"user": name}))
    return {"user": user, "sessions": sessions}


@pytest.fixture(scope="module")
def scene(server: Server) -> dict[str, Any]:
    server.user("ta-victim", "teacher")
    student_password = server.user("stu-victim", "student")
    attacker_password = server.user("tb-attacker", "teacher")
    ta = server.token_for("ta-victim")
    tb = server.token_for("tb-attacker")
    for token, lab in ((ta, "victim-lab"), (tb, "attacker-lab")):
        body = server.graphql(CREATE, {"i": {"name": lab, "template": "redes-neuronales", "replicas": 1}}, token=token)
        assert not body.get("errors"), body
    assert not server.graphql(ROSTER, {"n": "victim-lab", "s": ["stu-victim"]}, token=ta).get("errors")
    # The student is signed in somewhere: a session the attacker must not be able to end.
    signed_in(server, "stu-victim", student_password).close()
    return {"server": server, "tb": tb, "tb_password": attacker_password, "stu_password": student_password}


def test_a_teacher_cannot_set_a_rostered_students_password(scene: dict[str, Any]) -> None:
    server: Server = scene["server"]
    tb: str = scene["tb"]
    # Step 1, allowed and harmless: students take several courses, so tb may roster stu-victim.
    assert not server.graphql(ROSTER, {"n": "attacker-lab", "s": ["stu-victim"]}, token=tb).get("errors")
    before = _account(server, "stu-victim")
    assert before["sessions"], "the student's session is missing"

    # Step 2 over GraphQL: set the password, or make a link to set it.
    assert _code(server.graphql('mutation { setUserPassword(name: "stu-victim", password: "taken-over-1") '
                                "{ name } }", token=tb)) == "FORBIDDEN"
    assert _code(server.graphql('mutation { createPasswordLink(name: "stu-victim") }', token=tb)) == "FORBIDDEN"
    assert _code(server.graphql('mutation { endUserSessions(name: "stu-victim") }', token=tb)) == "FORBIDDEN"

    # Step 2 as a browser: the roster's link button, and the admins' user pages.
    browser = signed_in(server, "tb-attacker", scene["tb_password"])
    try:
        hx = {"HX-Request": "true"}
        assert browser.post("/labs/attacker-lab/roster/stu-victim/link", headers=hx).status_code == 403
        assert browser.post("/users/stu-victim/link", headers=hx).status_code == 403
        assert browser.post("/users/stu-victim/sessions/end", headers=hx).status_code == 403
    finally:
        browser.close()

    assert _account(server, "stu-victim") == before, "a refused takeover step changed the student's account"
    # The student's own password still works, and the attacker's guess does not.
    with httpx.Client(base_url=server.url, timeout=60) as student:
        assert try_sign_in(student, "stu-victim", scene["stu_password"]).status_code == 303
    with httpx.Client(base_url=server.url, timeout=60) as impostor:
        assert try_sign_in(impostor, "stu-victim", "taken-over-1").status_code == 401


def test_a_teacher_cannot_reach_the_students_machine_in_another_teachers_lab(scene: dict[str, Any]) -> None:
    server: Server = scene["server"]
    tb: str = scene["tb"]
    with MongoClient(server.database_uri) as client:
        machines = client[server.database_name]["machines"]
        before = list(machines.find({"deployment": "victim-lab"}))
    assert before, "the victim's lab has no machine to attack"
    for action in ("startMachine", "stopMachine", "resetMachine"):
        body = server.graphql(f'mutation {{ {action}(name: "victim-lab-1") {{ name }} }}', token=tb)
        assert _code(body) == "NOT_FOUND", (action, body)
    bearer = {"Authorization": f"Bearer {tb}"}
    assert httpx.get(f"{server.url}/machines/victim-lab-1/console", headers=bearer, timeout=30).status_code == 404
    assert httpx.post(f"{server.url}/machines/victim-lab-1/console/ticket", headers={**bearer, "HX-Request": "true"},
                      timeout=30).status_code == 404
    with MongoClient(server.database_uri) as client:
        after = list(client[server.database_name]["machines"].find({"deployment": "victim-lab"}))
    assert after == before, "a refused machine action changed the victim's machine"

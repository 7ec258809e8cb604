"""The audit log (every change and sign-in, allowed or refused, with who, what, which object,
when, from where and the outcome), and secrets kept out of logs, pages and API answers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from tests.support.processes import Server

AUDIT = """query($actor: String, $action: String, $outcome: String) {
  auditLog(actor: $actor, action: $action, outcome: $outcome, limit: 500) {
    total items { at actor actorKind role action target address outcome message } } }"""


def data(body: dict[str, Any]) -> dict[str, Any]:
    assert not body.get("errors"), body
    result: dict[str, Any] = body["data"]
    return result


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server]) -> Server:
    return start_kubekvm()


def login(server: Server, name: str, password: str) -> int:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
        assert csrf
        return client.post("/login", data={"name": name, "password": password,
                                           "csrf_token": csrf.group(1)}).status_code


def test_changes_and_refusals_are_audited(server: Server) -> None:
    ta = server.token_for("audit-ta", "teacher")
    tb = server.token_for("audit-tb", "teacher")
    steps = [
        'mutation { createDeployment(input: {name: "audited", template: "redes-neuronales", replicas: 2}) { name } }',
        'mutation { updateDeployment(name: "audited", input: {title: "Audited lab"}) { name } }',
        'mutation { stopDeployment(name: "audited") { name } }',
        'mutation { startDeployment(name: "audited") { name } }',
        'mutation { stopMachine(name: "audited-1") { name } }',
        'mutation { startMachine(name: "audited-1") { name } }',
        'mutation { resetMachine(name: "audited-2") { name } }',
        'mutation { deleteDeployment(name: "audited") { name } }',
    ]
    refused = server.graphql('mutation { stopDeployment(name: "audited") { name } }', token=tb)
    assert refused["errors"][0]["extensions"]["code"] == "NOT_FOUND"  # type: ignore[index]
    for query in steps:
        data(server.graphql(query, token=ta))
    log = data(server.graphql(AUDIT, {"actor": "audit-ta"}))["auditLog"]["items"]
    seen = [(e["action"], e["target"], e["outcome"]) for e in reversed(log)
            if e["action"] not in ("createApiToken", "login")]  # (how token_for got the token)
    assert seen == [
        ("createDeployment", "lab:audited", "ok"), ("updateDeployment", "lab:audited", "ok"),
        ("stopDeployment", "lab:audited", "ok"), ("startDeployment", "lab:audited", "ok"),
        ("stopMachine", "machine:audited-1", "ok"), ("startMachine", "machine:audited-1", "ok"),
        ("resetMachine", "machine:audited-2", "ok"), ("deleteDeployment", "lab:audited", "ok"),
    ]
    assert {(e["actorKind"], e["role"], e["address"]) for e in log} == {("user", "teacher", "127.0.0.1")}
    other = data(server.graphql(AUDIT, {"actor": "audit-tb", "outcome": "refused"}))["auditLog"]["items"]
    assert [(e["action"], e["target"], e["outcome"]) for e in other] == [
        ("stopDeployment", "lab:audited", "NOT_FOUND")]
    anonymous = server.graphql('mutation { deleteTemplate(name: "redes-neuronales") { name } }', token=None)
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"  # type: ignore[index]
    by_nobody = data(server.graphql(AUDIT, {"action": "deleteTemplate"}))["auditLog"]["items"]
    assert [(e["actorKind"], e["outcome"]) for e in by_nobody] == [("anonymous", "UNAUTHENTICATED")]


def test_sign_ins_are_audited(server: Server) -> None:
    password = server.user("audit-login", "teacher")
    assert login(server, "audit-login", "wrong-password!") == 401
    assert login(server, "nobody-at-all", "wrong-password!") == 401
    assert login(server, "audit-login", password) == 303
    entries = data(server.graphql(AUDIT, {"action": "login"}))["auditLog"]["items"]
    found = [(e["target"], e["outcome"], e["address"]) for e in reversed(entries)
             if e["target"] in ("user:audit-login", "user:nobody-at-all")]
    assert found == [("user:audit-login", "WRONG_PASSWORD", "127.0.0.1"),
                     ("user:nobody-at-all", "WRONG_PASSWORD", "127.0.0.1"),
                     ("user:audit-login", "ok", "127.0.0.1")]


def test_the_audit_page_filters(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=server.admin_headers, timeout=30) as client:
        page = client.get("/audit", params={"action": "login", "outcome": "refused"}).text
    assert "WRONG_PASSWORD" in page and "resetMachine" not in page


def test_the_audit_log_has_no_way_to_change_it() -> None:
    """Append-only from the application: no code path updates or deletes an entry."""
    from pathlib import Path

    source = "\n".join(p.read_text() for p in Path("src/kubekvm").rglob("*.py"))
    assert not re.search(r"AuditEntry[^\n]*\.(delete|update|set|replace|save)\b", source)
    assert "audit_log\"]" not in source and "get_collection(\"audit_log\")" not in source


def test_no_secret_in_logs_pages_or_answers(server: Server) -> None:
    """Every password and token this module used: none may appear in the server's log, in a
    page, in the database as written, or in an API answer other than the one that made it."""
    secrets = {server.admin_token, *server.passwords.values(), *server.tokens.values()}
    secrets.add(server.host_token("kvm-secret"))
    made = data(server.graphql('mutation { createApiToken(label: "once") { token } }'))
    secrets.add(made["createApiToken"]["token"])
    data(server.graphql('mutation { createUser(input: {name: "pw-user", role: TEACHER, '
                        'password: "a-password-to-hide"}) { name } }'))
    secrets.add("a-password-to-hide")
    assert login(server, "pw-user", "a-password-to-hide") == 303
    assert login(server, "pw-user", "a-wrong-guess-to-hide") == 401
    secrets.add("a-wrong-guess-to-hide")
    answers = [
        str(server.graphql("{ me { name } users { name hasPassword } apiTokens(everyone: true) { label prefix owner } "
                           "auditLog(limit: 500) { items { actor action target message } } }")),
    ]
    with httpx.Client(base_url=server.url, headers=server.admin_headers, timeout=30) as client:
        answers += [client.get(path).text for path in ("/account", "/users", "/hosts", "/audit")]
    with MongoClient(server.database_uri) as mongo:
        db = mongo[server.database_name]
        answers += [str(list(db[name].find())) for name in db.list_collection_names()]
        assert all(u["password_hash"].startswith("$argon2id$") for u in db["users"].find({"password_hash": {"$ne": None}}))
    server_log = server.child.log.read_text()
    for secret in secrets:
        assert secret not in server_log, "a secret is in the server's log"
        for text in answers:
            assert secret not in text, "a secret is in a page, an answer or the database"


def test_agent_telemetry_is_audited_only_when_refused(server: Server) -> None:
    """Heartbeats and state reports come several times a minute per host: their successes are
    not audit material, their refusals are."""
    token = server.host_token("audit-host")
    register = ('mutation { registerHost(input: {name: "audit-host", vcpus: 2, memoryMib: 2048, images: [], '
                'domainType: "test", agentVersion: "t"}) { name } }')
    data(server.graphql(register, token=token))
    for _ in range(3):
        data(server.graphql('mutation { heartbeat(input: {name: "audit-host"}) { name } }', token=token))
    refused = server.graphql('mutation { heartbeat(input: {name: "someone-else"}) { name } }', token=token)
    assert refused["errors"][0]["extensions"]["code"] in ("FORBIDDEN", "NOT_FOUND")  # type: ignore[index]
    heartbeats = data(server.graphql(AUDIT, {"action": "heartbeat"}))["auditLog"]["items"]
    assert [(e["target"], e["outcome"]) for e in heartbeats] == [
        ("host:someone-else", refused["errors"][0]["extensions"]["code"])]  # type: ignore[index]
    registered = data(server.graphql(AUDIT, {"action": "registerHost"}))["auditLog"]["items"]
    assert [e["target"] for e in registered] == ["host:audit-host"]

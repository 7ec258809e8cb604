"""Attack: text nobody types on purpose, in every free-text field, through the forms and
GraphQL: a NUL byte, an escape sequence, a bidirectional override that makes a title read as
another, and a lone surrogate (which BSON cannot store: it used to be a 500). Each is refused
naming the field, and nothing is stored (before, a NUL in a template title was)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError

from tests.security.input_support import admin_session, ensure_template, field_error, post_graphql, refused, snapshot
from tests.support.graphql import websocket_session
from tests.support.processes import Server

LAB = "text-lab"
ONE_LINE_HOSTILE = ["tiny\x00linux", "esc\x1b[31mred", "admin\u202egnp.exe", "two\nlines", "bell\x07", "del\x7f"]
MULTILINE_HOSTILE = ["tiny\x00linux", "esc\x1b[31mred", "rtl\u202eevil", "cr\ronly"]


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    ensure_template(server)
    body = post_graphql(server, f'mutation {{ createDeployment(input: {{name: "{LAB}", template: "sec-tiny", '
                                'replicas: 1, power: STOPPED}) { name } }')
    assert not body.get("errors"), body
    client = admin_session(server)
    yield client
    client.close()


def _template_form(name: str, **fields: str) -> dict[str, str]:
    return {"name": name, "title": "", "description": "", "os": "linux", "image": "tiny-linux.qcow2",
            "vcpus": "1", "memoryMib": "128", "diskGib": "1", "teachers": ""} | fields


# (where the form posts, its valid fields, the text field under attack, one line or a text area)
FORMS = [
    ("/templates", _template_form("text-tpl"), "title", ONE_LINE_HOSTILE),
    ("/templates", _template_form("text-tpl"), "description", MULTILINE_HOSTILE),
    ("/templates/sec-tiny/edit", _template_form("sec-tiny"), "title", ONE_LINE_HOSTILE),
    ("/templates/sec-tiny/edit", _template_form("sec-tiny"), "description", MULTILINE_HOSTILE),
    ("/labs", {"name": "text-new", "title": "", "template": "sec-tiny", "replicas": "1"}, "title", ONE_LINE_HOSTILE),
    (f"/labs/{LAB}/edit", {"title": "", "replicas": "1", "power": "stopped"}, "title", ONE_LINE_HOSTILE),
    ("/account/tokens", {"label": ""}, "label", ONE_LINE_HOSTILE),
]


@pytest.mark.parametrize(("action", "fields", "field", "values"), FORMS, ids=[f"{a}:{f}" for a, _, f, _ in FORMS])
def test_forms_refuse_control_characters_beside_the_field(server: Server, admin: httpx.Client, action: str,
                                                          fields: dict[str, str], field: str,
                                                          values: list[str]) -> None:
    before = snapshot(server)
    for hostile in values:
        answer = admin.post(action, data={**fields, field: hostile})
        assert answer.status_code == 422, (hostile, answer.status_code, answer.text[:300])
        assert "may not contain" in field_error(answer.text, field), hostile
    too_long = admin.post(action, data={**fields, field: "x" * 5000})
    assert too_long.status_code == 422 and "at most" in field_error(too_long.text, field)
    assert snapshot(server) == before


def test_a_text_area_keeps_newlines_and_tabs(server: Server, admin: httpx.Client) -> None:
    # Browsers send a text area's line breaks as CRLF; they are stored as LF.
    answer = admin.post("/templates", data=_template_form("text-lines", description="one\r\n\ttwo"))
    assert answer.status_code == 303, answer.text[:300]
    body = post_graphql(server, '{ template(name: "text-lines") { description } }')
    assert body["data"]["template"]["description"] == "one\n\ttwo"


def test_a_lone_surrogate_in_a_form_is_a_422_not_a_500(server: Server, admin: httpx.Client) -> None:
    """A multipart body may name its charset; `unicode_escape` turns `\\ud800` into a lone
    surrogate, which could be neither stored nor looked up nor hashed."""
    before = snapshot(server)
    for field, action, fields in [("title", "/templates", _template_form("text-sur")),
                                  ("name", "/labs", {"name": "x", "title": "", "template": "sec-tiny", "replicas": "1"}),
                                  ("password", "/account/password", {"password": "p", "again": "p"})]:
        parts = [(key, (None, (r"bad\ud800" if key == field else value).encode(), "text/plain"))
                 for key, value in fields.items()]
        request = admin.build_request("POST", action, files=parts)
        content_type = request.headers["Content-Type"] + "; charset=unicode_escape"
        answer = admin.post(action, content=request.read(), headers={"Content-Type": content_type})
        assert answer.status_code == 422, (field, answer.status_code, answer.text[:300])
        assert "surrogate" in answer.text
    assert snapshot(server) == before


GRAPHQL = [
    ("mutation($v: String!) { createTemplate(input: {name: \"text-gql\", image: \"tiny-linux.qcow2\", title: $v}) "
     "{ name } }", "title", ONE_LINE_HOSTILE),
    ("mutation($v: String!) { createTemplate(input: {name: \"text-gql\", image: \"tiny-linux.qcow2\", "
     "description: $v}) { name } }", "description", MULTILINE_HOSTILE),
    ("mutation($v: String!) { updateTemplate(name: \"sec-tiny\", input: {title: $v}) { name } }", "title",
     ONE_LINE_HOSTILE),
    ("mutation($v: String!) { createDeployment(input: {name: \"text-gql\", template: \"sec-tiny\", replicas: 1, "
     "title: $v}) { name } }", "title", ONE_LINE_HOSTILE),
    (f"mutation($v: String!) {{ updateDeployment(name: \"{LAB}\", input: {{title: $v}}) {{ name }} }}", "title",
     ONE_LINE_HOSTILE),
    ("mutation($v: String!) { createApiToken(label: $v) { token } }", "label", ONE_LINE_HOSTILE),
    ("mutation($v: String!) { createHostToken(host: \"text-host\", label: $v) { token } }", "label",
     ONE_LINE_HOSTILE),
    ("mutation($v: String!) { registerHost(input: {name: \"text-host\", vcpus: 2, memoryMib: 2048, images: [], "
     "agentVersion: $v}) { name } }", "agentVersion", ONE_LINE_HOSTILE),
]


@pytest.mark.parametrize(("query", "field", "values"), GRAPHQL, ids=[f"{q.split('{')[1].split('(')[0].strip()}:{f}"
                                                                    for q, f, _ in GRAPHQL])
def test_graphql_refuses_control_characters_naming_the_field(server: Server, admin: httpx.Client, query: str,
                                                             field: str, values: list[str]) -> None:
    before = snapshot(server)
    for hostile in values:
        error = refused(post_graphql(server, query, {"v": hostile}), field=field)
        assert "may not contain" in error["message"], error
    refused(post_graphql(server, query, {"v": "x" * 5000}), field=field)
    assert snapshot(server) == before


@pytest.mark.parametrize(("query", "variables", "field"), [
    ("mutation($v: String!) { createTemplate(input: {name: \"text-gql\", image: \"tiny-linux.qcow2\", title: $v}) "
     "{ name } }", {"v": "bad\ud800"}, "title"),
    ("mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
     {"i": {"name": "text-gql", "image": "tiny-linux.qcow2", "description": "\udfff"}}, "description"),
    ("query($n: String!) { deployment(name: $n) { name } }", {"n": "lab\ud800"}, "name"),
    ("query($a: String) { auditLog(actor: $a) { total } }", {"a": "\ud800"}, "actor"),
    ("mutation($p: String!) { setUserPassword(name: \"admin\", password: $p) { name } }", {"p": "pw\ud800pw-long-enough"},
     "password"),
])
def test_a_lone_surrogate_in_graphql_is_refused_not_an_internal_error(server: Server, admin: httpx.Client, query: str,
                                                                      variables: dict[str, object],
                                                                      field: str) -> None:
    before = snapshot(server)
    error = refused(post_graphql(server, query, variables), field=field)
    assert "surrogate" in error["message"]
    assert snapshot(server) == before


@pytest.mark.parametrize(("query", "variables", "field"), [
    ("subscription($n: String) { deploymentEvents(name: $n) { kind } }", {"n": "lab\ud800"}, "name"),
    ("subscription($h: String!, $c: String) { hostAssignments(host: \"h\", cursor: $c) { kind } }",
     {"h": "h", "c": "\udfff"}, "cursor"),
])
async def test_a_lone_surrogate_in_a_subscription_is_refused(server: Server, query: str, variables: dict[str, object],
                                                             field: str) -> None:
    async with websocket_session(server.ws_url, server.admin_token) as session:
        with pytest.raises(TransportQueryError) as refusal:
            async for _ in session.subscribe(GraphQLRequest(query, variable_values=variables)):
                pass
    error = refusal.value.errors[0]  # type: ignore[index]
    assert error["extensions"]["code"] == "VALIDATION_FAILED" and error["extensions"]["field"] == field, error


def test_the_audit_log_records_an_attempted_name_harmlessly(server: Server, admin: httpx.Client) -> None:
    """A refused request is audited with what was sent; a text-direction override or a NUL in
    it would make the admins' audit page read as something else."""
    hostile = "adm\u202enim\x00\x1b[2J"
    anonymous = httpx.Client(base_url=server.url, timeout=30)
    form = anonymous.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    assert anonymous.post("/login", data={"name": hostile, "password": "wrong-password",
                                          "csrf_token": token.group(1)}).status_code == 401
    anonymous.close()
    body = post_graphql(server, 'mutation($n: String!) { startDeployment(name: $n) { name } }', {"n": hostile})
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    entries = post_graphql(server, "{ auditLog(limit: 20) { items { actor target message } } }")
    said = [value for entry in entries["data"]["auditLog"]["items"] for value in entry.values()]
    assert any("adm\ufffdnim" in value for value in said), said
    assert not any(char in value for value in said for char in "\u202e\x00\x1b"), said


@pytest.mark.parametrize(("query", "field"), [
    ('mutation($v: String!) { createUser(input: {name: $v, role: STUDENT}) { name } }', "name"),
    ('mutation($v: String!) { createDeployment(input: {name: $v, template: "sec-tiny", replicas: 1}) { name } }',
     "name"),
    ('mutation($v: String!) { setRoster(name: "text-lab", students: ["ana", $v]) { unbound } }', "students"),
    ('mutation($v: String!) { registerHost(input: {name: $v, vcpus: 2, memoryMib: 2048, images: []}) { name } }',
     "name"),
])
def test_names_refuse_text_direction_and_control_characters(server: Server, admin: httpx.Client, query: str,
                                                            field: str) -> None:
    before = snapshot(server)
    for hostile in ("ana\u202e", "\u2066ana", "ana\x00", "ana\n", "ana\u200f"):
        refused(post_graphql(server, query, {"v": hostile}), field=field)
    assert snapshot(server) == before


def test_what_an_agent_reports_is_stored_harmlessly_or_refused(server: Server, admin: httpx.Client) -> None:
    """An agent (here the admin, who may act for any host) reports its images, its domains and
    what it sees of a machine: image names no template could use are dropped, a domain name
    with a NUL is refused, and a machine's message is kept with the unprintable replaced (it
    comes with a state report that must not be lost)."""
    body = post_graphql(server, 'mutation($i: RegisterHostInput!) { registerHost(input: $i) { name images } }',
                        {"i": {"name": "text-agent", "vcpus": 4, "memoryMib": 4096,
                               "images": ["tiny-linux.qcow2", "bad\x00.qcow2", "../up.qcow2", "\u202egpj.qcow2"]}})
    assert body["data"]["registerHost"]["images"] == ["tiny-linux.qcow2"], body
    before = snapshot(server)
    refused(post_graphql(server, 'mutation { reportOrphans(input: {host: "text-agent", domains: ["kk-x\\u0000"]}) '
                                 "{ name } }"), field="domains")
    assert snapshot(server) == before
    machines = post_graphql(server, f'{{ machines(deployment: "{LAB}") {{ id host }} }}')["data"]["machines"]
    placed = [m for m in machines if m["host"] == "text-agent"]
    assert placed, machines
    body = post_graphql(server, "mutation($id: ID!, $m: String) { reportMachineState(input: {machineId: $id, "
                                'host: "text-agent", state: SHUTOFF, message: $m}) { message } }',
                        {"id": placed[0]["id"], "m": "boom\x00\u202e\x1b[2J\nnext line"})
    assert body["data"]["reportMachineState"]["message"] == "boom\ufffd\ufffd\ufffd[2J\nnext line", body


@pytest.mark.parametrize("path", ["/labs/%ED%A0%80", "/labs/%00", "/labs/%E2%80%AE/edit", "/templates/%00/edit",
                                  "/machines/%ED%A0%80/console", "/labs/%00/delete", "/?phase=%ED%A0%80",
                                  "/audit?actor=%00&target=%ED%A0%80", "/events?lab=%00", "/login?next=%00",
                                  "/set-password?code=%ED%A0%80", "/setup?code=%00"])
def test_hostile_bytes_in_paths_and_query_strings_are_no_500(admin: httpx.Client, path: str) -> None:
    # Percent-decoding turns bytes that are no UTF-8 (a CESU-8 surrogate) into U+FFFD.
    with admin.stream("GET", path) as answer:
        assert answer.status_code < 500, (path, answer.status_code)

"""Attack: numbers nobody types, in every number field of every form, every paging query string
and every GraphQL Int argument. Each must be refused (422 naming the field, or
VALIDATION_FAILED with `extensions.field`) and leave the database as it was: before, `+-5` or
`²` crashed a form handler and a huge `offset` crashed MongoDB."""

from __future__ import annotations

import html
from collections.abc import Iterator

import httpx
import pytest

from kubekvm import validation
from tests.security.input_support import (
    HOSTILE_NUMBERS,
    admin_session,
    ensure_template,
    field_error,
    post_graphql,
    refused,
    snapshot,
)
from tests.support.processes import Server

LAB = "numbers-lab"
OUT_OF_RANGE_OFFSETS = ["-1", str(validation.OFFSET_MAX + 1), "99999999999999999999"]


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    ensure_template(server)
    body = post_graphql(server, 'mutation { createDeployment(input: {name: "numbers-lab", template: "sec-tiny", '
                                'replicas: 1, power: STOPPED}) { name } }')
    assert not body.get("errors"), body
    client = admin_session(server)
    yield client
    client.close()


def _template_form(name: str) -> dict[str, str]:
    return {"name": name, "title": "", "description": "", "os": "linux", "image": "tiny-linux.qcow2",
            "vcpus": "1", "memoryMib": "128", "diskGib": "1", "teachers": ""}


# (where the form posts, its valid fields, the number field under attack)
FORMS = [
    ("/labs", {"name": "numbers-new", "title": "", "template": "sec-tiny", "replicas": "1"}, "replicas"),
    (f"/labs/{LAB}/edit", {"title": "", "replicas": "1", "power": "stopped"}, "replicas"),
    *[("/templates", _template_form("numbers-tpl"), size) for size in ("vcpus", "memoryMib", "diskGib")],
    *[("/templates/sec-tiny/edit", _template_form("sec-tiny"), size) for size in ("vcpus", "memoryMib", "diskGib")],
]


@pytest.mark.parametrize(("action", "fields", "field"), FORMS, ids=[f"{a}:{f}" for a, _, f in FORMS])
def test_every_form_number_field_refuses_hostile_numbers(server: Server, admin: httpx.Client, action: str,
                                                         fields: dict[str, str], field: str) -> None:
    before = snapshot(server)
    for hostile in HOSTILE_NUMBERS:
        answer = admin.post(action, data={**fields, field: hostile})
        assert answer.status_code == 422, (hostile, answer.status_code, answer.text[:300])
        assert "whole number" in field_error(answer.text, field), hostile
        # The form comes back with what was typed, to be corrected.
        assert f'value="{html.escape(hostile, quote=True)}"' in answer.text, hostile
    assert snapshot(server) == before


@pytest.mark.parametrize(("action", "fields", "field", "value"), [
    ("/labs", FORMS[0][1], "replicas", "0"), ("/labs", FORMS[0][1], "replicas", "-5"),
    (f"/labs/{LAB}/edit", FORMS[1][1], "replicas", "201"),
    ("/templates", _template_form("numbers-tpl"), "vcpus", "65"),
    ("/templates/sec-tiny/edit", _template_form("sec-tiny"), "memoryMib", str(2**40)),
])
def test_form_numbers_out_of_range_are_refused_beside_the_field(server: Server, admin: httpx.Client, action: str,
                                                                fields: dict[str, str], field: str,
                                                                value: str) -> None:
    before = snapshot(server)
    answer = admin.post(action, data={**fields, field: value})
    assert answer.status_code == 422
    assert "between" in field_error(answer.text, field)
    assert snapshot(server) == before


def test_a_good_number_still_goes_through(admin: httpx.Client) -> None:
    answer = admin.post(f"/labs/{LAB}/edit", data={**FORMS[1][1], "replicas": "2"})
    assert answer.status_code == 303
    assert 'value="2"' in admin.get(f"/labs/{LAB}/edit").text


@pytest.mark.parametrize("path", ["/", "/labs", "/audit", "/events"])
def test_paging_query_strings_refuse_what_is_no_offset(admin: httpx.Client, path: str) -> None:
    for hostile in [*HOSTILE_NUMBERS, *OUT_OF_RANGE_OFFSETS]:
        answer = admin.get(path, params={"offset": hostile})
        assert answer.status_code == 422, (path, hostile, answer.status_code)
        assert "offset" in answer.text.lower()
    # A page past the end is no error: it is empty.
    assert admin.get("/audit", params={"offset": "500000"}).status_code == 200
    assert admin.get("/labs", params={"offset": str(validation.OFFSET_MAX)}).status_code == 200


INT_ARGUMENTS = [
    ("query($v: Int!) { deployments(offset: $v) { total } }", "offset", [-1, validation.OFFSET_MAX + 1, 2**31 - 1]),
    ("query($v: Int!) { deployments(limit: $v) { total } }", "limit", [0, -5, 1001, 2**31 - 1]),
    ("query($v: Int!) { auditLog(offset: $v) { total } }", "offset", [-1, 2**31 - 1]),
    ("query($v: Int!) { auditLog(limit: $v) { total } }", "limit", [0, 501]),
    ('mutation($v: Int!) { createDeployment(input: {name: "numbers-gql", template: "sec-tiny", replicas: $v}) '
     "{ name } }", "replicas", [0, -5, 201, 2**31 - 1]),
    (f'mutation($v: Int!) {{ updateDeployment(name: "{LAB}", input: {{replicas: $v}}) {{ name }} }}', "replicas",
     [0, 201, -(2**31)]),
    ('mutation($v: Int!) { createTemplate(input: {name: "numbers-gql", image: "tiny-linux.qcow2", vcpus: $v}) '
     "{ name } }", "vcpus", [0, 65, 2**31 - 1]),
    ('mutation($v: Int!) { updateTemplate(name: "sec-tiny", input: {memoryMib: $v}) { name } }', "memoryMib",
     [63, 2**31 - 1, -1]),
    ('mutation($v: Int!) { updateTemplate(name: "sec-tiny", input: {diskGib: $v}) { name } }', "diskGib", [0, 16385]),
    ('mutation($v: Int!) { registerHost(input: {name: "numbers-host", vcpus: $v, memoryMib: 2048, images: []}) '
     "{ name } }", "vcpus", [0, 4097]),
    ('mutation($v: Int!) { registerHost(input: {name: "numbers-host", vcpus: 2, memoryMib: $v, images: []}) '
     "{ name } }", "memoryMib", [0, 2**31 - 1]),
]


@pytest.mark.parametrize(("query", "field", "values"), INT_ARGUMENTS, ids=[f"{q.split('{')[1].split('(')[0].strip()}:{f}"
                                                                          for q, f, _ in INT_ARGUMENTS])
def test_every_graphql_int_argument_has_a_range_and_refuses_hostile_values(server: Server, admin: httpx.Client,
                                                                           query: str, field: str,
                                                                           values: list[int]) -> None:
    before = snapshot(server)
    for value in values:
        error = refused(post_graphql(server, query, {"v": value}), field=field)
        assert "between" in error["message"], error
    # Numbers as strings, and beyond 32 bits: GraphQL's own Int refuses them, naming the field too.
    for hostile in [*HOSTILE_NUMBERS, 99999999999999999999, 1.5, True]:
        refused(post_graphql(server, query, {"v": hostile}), field=field)
    assert snapshot(server) == before


def test_graphql_int_literals_out_of_range_name_their_field(server: Server, admin: httpx.Client) -> None:
    before = snapshot(server)
    refused(post_graphql(server, "{ deployments(offset: 99999999999999999999) { total } }"), field="offset")
    refused(post_graphql(server, '{ deployments(offset: "+-5") { total } }'), field="offset")
    refused(post_graphql(server, 'mutation { createDeployment(input: {name: "numbers-lit", template: "sec-tiny", '
                                 "replicas: 5000000000}) { name } }"), field="replicas")
    assert snapshot(server) == before


def test_a_host_report_with_a_negative_power_generation_is_refused(server: Server, admin: httpx.Client) -> None:
    machines = post_graphql(server, f'{{ machines(deployment: "{LAB}") {{ id }} }}')["data"]["machines"]
    before = snapshot(server)
    body = post_graphql(server, "mutation($id: ID!) { reportMachineState(input: {machineId: $id, host: \"nowhere\", "
                                "state: RUNNING, powerGeneration: -1}) { name } }", {"id": machines[0]["id"]})
    refused(body, field="powerGeneration")
    assert snapshot(server) == before

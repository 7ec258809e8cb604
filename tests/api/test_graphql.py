"""The GraphQL API over real HTTP and websocket, against `kubekvm serve` processes on SecantusDB.

The host side is played by these tests through the agent's own mutations
(registerHost, reportMachineState), as a host would send them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubekvm.graphql.schema import sdl
from tests.support.graphql import Subscriber, websocket_session
from tests.support.processes import Server

ROOT = Path(__file__).resolve().parents[2]

LAB_FIELDS = "name title template replicas power phase message generation running machineCount"


def data(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body or not body["errors"], body.get("errors")
    result: dict[str, Any] = body["data"]
    return result


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("errors"), f"expected an error, got {body}"
    first: dict[str, Any] = body["errors"][0]
    return first


def register_host(server: Server, name: str = "kvm1", images: tuple[str, ...] = ("tiny-linux.qcow2",)) -> None:
    data(server.graphql(
        "mutation($i: RegisterHostInput!) { registerHost(input: $i) { name ready } }",
        {"i": {"name": name, "vcpus": 4, "memoryMib": 8192, "images": list(images),
               "domainType": "test", "agentVersion": "tests"}}))


def ensure_tiny_template(server: Server) -> None:
    body = server.graphql("mutation { createTemplate(input: {name: \"tiny-linux\", title: \"Tiny\", "
                          "os: LINUX, image: \"tiny-linux.qcow2\", vcpus: 1, memoryMib: 128, diskGib: 1}) { name } }")
    if body.get("errors"):
        assert error_of(body)["extensions"]["code"] == "CONFLICT"


def machines(server: Server, lab: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = data(server.graphql(
        "query($d: String!) { machines(deployment: $d) { id name host desired observed powerGeneration resetGeneration } }",
        {"d": lab}))["machines"]
    return result


def report(server: Server, lab: str, state: str, *, only: set[str] | None = None, host: str = "kvm1") -> None:
    for m in machines(server, lab):
        if only is None or m["name"] in only:
            data(server.graphql(
                "mutation($i: MachineReportInput!) { reportMachineState(input: $i) { name observed } }",
                {"i": {"machineId": m["id"], "host": host, "state": state,
                       "powerGeneration": m["powerGeneration"]}}))


def lab(server: Server, name: str) -> dict[str, Any]:
    result: dict[str, Any] = data(server.graphql(
        f"query($n: String!) {{ deployment(name: $n) {{ {LAB_FIELDS} }} }}", {"n": name}))["deployment"]
    return result


def test_schema_file_matches_the_code() -> None:
    assert (ROOT / "schema.graphql").read_text() == sdl(), \
        "schema.graphql is stale: run `.venv/bin/kubekvm export-schema`"


def test_health_and_readiness(server: Server) -> None:
    import httpx

    assert httpx.get(f"{server.url}/healthz").text == "ok"
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"


def test_server_info_names_the_replica(server: Server) -> None:
    import socket

    info = data(server.graphql("{ serverInfo { version hostname database eventStream } }"))["serverInfo"]
    assert info["hostname"] == socket.gethostname()
    assert info["eventStream"] == "change-streams"


def test_full_lab_lifecycle_over_http(server: Server) -> None:
    ensure_tiny_template(server)
    register_host(server)
    created = data(server.graphql(
        f"mutation {{ createDeployment(input: {{name: \"life\", title: \"Redes 2025\", template: \"tiny-linux\", replicas: 3}}) {{ {LAB_FIELDS} }} }}"
    ))["createDeployment"]
    assert (created["phase"], created["machineCount"], created["title"]) == ("PENDING", 3, "Redes 2025")
    assert [m["host"] for m in machines(server, "life")] == ["kvm1"] * 3

    report(server, "life", "RUNNING")
    assert (lab(server, "life")["phase"], lab(server, "life")["running"]) == ("ACTIVE", 3)

    report(server, "life", "SHUTOFF")
    assert lab(server, "life")["phase"] == "INACTIVE"
    ids = [m["id"] for m in machines(server, "life")]
    started = data(server.graphql("mutation { startDeployment(name: \"life\") { phase generation } }"))["startDeployment"]
    assert started["phase"] == "PENDING"
    assert [m["id"] for m in machines(server, "life")] == ids  # the same machines, never re-made
    report(server, "life", "RUNNING")
    assert lab(server, "life")["phase"] == "ACTIVE"

    data(server.graphql("mutation { stopDeployment(name: \"life\") { phase } }"))
    assert {m["desired"] for m in machines(server, "life")} == {"STOPPED"}
    report(server, "life", "SHUTOFF")
    assert lab(server, "life")["phase"] == "INACTIVE"

    data(server.graphql("mutation { updateDeployment(name: \"life\", input: {replicas: 1, power: RUNNING}) { replicas } }"))
    assert [m["desired"] for m in machines(server, "life")] == ["RUNNING", "ABSENT", "ABSENT"]
    report(server, "life", "ABSENT", only={"life-2", "life-3"})
    assert [m["name"] for m in machines(server, "life")] == ["life-1"]

    reset = data(server.graphql("mutation { resetMachine(name: \"life-1\") { resetGeneration observed } }"))["resetMachine"]
    assert reset == {"resetGeneration": 1, "observed": "PENDING"}

    deleting = data(server.graphql("mutation { deleteDeployment(name: \"life\") { phase } }"))["deleteDeployment"]
    assert deleting["phase"] == "DELETING"
    report(server, "life", "ABSENT")
    gone = server.graphql("{ deployment(name: \"life\") { name } }")
    assert error_of(gone)["extensions"]["code"] == "NOT_FOUND"


def count_labs(server: Server) -> int:
    total: int = data(server.graphql("{ deployments { total } }"))["deployments"]["total"]
    return total


CREATE = "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }"
# A harmless change to a lab, made until a subscriber hears it (the proof it is subscribed).
RETITLE = "mutation($n: String!, $t: String!) { updateDeployment(name: $n, input: {title: $t}) { name } }"


@pytest.mark.parametrize(("field", "value", "code"), [
    ("name", "with space", "VALIDATION_FAILED"), ("name", "a;b", "VALIDATION_FAILED"),
    ("name", "$(reboot)", "VALIDATION_FAILED"), ("name", "../etc", "VALIDATION_FAILED"),
    ("name", "UPPER", "VALIDATION_FAILED"), ("name", "ñandú", "VALIDATION_FAILED"),
    ("name", "x" * 41, "VALIDATION_FAILED"), ("name", "", "VALIDATION_FAILED"),
    ("replicas", 0, "VALIDATION_FAILED"), ("replicas", -1, "VALIDATION_FAILED"),
    ("replicas", 10**9, "VALIDATION_FAILED"), ("replicas", "three", "VALIDATION_FAILED"),
    ("template", "no-such-template", "VALIDATION_FAILED"),
])
def test_bad_input_is_refused_with_a_code_and_nothing_written(server: Server, field: str, value: object, code: str) -> None:
    before = count_labs(server)
    good: dict[str, object] = {"name": "good-name", "template": "redes-neuronales", "replicas": 2}
    body = server.graphql(CREATE, {"i": {**good, field: value}})
    error = error_of(body)
    assert error["extensions"]["code"] == code
    if (isinstance(value, int | str) and field != "replicas") or isinstance(value, int):
        assert error["extensions"].get("field") == field, error
    assert error["message"]
    assert count_labs(server) == before
    assert data(server.graphql("{ machines(deployment: \"good-name\") { id } }"))["machines"] == []


def test_a_name_refused_for_its_form_suggests_the_valid_one(server: Server) -> None:
    body = server.graphql(CREATE, {"i": {"name": "Redes 2025", "template": "redes-neuronales", "replicas": 2}})
    assert error_of(body)["extensions"] == {"code": "VALIDATION_FAILED", "field": "name", "suggestion": "redes-2025"}
    assert "redes-2025" in error_of(body)["message"]


def test_machines_and_labs_say_since_when_they_are_in_their_state(server: Server) -> None:
    data(server.graphql(CREATE, {"i": {"name": "since-lab", "template": "redes-neuronales", "replicas": 1}}))
    lab_ = data(server.graphql('{ deployment(name: "since-lab") { phase phaseSince message } }'))["deployment"]
    (machine,) = data(server.graphql('{ machines(deployment: "since-lab") { since observedAt } }'))["machines"]
    assert lab_["phaseSince"] and machine["since"]
    assert lab_["phase"] == "PENDING" and lab_["message"].startswith("0/1 running, 1 being made — since-lab-1: ")


def test_every_bad_field_is_reported_at_once(server: Server) -> None:
    before = count_labs(server)
    body = server.graphql(CREATE, {"i": {"name": "Bad Name", "template": "no-such", "replicas": 0}})
    assert body["data"] is None
    fields = {e["extensions"]["field"]: e for e in body["errors"]}
    assert set(fields) == {"name", "replicas", "template"}, body["errors"]
    assert all(e["extensions"]["code"] == "VALIDATION_FAILED" and e["path"] == ["createDeployment"]
               for e in body["errors"])
    assert fields["name"]["extensions"]["suggestion"] == "bad-name"
    assert count_labs(server) == before
    template = server.graphql(
        "mutation { createTemplate(input: {name: \"T x\", os: LINUX, image: \"../x\", vcpus: 0, "
        "memoryMib: 1, diskGib: 1}) { name } }")
    assert {e["extensions"]["field"] for e in template["errors"]} == {"name", "image", "vcpus", "memoryMib"}
    data(server.graphql(CREATE, {"i": {"name": "all-at-once", "template": "redes-neuronales", "replicas": 1}}))
    limits = server.graphql('mutation { setUsagePolicy(name: "all-at-once", input: {idleMinutes: -1, '
                            'idleCpuPercent: 500}) { idleMinutes } }')
    assert {e["extensions"]["field"] for e in limits["errors"]} == {"idleMinutes", "idleCpuPercent"}
    host = server.graphql('mutation { registerHost(input: {name: "bad host", vcpus: 0, memoryMib: 1, images: []}) '
                          "{ name } }")
    assert {e["extensions"]["field"] for e in host["errors"]} == {"name", "vcpus", "memoryMib"}
    token = server.graphql('mutation { createHostToken(host: "bad host", label: "a\\u0000b") { token } }')
    assert {e["extensions"]["field"] for e in token["errors"]} == {"host", "label"}


def test_duplicate_name_is_conflict_and_missing_lab_is_not_found(server: Server) -> None:
    data(server.graphql(CREATE, {"i": {"name": "dup", "template": "redes-neuronales", "replicas": 2}}))
    body = server.graphql(CREATE, {"i": {"name": "dup", "template": "redes-neuronales", "replicas": 7}})
    assert error_of(body)["extensions"]["code"] == "CONFLICT"
    assert len(machines(server, "dup")) == 2
    missing = server.graphql("mutation { updateDeployment(name: \"nope\", input: {replicas: 2}) { name } }")
    assert error_of(missing)["extensions"]["code"] == "NOT_FOUND"
    template_change = server.graphql(
        "mutation { updateDeployment(name: \"dup\", input: {template: \"tecnologia-de-computadores\"}) { name } }")
    assert error_of(template_change)["extensions"] == {"code": "VALIDATION_FAILED", "field": "template"}
    in_use = server.graphql("mutation { deleteTemplate(name: \"redes-neuronales\") { name } }")
    assert error_of(in_use)["extensions"]["code"] == "CONFLICT"


def test_templates_crud(server: Server) -> None:
    created = data(server.graphql(
        "mutation { createTemplate(input: {name: \"ubuntu-22\", title: \"Ubuntu 22.04\", os: LINUX, "
        "image: \"ubuntu22.04.qcow2\", vcpus: 2, memoryMib: 2048, diskGib: 20}) { name vcpus } }"))
    assert created["createTemplate"] == {"name": "ubuntu-22", "vcpus": 2}
    updated = data(server.graphql("mutation { updateTemplate(name: \"ubuntu-22\", input: {memoryMib: 4096}) { memoryMib } }"))
    assert updated["updateTemplate"]["memoryMib"] == 4096
    bad = server.graphql("mutation { updateTemplate(name: \"ubuntu-22\", input: {image: \"../x\"}) { name } }")
    assert error_of(bad)["extensions"] == {"code": "VALIDATION_FAILED", "field": "image"}
    data(server.graphql("mutation { deleteTemplate(name: \"ubuntu-22\") { name } }"))
    assert error_of(server.graphql("{ template(name: \"ubuntu-22\") { name } }"))["extensions"]["code"] == "NOT_FOUND"


def test_deployments_filter_and_paging(server: Server) -> None:
    for n in ("page-a", "page-b", "page-c"):
        data(server.graphql(CREATE, {"i": {"name": n, "template": "redes-neuronales", "replicas": 1}}))
    page = data(server.graphql("{ deployments(phase: PENDING, offset: 1, limit: 1) { total items { name phase } } }"))
    assert page["deployments"]["items"][0]["phase"] == "PENDING"
    assert page["deployments"]["total"] >= 3
    assert data(server.graphql("{ deployments(phase: DELETING) { total } }"))["deployments"]["total"] == 0
    # The total is the same whether the page holds every lab or more follow it (counted apart,
    # also when asked for through a fragment).
    every = data(server.graphql("{ deployments(limit: 1000) { total items { name } } }"))["deployments"]
    assert every["total"] == len(every["items"]) >= 3
    one = data(server.graphql("{ deployments(limit: 1) { ...p } } fragment p on DeploymentPage { total items { name } }"))
    assert one["deployments"]["total"] == every["total"] and len(one["deployments"]["items"]) == 1


async def test_host_assignments_snapshot_then_changes(start_kubekvm: Callable[..., Server]) -> None:
    server = start_kubekvm()  # a database of its own: kvm-sub is the only host
    ensure_tiny_template(server)
    register_host(server, "kvm-sub")
    data(server.graphql(CREATE, {"i": {"name": "snap", "template": "tiny-linux", "replicas": 2}}))
    query = ("subscription($h: String!) { hostAssignments(host: $h) { kind cursor removed "
             "assignments { machineId vmName deployment index desired resetGeneration powerGeneration "
             "template { name image vcpus memoryMib diskGib os } } } }")
    async with websocket_session(server.ws_url, server.admin_token) as session:
        feed = Subscriber(session, query, h="kvm-sub")
        snapshot = (await feed.wait_for(lambda r: True))["hostAssignments"]
        assert snapshot["kind"] == "SNAPSHOT"
        assert sorted(a["vmName"] for a in snapshot["assignments"]) == ["snap-1", "snap-2"]
        first = snapshot["assignments"][0]
        assert first["template"] == {"name": "tiny-linux", "image": "tiny-linux.qcow2", "vcpus": 1,
                                     "memoryMib": 128, "diskGib": 1, "os": "linux"}
        assert (first["desired"], first["powerGeneration"], first["resetGeneration"]) == ("RUNNING", 1, 0)

        data(server.graphql(CREATE, {"i": {"name": "snap2", "template": "tiny-linux", "replicas": 1}}))
        change = await feed.wait_for(lambda r: any(
            a["vmName"] == "snap2-1" for a in r["hostAssignments"]["assignments"]))
        assert change["hostAssignments"]["kind"] == "CHANGE" and change["hostAssignments"]["cursor"]

        data(server.graphql("mutation($n: String!) { stopMachine(name: $n) { name } }", {"n": first["vmName"]}))
        stopped = await feed.wait_for(lambda r: any(
            a["vmName"] == first["vmName"] and a["desired"] == "STOPPED" for a in r["hostAssignments"]["assignments"]))
        entry = next(a for a in stopped["hostAssignments"]["assignments"] if a["vmName"] == first["vmName"])
        assert entry["powerGeneration"] == 2

        data(server.graphql("mutation { resetMachine(name: \"snap-2\") { name } }"))
        await feed.wait_for(lambda r: any(
            a["vmName"] == "snap-2" and a["resetGeneration"] == 1 for a in r["hostAssignments"]["assignments"]))

        # scale down and the host confirming removal: the machine leaves the host's feed
        data(server.graphql("mutation { updateDeployment(name: \"snap\", input: {replicas: 1}) { name } }"))
        await feed.wait_for(lambda r: any(
            a["vmName"] == "snap-2" and a["desired"] == "ABSENT" for a in r["hostAssignments"]["assignments"]))
        report(server, "snap", "ABSENT", only={"snap-2"}, host="kvm-sub")
        gone_id = next(a["machineId"] for a in snapshot["assignments"] if a["vmName"] == "snap-2")
        await feed.wait_for(lambda r: gone_id in r["hostAssignments"]["removed"])
        await feed.close()

    # a reconnecting agent with a cursor this process holds resumes without a snapshot
    async with websocket_session(server.ws_url, server.admin_token) as session:
        resumed = Subscriber(session, "subscription($h: String!, $c: String) { hostAssignments(host: $h, cursor: $c) { kind } }",
                             h="kvm-sub", c=change["hostAssignments"]["cursor"])
        first_batch = await resumed.wait_for(lambda r: True)
        assert first_batch["hostAssignments"]["kind"] == "CHANGE"
        await resumed.close()
    async with websocket_session(server.ws_url, server.admin_token) as session:
        stale = Subscriber(session, "subscription($h: String!, $c: String) { hostAssignments(host: $h, cursor: $c) { kind } }",
                           h="kvm-sub", c="not-a-cursor-this-server-knows")
        assert (await stale.wait_for(lambda r: True))["hostAssignments"]["kind"] == "SNAPSHOT"
        await stale.close()


async def test_deployment_events_cross_server_replicas(start_kubekvm: Callable[..., Server]) -> None:
    """Two server processes on one database: a mutation on one reaches a subscriber of the other."""
    first = start_kubekvm()
    second = start_kubekvm(database_name=first.database_name)
    data(first.graphql(CREATE, {"i": {"name": "across-probe", "template": "redes-neuronales", "replicas": 1}}))
    titles = itertools.count()
    async with websocket_session(second.ws_url, second.admin_token) as session:
        events = Subscriber(session, "subscription { deploymentEvents { kind lab deployment { phase } machine { name observed } } }")
        await events.until_live(lambda: data(first.graphql(RETITLE, {"n": "across-probe", "t": f"probe {next(titles)}"})),
                                lambda r: r["deploymentEvents"]["lab"] == "across-probe")
        data(first.graphql(CREATE, {"i": {"name": "across", "template": "redes-neuronales", "replicas": 2}}))
        lab_event = await events.wait_for(lambda r: r["deploymentEvents"]["kind"] == "LAB_CHANGED"
                                          and r["deploymentEvents"]["lab"] == "across")
        assert lab_event["deploymentEvents"]["deployment"]["phase"] == "PENDING"
        await events.wait_for(lambda r: r["deploymentEvents"]["kind"] == "MACHINE_CHANGED"
                              and r["deploymentEvents"]["machine"]["name"] == "across-2")
        await events.close()


async def test_deployment_events_for_one_lab_and_unknown_lab(server: Server) -> None:
    data(server.graphql(CREATE, {"i": {"name": "watched", "template": "redes-neuronales", "replicas": 1}}))
    async with websocket_session(server.ws_url, server.admin_token) as session:
        events = Subscriber(session, "subscription($n: String) { deploymentEvents(name: $n) { kind lab deployment { power } } }",
                            n="watched")
        titles = itertools.count()
        await events.until_live(lambda: data(server.graphql(RETITLE, {"n": "watched", "t": f"probe {next(titles)}"})),
                                lambda r: r["deploymentEvents"]["kind"] == "LAB_CHANGED")
        data(server.graphql(CREATE, {"i": {"name": "other", "template": "redes-neuronales", "replicas": 1}}))
        data(server.graphql("mutation { stopDeployment(name: \"watched\") { name } }"))
        await events.wait_for(lambda r: r["deploymentEvents"]["kind"] == "LAB_CHANGED"
                              and r["deploymentEvents"]["deployment"]["power"] == "STOPPED")
        assert {r["deploymentEvents"]["lab"] for r in events.results} == {"watched"}
        await events.close()
    async with websocket_session(server.ws_url, server.admin_token) as session:
        from gql import GraphQLRequest
        from gql.transport.exceptions import TransportQueryError
        with pytest.raises(TransportQueryError) as error:
            async for _ in session.subscribe(GraphQLRequest("subscription { deploymentEvents(name: \"nope\") { kind } }")):
                pass
        assert "NOT_FOUND" in str(error.value.errors)

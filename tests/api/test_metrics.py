"""`/metrics` of a real `kubekvm serve` after a lab's life (the host played through the agent's
own mutations), parsed with Prometheus' own parser: who may read it, that the figures moved,
that only one of two replicas exports the fleet's shared gauges, and that no label carries a
lab, a user or a request id. Also the request ids: echoed, sanitised, and in the JSON log."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_graphql import data, ensure_tiny_template, register_host, report
from tests.support.processes import Server
from tests.support.waiting import wait_until

LAB = f"metricslab{uuid.uuid4().hex[:6]}"
TEACHER = f"metricsteacher{uuid.uuid4().hex[:4]}"
REQUEST_ID = f"rid-{uuid.uuid4().hex[:12]}"

Samples = list[tuple[str, dict[str, str], float]]


def scrape(server: Server, token: str) -> Samples:
    answer = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(answer.text) for s in family.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, found, v in samples if n == name and all(found.get(k) == w for k, w in labels.items()))


def names(samples: Samples) -> set[str]:
    return {n for n, _, _ in samples}


@pytest.fixture(scope="module")
def replicas(start_kubekvm: Callable[..., Server]) -> tuple[Server, Server]:
    env = {"KUBEKVM_LOG_FORMAT": "json", "KUBEKVM_METRICS_LEASE": "600"}
    first = start_kubekvm(env=env, log_level="info")
    second = start_kubekvm(env=env, database_name=first.database_name)
    second.admin_token = first.admin_token
    return first, second


@pytest.fixture(scope="module")
def scrape_token(replicas: tuple[Server, Server]) -> str:
    made = data(replicas[0].graphql('mutation { createScrapeToken(label: "prometheus") { token apiToken { kind } } }'))
    assert made["createScrapeToken"]["apiToken"]["kind"] == "SCRAPE"
    token: str = made["createScrapeToken"]["token"]
    return token


def test_only_admins_and_scrape_tokens_read_metrics(replicas: tuple[Server, Server], scrape_token: str) -> None:
    server = replicas[0]
    anonymous = httpx.get(f"{server.url}/metrics")
    assert anonymous.status_code == 401
    teacher = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token_for(TEACHER)}"})
    assert teacher.status_code == 403
    assert "kubekvm_http_requests_total" in httpx.get(f"{server.url}/metrics", headers=server.admin_headers).text
    assert scrape(server, scrape_token)
    # A scrape token reads metrics and nothing else.
    refused = server.graphql("{ deployments { items { name } } }", token=scrape_token)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"  # type: ignore[index]


def test_a_lab_lifecycle_moves_the_figures(replicas: tuple[Server, Server], scrape_token: str) -> None:
    server, other = replicas
    before = scrape(server, scrape_token)
    ensure_tiny_template(server)
    register_host(server, "kvm-metrics")
    created = httpx.post(server.graphql_url, headers={**server.admin_headers, "X-Request-ID": REQUEST_ID}, json={
        "query": f'mutation {{ createDeployment(input: {{name: "{LAB}", template: "tiny-linux", replicas: 2}}) '
                 "{ name } }"}, timeout=30)
    assert created.headers["X-Request-ID"] == REQUEST_ID
    assert created.json()["data"]["createDeployment"]["name"] == LAB
    refused = server.graphql('mutation { createDeployment(input: {name: "Bad Name!", template: "tiny-linux", '
                             "replicas: 1}) { name } }")
    assert refused["errors"]
    report(server, LAB, "RUNNING", host="kvm-metrics")
    with httpx.Client(base_url=server.url) as browser:  # a failed sign-in, through the form
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text)
        assert csrf
        browser.post("/login", data={"name": TEACHER, "password": "wrong", "csrf_token": csrf.group(1)})
    httpx.get(f"{server.url}/labs/{LAB}", headers=server.admin_headers)
    httpx.get(f"{server.url}/no-such-page-{uuid.uuid4().hex}")

    # Each replica takes the `metrics` lease at its scrape: the first scraped holds it.
    after = scrape(server, scrape_token)
    on_other = scrape(other, scrape_token)
    assert value(after, "kubekvm_shared_state_exporter") == 1
    assert value(on_other, "kubekvm_shared_state_exporter") == 0
    assert "kubekvm_labs" not in names(on_other), "two replicas export the same shared gauges"

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("kubekvm_graphql_operations_total", type="mutation", field="createDeployment", outcome="ok") == 1
    assert grew("kubekvm_graphql_operations_total", type="mutation", field="createDeployment",
                outcome="VALIDATION_FAILED") == 1
    assert grew("kubekvm_graphql_operations_total", type="mutation", field="reportMachineState", outcome="ok") >= 2
    assert value(after, "kubekvm_labs", phase="Active") == 1
    assert value(after, "kubekvm_machines", desired="running", observed="running") == 2
    assert value(after, "kubekvm_hosts", state="ready") == 1
    assert value(after, "kubekvm_host_vcpus", host="kvm-metrics", kind="allocated") == 2
    assert grew("kubekvm_sign_ins_total", method="password", outcome="refused") == 1
    assert grew("kubekvm_audit_writes_total", outcome="ok") >= 1
    assert grew("kubekvm_http_requests_total", route="/graphql", method="POST", status="2xx") >= 4
    assert grew("kubekvm_http_requests_total", route="/labs/{name}", method="GET") == 1
    assert grew("kubekvm_http_requests_total", route="unmatched", method="GET", status="4xx") == 1
    assert value(after, "kubekvm_event_feed_healthy") == 1
    assert "kubekvm_event_feed_lag_seconds" in names(after)
    assert value(after, "process_resident_memory_bytes") > 0

    # Bounded labels only: nothing a user chose, nobody's name, no request id.
    for name, labels, _ in after + on_other:
        for label in labels.values():
            assert LAB not in label and TEACHER not in label and REQUEST_ID not in label, (name, labels)


def test_request_ids_are_echoed_made_and_logged(replicas: tuple[Server, Server]) -> None:
    server = replicas[0]
    made = httpx.get(f"{server.url}/healthz").headers["X-Request-ID"]
    assert len(made) == 32
    smuggled = httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "x" * 65}).headers["X-Request-ID"]
    assert smuggled != "x" * 65
    kept = httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "lb-1234"}).headers["X-Request-ID"]
    assert kept == "lb-1234"

    # JSON lines, one schema: the access line of that request carries its id and the actor.
    def logged() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in server.child.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == "lb-1234"]

    wait_until(lambda: bool(logged()), timeout=20, what="the request's log line")
    line = logged()[0]
    assert {"ts", "level", "logger", "event"} <= set(line)
    assert line["logger"] == "uvicorn.access"


def test_the_operations_page_shows_the_fleet(replicas: tuple[Server, Server]) -> None:
    """After the lifecycle above: one ready host, one Active lab, a refused sign-in."""
    server = replicas[0]
    page = httpx.get(f"{server.url}/operations", headers=server.admin_headers, timeout=30)
    assert page.status_code == 200
    assert re.search(r'id="hosts-ready">1<', page.text)
    assert re.search(r'<dt>Active</dt><dd>1</dd>', page.text)
    assert re.search(r'<dt>running</dt><dd>2</dd>', page.text)
    assert re.search(r'id="failed-sign-ins"><a [^>]*>[1-9]', page.text)
    teacher = httpx.get(f"{server.url}/operations", headers={"Authorization": f"Bearer {server.token_for(TEACHER)}"})
    assert teacher.status_code in (403, 404)
    overview = data(server.graphql("{ operationsOverview { hostsReady labsByPhase { key count } eventFeedHealthy } }"))
    assert overview["operationsOverview"]["hostsReady"] == 1
    assert {"key": "Active", "count": 1} in overview["operationsOverview"]["labsByPhase"]
    assert overview["operationsOverview"]["eventFeedHealthy"] is True

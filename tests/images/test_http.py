"""The image store over HTTP against a real server: an admin imports (raw body, as the page's
script sends it, and a plain multipart form, as the page without JS does), a host's agent pulls
with Range (a resumed pull), who may do which, a cut-off upload leaves nothing, and
`kubekvm image import` takes the same path."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.images import hostile
from tests.support.processes import VENV_BIN, Server


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-store")


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server], store_dir: Path) -> Server:
    return start_kubekvm(env={"KUBEKVM_IMAGE_STORE": str(store_dir), "KUBEKVM_SEED_TEMPLATES": "0"})


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile.qcow2(tmp_path_factory.mktemp("src") / "golden.qcow2", marker=b"golden-v1")


def stored(store_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(store_dir)) for p in store_dir.rglob("*") if p.is_file())


def upload(server: Server, path: Path, *, token: str | None = None, name: str | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/images", content=path.read_bytes(), timeout=60, headers={
        "Authorization": f"Bearer {token or server.admin_token}", "X-Image-Name": name or path.name,
        "Content-Type": "application/octet-stream"})


def test_import_then_pull_with_range(server: Server, image: Path, store_dir: Path) -> None:
    answer = upload(server, image)
    assert answer.status_code == 200, answer.text
    digest = answer.json()["digest"]
    data = image.read_bytes()
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    host = {"Authorization": f"Bearer {server.host_token('img-host')}"}
    whole = httpx.get(f"{server.url}/images/{digest}/file", headers=host, timeout=30)
    assert whole.status_code == 200 and whole.content == data
    rest = httpx.get(f"{server.url}/images/{digest}/file", timeout=30,
                     headers={**host, "Range": f"bytes={len(data) // 3}-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {len(data) // 3}-{len(data) - 1}/{len(data)}"
    assert rest.content == data[len(data) // 3:]
    listed = server.graphql("{ images { digest name size virtualSize sourceFormat importedBy } }")
    assert listed["data"]["images"][0]["digest"] == digest  # type: ignore[index]
    audit = server.graphql('{ auditLog(action: "importImage") { items { target outcome } } }')
    assert {"target": "image:golden.qcow2", "outcome": "ok"} in audit["data"]["auditLog"]["items"]  # type: ignore[index]


def test_who_may_import_and_pull(server: Server, image: Path) -> None:
    teacher = server.token_for("img-teacher", "teacher")
    refused = upload(server, image, token=teacher)
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    anonymous = httpx.post(f"{server.url}/images", content=b"x" * 1000, timeout=30)
    assert anonymous.status_code in (303, 401)
    digest = "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {teacher}"}, 403)):
        assert httpx.get(f"{server.url}/images/{digest}/file", headers=headers, timeout=30).status_code == status
    missing = httpx.get(f"{server.url}/images/sha256:{'0' * 64}/file", headers=server.admin_headers, timeout=30)
    assert missing.status_code == 404


def test_the_page_form_without_javascript_imports_too(server: Server, tmp_path: Path, store_dir: Path) -> None:
    server.user("img-admin", "admin")
    client = server.session("img-admin")
    try:
        page = client.get("/images")
        assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
        raw = hostile.raw_disk(tmp_path / "plain.img")
        csrf = client.headers["X-CSRF-Token"]
        del client.headers["X-CSRF-Token"]
        answer = client.post(f"/images?csrf_token={csrf}", files={"file": ("plain.img", raw.read_bytes())},
                             data={"format": ""})
        assert answer.status_code == 303, answer.text
        listed = client.get("/images").text
        assert "plain.img" in listed and "converted from raw" in listed
        # Without the token: refused, and nothing read into the store.
        before = stored(store_dir)
        refused = client.post("/images", files={"file": ("x.img", raw.read_bytes())})
        assert refused.status_code == 403
        assert stored(store_dir) == before
    finally:
        client.close()


def test_a_hostile_upload_is_refused_with_its_reason(server: Server, tmp_path: Path, store_dir: Path) -> None:
    before = stored(store_dir)
    answer = upload(server, hostile.with_backing_file(tmp_path / "evil.qcow2"))
    assert answer.status_code == 422
    assert answer.json()["reason"] == "BACKING_FILE" and "/etc/shadow" in answer.json()["message"]
    assert stored(store_dir) == before


def test_an_upload_cut_off_leaves_nothing(server: Server, image: Path, store_dir: Path) -> None:
    before = stored(store_dir)
    data = image.read_bytes()
    where = urlsplit(server.url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as raw:
        raw.sendall((f"POST /images HTTP/1.1\r\nHost: {where.netloc}\r\nAuthorization: Bearer {server.admin_token}"
                     f"\r\nX-Image-Name: cut.qcow2\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n").encode() + data[: len(data) // 2])
        raw.shutdown(socket.SHUT_WR)
        raw.recv(1024)  # the server noticed the cut (it answers, or closes)
    from tests.support.waiting import wait_until

    wait_until(lambda: stored(store_dir) == before, timeout=30, what="the staged upload to be removed")
    audit = server.graphql('{ auditLog(action: "importImage") { items { target outcome } } }')
    assert {"target": "image:cut.qcow2", "outcome": "VALIDATION_FAILED"} in audit["data"]["auditLog"]["items"]  # type: ignore[index]


def test_the_cli_imports_through_the_same_path(server: Server, tmp_path: Path, store_dir: Path) -> None:
    source = hostile.qcow2(tmp_path / "cli.qcow2", marker=b"from-the-cli")
    env = {**os.environ, "MONGODB_URI": server.database_uri, "KUBEKVM_DATABASE": server.database_name,
           "KUBEKVM_IMAGE_STORE": str(store_dir)}
    done = subprocess.run([str(VENV_BIN / "kubekvm"), "image", "import", str(source)], env=env,
                          capture_output=True, text=True, timeout=120)
    digest = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    assert done.returncode == 0 and f"imported: {digest}" in done.stdout, done.stderr
    evil = hostile.text_named_qcow2(tmp_path / "notes.qcow2")
    refused = subprocess.run([str(VENV_BIN / "kubekvm"), "image", "import", str(evil)], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "not a qcow2 image" in refused.stderr
    assert (store_dir / f"sha256-{digest.removeprefix('sha256:')}.qcow2").is_file()

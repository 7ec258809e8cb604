"""The forms over plain HTTP: as a browser without JavaScript posts them (POST, 303, flash),
and as htmx posts them (fragments, HX-Location), against a real server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pymongo
import pytest

from tests.pages.fake_host import FakeHost
from tests.support.processes import Server

HX = {"HX-Request": "true"}


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    # An admin's API token: no CSRF token needed (browsers never send a bearer token by themselves).
    with httpx.Client(base_url=server.url, timeout=60, headers=server.admin_headers) as client:
        yield client


def lab_form(name: str, replicas: str = "2", **extra: str) -> dict[str, str]:
    return {"name": name, "title": "", "template": "tiny-linux", "replicas": replicas} | extra


def test_plain_form_post_creates_the_lab_and_redirects(client: httpx.Client,
                                                       tiny_template: str) -> None:
    response = client.post("/labs", data=lab_form("plain-post", title="Plain post"))
    assert response.status_code == 303
    assert response.headers["location"] == "/labs/plain-post"
    page = client.get("/labs/plain-post")  # the flash cookie travels with the client
    assert page.status_code == 200
    assert "Lab plain-post created" in page.text
    assert "plain-post-2" in page.text
    again = client.get("/labs/plain-post")
    assert "Lab plain-post created" not in again.text  # shown once


def test_plain_form_errors_keep_the_input(client: httpx.Client, tiny_template: str) -> None:
    response = client.post("/labs", data=lab_form("Bad Name", replicas="0", title="<b>x</b>"))
    assert response.status_code == 422
    assert "<html" in response.text  # a whole page: there is no htmx to swap a fragment
    assert 'value="Bad Name"' in response.text
    assert 'value="0"' in response.text
    assert 'value="&lt;b&gt;x&lt;/b&gt;"' in response.text  # escaped, not markup
    assert 'id="name-error"' in response.text and 'id="replicas-error"' in response.text
    assert client.get("/labs/bad-name").status_code == 404

    taken = client.post("/labs", data=lab_form("plain-dup"))
    assert taken.status_code == 303
    again = client.post("/labs", data=lab_form("plain-dup"))
    assert again.status_code == 422
    assert "already exists" in again.text

    words = client.post("/labs", data=lab_form("plain-words", replicas="many"))
    assert "Replicas must be a whole number" in words.text


def test_every_bad_field_gets_its_message_at_once(client: httpx.Client, tiny_template: str) -> None:
    lab = client.post("/labs", data=lab_form("Redes 2025", replicas="0", title="a\x00b", template=""))
    assert lab.status_code == 422
    for field in ("name", "replicas", "title", "template"):
        assert f'id="{field}-error"' in lab.text, field
    assert "Try: redes-2025" in lab.text
    user = client.post("/users", data={"name": "x y", "role": "nobody", "password": "short"})
    assert user.status_code == 422
    for field in ("name", "role", "password"):
        assert f'id="{field}-error"' in user.text, field
    template = client.post("/templates", data={"name": "Bad", "title": "", "description": "", "os": "linux",
                                                "image": "x.img", "vcpus": "0", "memoryMib": "64", "diskGib": "0"})
    assert template.status_code == 422
    for field in ("name", "image", "vcpus", "diskGib"):
        assert f'id="{field}-error"' in template.text, field


def test_htmx_gets_fragments_and_a_client_side_redirect(client: httpx.Client,
                                                        tiny_template: str) -> None:
    bad = client.post("/labs", data=lab_form("a;b"), headers=HX)
    assert bad.status_code == 422
    assert bad.text.lstrip().startswith('<form id="lab-form"')
    assert "<html" not in bad.text

    good = client.post("/labs", data=lab_form("hx-post"), headers=HX)
    assert good.status_code == 200
    assert json.loads(good.headers["HX-Location"]) == {"path": "/labs/hx-post"}
    assert "kubekvm_flash" in good.cookies

    card = client.post("/labs/hx-post/stop", headers={**HX, "HX-Target": "lab-hx-post"})
    assert card.text.lstrip().startswith('<article class="card lab-card" id="lab-hx-post"')
    assert 'hx-swap-oob="innerHTML"' in card.text and "Stopping every machine" in card.text

    refused = client.post("/machines/nope-1/start", headers=HX)
    assert refused.status_code == 404
    assert refused.headers["HX-Reswap"] == "none"
    assert "There is no machine named" in refused.text


def test_delete_needs_the_typed_name_while_machines_run(client: httpx.Client, server: Server,
                                                        fake_host: FakeHost,
                                                        tiny_template: str) -> None:
    assert client.post("/labs", data=lab_form("running-lab")).status_code == 303
    fake_host.converge("running-lab")
    assert "Type the lab's name" in client.get("/labs/running-lab/delete").text

    # Posting straight to the endpoint does not skip the question.
    refused = client.post("/labs/running-lab/delete", data={})
    assert refused.status_code == 422
    assert "2 machine(s) of this lab are running" in refused.text
    wrong = client.post("/labs/running-lab/delete", data={"confirm": "running"})
    assert wrong.status_code == 422
    assert client.get("/labs/running-lab").status_code == 200

    done = client.post("/labs/running-lab/delete", data={"confirm": "running-lab"})
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert "Deleting…" in client.get("/labs/running-lab").text
    fake_host.converge("running-lab")
    assert client.get("/labs/running-lab").status_code == 404


def test_machine_buttons_and_reset_confirmation_without_js(client: httpx.Client,
                                                           fake_host: FakeHost,
                                                           tiny_template: str) -> None:
    assert client.post("/labs", data=lab_form("machine-buttons", replicas="1")).status_code == 303
    fake_host.converge("machine-buttons")
    stop = client.post("/machines/machine-buttons-1/stop", data={"next": "/labs/machine-buttons"})
    assert stop.status_code == 303 and stop.headers["location"] == "/labs/machine-buttons"
    assert "Stopping machine-buttons-1" in client.get("/labs/machine-buttons").text

    # Without JavaScript there is no confirm() dialog: a page asks instead.
    ask = client.post("/machines/machine-buttons-1/reset", data={"next": "/labs/machine-buttons"})
    assert ask.status_code == 200 and "whatever the student saved on it is lost" in ask.text
    reset = client.post("/machines/machine-buttons-1/reset",
                        data={"confirmed": "yes", "next": "https://elsewhere.example/"})
    assert reset.status_code == 303 and reset.headers["location"] == "/"  # never off-site
    assert "reset requested" in client.get("/labs/machine-buttons").text


def test_templates_form_and_in_use_protection(client: httpx.Client, tiny_template: str) -> None:
    bad = client.post("/templates", data={"name": "x y", "image": "nope", "os": "linux",
                                          "vcpus": "one", "memoryMib": "128", "diskGib": "1"})
    assert bad.status_code == 422
    for field in ("name", "image", "vcpus"):
        assert f'id="{field}-error"' in bad.text
    made = client.post("/templates", data={"name": "extra", "title": "Extra", "image": "extra.qcow2",
                                           "os": "windows", "vcpus": "2", "memoryMib": "2048",
                                           "diskGib": "20", "description": ""})
    assert made.status_code == 303
    listing = client.get("/templates").text
    assert "Extra" in listing and "2 GiB" in listing

    form = client.get("/templates/extra/edit").text
    assert 'value="extra.qcow2"' in form and "keep the template as it was" in form
    wrong = client.post("/templates/extra/edit", data={
        "title": "Extra", "description": "", "os": "windows", "image": "extra.qcow2",
        "vcpus": "99", "memoryMib": "2048", "diskGib": "20"})
    assert wrong.status_code == 422 and 'id="vcpus-error"' in wrong.text
    assert 'value="99"' in wrong.text
    saved = client.post("/templates/extra/edit", data={
        "title": "Extra, bigger", "description": "More room", "os": "windows",
        "image": "extra.qcow2", "vcpus": "4", "memoryMib": "4096", "diskGib": "20"})
    assert saved.status_code == 303
    listing = client.get("/templates").text
    assert "Extra, bigger" in listing and "4 GiB" in listing and "Template extra saved" in listing

    assert client.post("/labs", data=lab_form("keeps-tiny", replicas="1")).status_code == 303
    refused = client.post("/templates/tiny-linux/delete")
    assert refused.status_code == 303
    assert "is used by lab(s)" in client.get("/templates").text
    assert client.post("/templates/extra/delete").status_code == 303
    assert "Extra" not in client.get("/templates").text


def test_unknown_things_are_404_pages(client: httpx.Client) -> None:
    for path in ("/labs/nope", "/labs/nope/edit", "/templates/nope/edit"):
        response = client.get(path)
        assert response.status_code == 404
        assert "Not found" in response.text
    assert client.post("/machines/x/explode").status_code in (303, 404)


def test_empty_states_explain_what_to_do(start_kubekvm: Callable[..., Server]) -> None:
    bare = start_kubekvm(env={"KUBEKVM_SEED_TEMPLATES": "0"})
    with httpx.Client(base_url=bare.url, timeout=60, headers=bare.admin_headers) as client:
        labs = client.get("/").text
        assert "No labs yet" in labs and "gives every student" in labs and 'href="/new-lab"' in labs
        assert "No lab is <strong>Failed</strong>" in client.get("/?phase=Failed").text
        form = client.get("/new-lab").text
        assert "There are no templates yet" in form and 'href="/templates/new"' in form
        refused = client.post("/labs", data=lab_form("no-template"))
        assert refused.status_code == 422 and "There is no template named" in refused.text
        assert "No host has registered yet" in client.get("/hosts").text
    bare.stop()


def test_a_template_restricted_to_some_teachers(client: httpx.Client, server: Server) -> None:
    made = client.post("/templates", data={"name": "only-ana", "title": "Only Ana", "image": "ana.qcow2",
                                           "os": "linux", "vcpus": "1", "memoryMib": "256", "diskGib": "2",
                                           "description": "", "teachers": "ana-teacher"})
    assert made.status_code == 303
    assert 'value="ana-teacher"' in client.get("/templates/only-ana/edit").text
    for name, sees in (("ana-teacher", True), ("luis-teacher", False)):
        headers = {"Authorization": f"Bearer {server.token_for(name, 'teacher')}"}
        with httpx.Client(base_url=server.url, timeout=60, headers=headers) as teacher:
            assert ("only-ana" in teacher.get("/templates").text) is sees
            assert ('value="only-ana"' in teacher.get("/new-lab").text) is sees
            made = teacher.post("/labs", data=lab_form(f"{name}-lab", replicas="1", template="only-ana"))
            assert made.status_code == (303 if sees else 422)
            # Teachers read templates; only admins change them.
            assert teacher.post("/templates/only-ana/delete", headers=HX).status_code == 403


def test_the_hosts_page_shows_a_quiet_host_not_ready_until_it_beats_again(client: httpx.Client,
                                                                           server: Server) -> None:
    # No images: nothing this module creates is placed on it while it is ready.
    quiet = FakeHost(server, name="quiet-host", images=()).register()
    with pymongo.MongoClient(server.database_uri, tz_aware=True, timeoutMS=30_000) as mongo:
        hosts = mongo[server.database_name]["hosts"]
        # As if its agent had last beaten longer ago than the server's host timeout (whatever the
        # test servers are given: tests/support/processes.py).
        quiet_for = float(server.env["KUBEKVM_HOST_TIMEOUT"]) + 10
        hosts.update_one({"name": quiet.name},
                         {"$set": {"last_heartbeat": datetime.now(UTC) - timedelta(seconds=quiet_for)}})

        def badge() -> str:
            page = client.get("/hosts").text
            card = page[page.index('id="host-quiet-host"'):]
            return card[card.index('class="badge'):].split(">", 1)[1].split("<", 1)[0]

        assert badge() == "not ready"
        quiet.heartbeat()
        assert badge() == "ready"

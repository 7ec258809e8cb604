"""Post/Redirect/Get everywhere (issue 15): every form's success answers 303 to the page that
shows the result (or, with htmx, HX-Location there), so the address bar never keeps a POST's URL
and a reload never posts again. The test walks every POST route the pages declare: a new form
without a case here fails it. One-time secrets (tokens, set-password links) reach that page once
(`kubekvm.pages.reveal`): a reload shows the page without them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from kubekvm.config import Settings
from kubekvm.pages import routes
from tests.images import hostile
from tests.pages.fake_host import FakeHost, data
from tests.support.processes import Server

# POST routes that are not forms a person submits, and why.
NOT_FORMS = {
    "/machines/{name}/console/ticket": "JSON for the console's script, which opens the websocket with it",
    "/images": "the image upload, posted by its script with progress; its plain-form success is `done` "
               "(tests/images)",
    "/setup": "open only while no admin exists (the tests' servers start with one); success is `_go` to /",
    "/labs/{name}/roster/group": "needs a directory (LDAP, tests/identity); success is `_back` to the roster",
}


def _paths() -> set[str]:
    return {r.path for r in routes(settings=Settings()) if isinstance(r, Route) and "POST" in (r.methods or ())}


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    server.user("prg-admin", "admin")
    client = server.session("prg-admin")
    yield client
    client.close()


def redirected(answer: httpx.Response, to: str) -> str:
    """The answer is a 303 to `to` (a page that GET answers); returns what that page shows."""
    assert answer.status_code == 303, (answer.status_code, answer.text[:300])
    assert answer.headers["location"] == to
    page = answer.next_request
    assert page is not None and page.method == "GET"
    return str(answer.headers["location"])


def test_every_post_route_redirects_to_the_page_showing_the_result(
        server: Server, admin: httpx.Client, fake_host: FakeHost, tiny_template: str, tmp_path: Path) -> None:
    seen: set[str] = set()

    def post(route: str, path: str, form: dict[str, str] | None = None, *, to: str,
             client: httpx.Client = admin) -> httpx.Response:
        seen.add(route)
        answer = client.post(path, data=form or {})
        redirected(answer, to)
        shown = client.get(to.split("#")[0])
        assert shown.status_code == 200, (to, shown.status_code)
        return shown

    post("/labs", "/labs", {"name": "prg-lab", "title": "", "template": tiny_template, "replicas": "1"},
         to="/labs/prg-lab")
    post("/labs/{name}/edit", "/labs/prg-lab/edit", {"title": "PRG", "replicas": "1", "power": "running"},
         to="/labs/prg-lab")
    post("/labs/{name}/stop", "/labs/prg-lab/stop", {"next": "/labs/prg-lab"}, to="/labs/prg-lab")
    post("/labs/{name}/start", "/labs/prg-lab/start", {"next": "/labs/prg-lab"}, to="/labs/prg-lab")
    fake_host.converge("prg-lab")
    post("/machines/{name}/{action}", "/machines/prg-lab-1/stop", {"next": "/labs/prg-lab"}, to="/labs/prg-lab")
    post("/machines/{name}/{action}", "/machines/prg-lab-1/reset", {"next": "/my", "confirmed": "yes"}, to="/my")
    # A reset starts the machine: only a stopped one can be published.
    data(server.graphql('mutation { stopMachine(name: "prg-lab-1") { name } }'))
    fake_host.converge("prg-lab")
    shown = post("/machines/{name}/publish", "/machines/prg-lab-1/publish", {"note": "prg", "newTemplate": ""},
                 to="/labs/prg-lab/version")
    assert "Publishing prg-lab-1" in shown.text
    post("/labs/{name}/roster", "/labs/prg-lab/roster", {"students": "prg-stu"}, to="/labs/prg-lab#roster")
    post("/labs/{name}/usage", "/labs/prg-lab/usage", {"idleMinutes": "", "idleCpuPercent": "", "maxRunMinutes": "",
                                                       "quotaHours": "10"}, to="/labs/prg-lab#usage")
    post("/labs/{name}/usage/{student}/grant", "/labs/prg-lab/usage/prg-stu/grant", {"hours": "2"},
         to="/labs/prg-lab#usage")
    post("/labs/{name}/timetable", "/labs/prg-lab/timetable", {
        "timeZone": "Europe/Madrid", "leadMinutes": "5", "slots": "mon 09:00-11:00", "sessions": "",
        "closures": "", "endsOn": ""}, to="/labs/prg-lab#timetable")

    # A set-password link: shown once on its own page, which a reload leaves for the lab.
    link_page = "/labs/prg-lab/roster/prg-stu/link"
    shown = post("/labs/{name}/roster/{student}/link", link_page, to=link_page)
    link = re.search(r'<code class="secret">([^<]+)</code>', shown.text)
    assert link and "/set-password?code=" in link.group(1)
    assert admin.get(link_page).headers["location"] == "/labs/prg-lab#roster"
    code = link.group(1).split("code=")[1].replace("&amp;", "&")
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        form = anonymous.get(f"/set-password?code={code}").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf
        post("/set-password", "/set-password", {"code": code, "password": "a-long-password-1",
                                                "again": "a-long-password-1", "csrf_token": csrf.group(1)},
             to="/login", client=anonymous)

    post("/users", "/users", {"name": "prg-teacher", "role": "teacher", "password": ""}, to="/users")
    shown = post("/users/{name}/link", "/users/prg-teacher/link", to="/users")
    assert 'id="password-link"' in shown.text
    assert 'id="password-link"' not in admin.get("/users").text  # once
    post("/users/{name}/sessions/end", "/users/prg-teacher/sessions/end", to="/users")
    shown = post("/users/{name}/disable", "/users/prg-teacher/disable", {"back": "role=teacher"},
                 to="/users?role=teacher")
    assert "prg-teacher is disabled" in shown.text
    post("/users/{name}/enable", "/users/prg-teacher/enable", {"back": "role=teacher"}, to="/users?role=teacher")
    post("/users/{name}/role", "/users/prg-teacher/role", {"role": "student"}, to="/users")
    post("/users/{name}/delete", "/users/prg-teacher/delete", {}, to="/users")

    shown = post("/account/tokens", "/account/tokens", {"label": "prg"}, to="/account")
    assert 'id="new-token"' in shown.text
    assert 'id="new-token"' not in admin.get("/account").text
    tokens = data(server.graphql("{ apiTokens(everyone: true) { id label owner } }"))["apiTokens"]
    made = next(t for t in tokens if t["label"] == "prg" and t["owner"] == "prg-admin")
    post("/account/tokens/{id}/revoke", f"/account/tokens/{made['id']}/revoke", {"next": "/account"}, to="/account")
    shown = post("/hosts/tokens", "/hosts/tokens", {"host": "prg-host", "label": ""}, to="/hosts")
    assert 'id="new-token"' in shown.text
    assert 'id="new-token"' not in admin.get("/hosts").text

    template = {"name": "prg-tpl", "title": "", "description": "", "os": "linux", "image": "tiny-linux.qcow2",
                "vcpus": "1", "memoryMib": "128", "diskGib": "1", "teachers": ""}
    post("/templates", "/templates", template, to="/templates")
    post("/templates/{name}/edit", "/templates/prg-tpl/edit", {**template, "title": "PRG"}, to="/templates")
    # Versions: v1 and v2 published from the store, a lab on v1 moved to v2, then v1 retired.
    versions = "/templates/prg-tpl/versions"
    first, second = (server.import_image(hostile.qcow2(tmp_path / f"prg-{n}.qcow2", marker=n.encode()))
                     for n in ("v1", "v2"))
    shown = post("/templates/{name}/versions", versions, {"digest": first, "note": "first"}, to=versions)
    assert "Published v1 of prg-tpl" in shown.text
    data(server.graphql('mutation { createDeployment(input: {name: "prg-ver", template: "prg-tpl", replicas: 1, '
                        "power: STOPPED}) { name } }"))
    post("/templates/{name}/versions", versions, {"digest": second, "note": ""}, to=versions)
    shown = post("/labs/{name}/version", "/labs/prg-ver/version", {"version": "2"}, to="/labs/prg-ver/version")
    assert "Lab prg-ver now uses v2" in shown.text
    data(server.graphql('mutation { resetMachine(name: "prg-ver-1") { name } }'))
    shown = post("/templates/{name}/versions/{number}/retire", f"{versions}/1/retire", to=versions)
    assert "Retired v1 of prg-tpl" in shown.text
    kept = data(server.graphql('{ template(name: "prg-tpl") { versions { number retired } } }'))["template"]
    assert kept["versions"] == [{"number": 1, "retired": True}, {"number": 2, "retired": False}]
    post("/labs/{name}/delete", "/labs/prg-ver/delete", {"confirm": "prg-ver"}, to="/")
    post("/templates/{name}/delete", "/templates/prg-tpl/delete", to="/templates")
    post("/labs/{name}/delete", "/labs/prg-lab/delete", {"confirm": "prg-lab"}, to="/")

    server.user("prg-pw", "teacher", password="first-password-1")
    teacher = server.session("prg-pw")
    try:
        post("/account/password", "/account/password", {"current": "first-password-1", "password": "second-password-2",
                                                        "again": "second-password-2"}, to="/account", client=teacher)
        post("/logout", "/logout", to="/login", client=teacher)
    finally:
        teacher.close()
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', anonymous.get("/login").text)
        assert csrf
        post("/login", "/login", {"name": "prg-pw", "password": "second-password-2", "next": "/",
                                  "csrf_token": csrf.group(1)}, to="/", client=anonymous)

    assert seen | set(NOT_FORMS) == _paths(), f"POST routes without a case: {sorted(_paths() - seen - set(NOT_FORMS))}"


def test_htmx_forms_navigate_with_hx_location(admin: httpx.Client, tiny_template: str) -> None:
    hx = {"HX-Request": "true"}
    made = admin.post("/labs", data={"name": "prg-hx", "title": "", "template": tiny_template, "replicas": "1"},
                      headers=hx)
    assert made.headers["HX-Location"] == '{"path": "/labs/prg-hx"}'
    edited = admin.post("/labs/prg-hx/edit", data={"title": "X", "replicas": "1", "power": "running"}, headers=hx)
    assert edited.headers["HX-Location"] == '{"path": "/labs/prg-hx"}'
    deleted = admin.post("/labs/prg-hx/delete", data={"confirm": "prg-hx"}, headers=hx)
    assert deleted.headers["HX-Location"] == '{"path": "/"}'


def test_a_secret_cookie_from_someone_else_or_forged_is_not_shown(server: Server, admin: httpx.Client) -> None:
    admin.cookies.set("kubekvm_reveal", "forged.value.sig", path="/account")
    assert 'id="new-token"' not in admin.get("/account").text



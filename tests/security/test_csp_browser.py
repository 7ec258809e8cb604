"""The Content-Security-Policy in Chromium (issue 11, item 9): every page, the console and the
GraphQL explorer included, runs under the policy the server sends without one violation, as an
admin, a teacher, a student and someone not signed in; the htmx swaps and live streams work
under it. A violation shows as a `securitypolicyviolation` event (recorded by a script Playwright
adds to every document, outside the page's policy) or a console message about the policy.

The test first proves it can see a violation: an inline script added to a page is refused and
reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.images import hostile
from tests.pages.conftest import browser, sign_in
from tests.pages.fake_host import FakeHost, data
from tests.support.csp import RECORD, violations
from tests.support.processes import Server

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the fixture: Chromium for this module

TEMPLATE = ('mutation { createTemplate(input: {name: "tiny-linux", title: "Tiny Linux", os: LINUX, '
            'image: "tiny-linux.qcow2", vcpus: 1, memoryMib: 128, diskGib: 1}) { name } }')
LAB = "csp-lab"


@pytest.fixture(scope="module")
def csp_server(start_kubekvm: Any) -> Server:
    # The console page gives up on a host that never dials in after this long (seconds).
    server = start_kubekvm(env={"KUBEKVM_CONSOLE_CONNECT_TIMEOUT": "2"})
    data(server.graphql(TEMPLATE))
    host = FakeHost(server).register()
    server.user("csp-teacher", "teacher")
    server.user("csp-student", "student")
    teacher = server.token_for("csp-teacher")
    data(server.graphql("mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
                        {"i": {"name": LAB, "template": "tiny-linux", "replicas": 2}}, token=teacher))
    data(server.graphql("mutation($n: String!, $s: [String!]!) { setRoster(name: $n, students: $s) { unbound } }",
                        {"n": LAB, "s": ["csp-student"]}, token=teacher))
    host.converge(LAB)
    return server


class Watched:
    """A signed-in tab that collects every policy violation of every document it shows."""

    def __init__(self, browser: Any, server: Server, who: str | None) -> None:
        self.context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
        self.context.add_init_script(RECORD)
        self.tab = self.context.new_page()
        self.seen: list[str] = []
        self.tab.on("console", self._console)
        if who is not None:
            sign_in(self.tab, who, server.passwords[who])

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.seen.append(f"console: {message.text}")

    def collect(self) -> None:
        self.seen += violations(self.tab)

    def visit(self, path: str) -> None:
        self.tab.goto(path)
        self.tab.wait_for_load_state("networkidle")
        if path == "/graphql":  # GraphiQL has replaced its "Loading…" with its editors
            expect(self.tab.locator(".graphiql-execute-button")).to_be_visible(timeout=30_000)
        self.collect()

    def close(self) -> list[str]:
        self.context.close()
        return self.seen


def test_the_test_sees_a_violation(browser: Any, csp_server: Server) -> None:
    watched = Watched(browser, csp_server, None)
    watched.visit("/login")
    watched.tab.evaluate("""() => {
        const script = document.createElement('script');
        script.textContent = 'window.injected = true';
        document.body.appendChild(script);
        const div = document.createElement('div');
        div.setAttribute('onclick', 'window.clicked = true');
        document.body.appendChild(div);
        div.click();
    }""")
    watched.tab.wait_for_function("window.__violations.length >= 2")
    watched.collect()
    assert watched.tab.evaluate("window.injected === undefined && window.clicked === undefined")
    seen = watched.close()
    assert any("script-src" in v for v in seen), seen


def test_no_page_violates_the_policy(browser: Any, csp_server: Server) -> None:
    server = csp_server
    machines = data(server.graphql("query($d: String!) { machines(deployment: $d) { name student } }",
                                   {"d": LAB}))["machines"]
    theirs = next(m["name"] for m in machines if m["student"] == "csp-student")
    server.user("csp-admin", "admin")
    problems: list[str] = []

    anonymous = Watched(browser, server, None)
    for path in ("/login", "/setup?code=wrong", "/set-password?code=wrong", "/labs"):
        anonymous.visit(path)
    problems += anonymous.close()

    admin = Watched(browser, server, "csp-admin")
    for path in ("/", "/labs?phase=Active", "/new-lab", f"/labs/{LAB}", f"/labs/{LAB}/edit", f"/labs/{LAB}/delete",
                 "/templates", "/templates/new", "/templates/tiny-linux/edit", "/hosts", "/users", "/audit",
                 "/server", "/account", "/labs/no-such-lab", "/graphql", "/images", "/templates/tiny-linux/versions",
                 f"/labs/{LAB}/version"):
        admin.visit(path)
    # The Images page's script: the file goes up as the raw body (XHR, progress bar), and the
    # page comes back listing it.
    admin.visit("/images")
    image = hostile.qcow2(Path(server.env["KUBEKVM_IMAGE_STORE"]).parent / f"csp-{server.database_name}.qcow2")
    admin.tab.set_input_files("#image-file", str(image))
    admin.tab.get_by_role("button", name="Import").click()
    expect(admin.tab.locator("#images")).to_contain_text(image.name, timeout=30_000)
    expect(admin.tab.locator("#flash")).to_contain_text("Imported")
    image.unlink()
    admin.collect()
    # An htmx form answered with its messages (a swap), then the lab page's live stream.
    admin.visit("/new-lab")
    admin.tab.get_by_label("Name", exact=True).fill("Bad Name")
    admin.tab.get_by_role("button", name="Create lab").click()
    expect(admin.tab.locator("#name-error")).to_contain_text("lowercase letters")
    admin.collect()
    problems += admin.close()

    teacher = Watched(browser, server, "csp-teacher")
    teacher.visit(f"/labs/{LAB}")
    problems += teacher.close()

    student = Watched(browser, server, "csp-student")
    student.visit("/my")
    # The console: noVNC loads, asks for a ticket, opens its websocket and shows the outcome
    # (no agent dials in here, so the host is reported unreachable).
    student.tab.goto(f"/machines/{theirs}/console")
    expect(student.tab.locator("body")).not_to_have_attribute("data-state", "connecting", timeout=20_000)
    expect(student.tab.locator("#console-status")).not_to_have_text("Connecting…")
    student.collect()
    problems += student.close()

    assert not problems, problems

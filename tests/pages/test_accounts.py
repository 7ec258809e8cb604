"""Accounts in Chromium: signing in (and being refused, and throttled), teachers kept to their own
labs, a student's "My VMs", and forms that come without the session's CSRF token."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.pages.conftest import sign_in
from tests.pages.fake_host import FakeHost, data
from tests.support.processes import Server

pytestmark = pytest.mark.browser

CREATE = "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }"
ROSTER = "mutation($n: String!, $s: [String!]!) { setRoster(name: $n, students: $s) { unbound } }"
STUDENT_PASSWORD = "student-one-password"


@pytest.fixture(scope="module")
def class_lab(server: Server, fake_host: FakeHost, tiny_template: str) -> str:
    """Teacher ta's lab of two machines, one for each of stud1 and stud2."""
    token = server.token_for("ta", "teacher")
    data(server.graphql(CREATE, {"i": {"name": "class-a", "template": "tiny-linux", "replicas": 2}}, token=token))
    data(server.graphql(ROSTER, {"n": "class-a", "s": ["stud1", "stud2"]}, token=token))
    # Rostered students have no password until someone sets one: here, an admin.
    data(server.graphql('mutation($p: String!) { setUserPassword(name: "stud1", password: $p) { name } }',
                        {"p": STUDENT_PASSWORD}))
    fake_host.converge("class-a")
    return "class-a"


def test_sign_in_and_out(anonymous_tab: Any, server: Server) -> None:
    password = server.user("signer", "teacher")
    anonymous_tab.goto("/templates")
    expect(anonymous_tab).to_have_url(re.compile(r"/login\?next=/templates$"))
    anonymous_tab.get_by_label("Username").fill("signer")
    anonymous_tab.get_by_label("Password").fill(password)
    anonymous_tab.get_by_role("button", name="Sign in").click()
    expect(anonymous_tab).to_have_url(re.compile("/templates$"))
    expect(anonymous_tab.locator(".who")).to_contain_text("signer (teacher)")
    cookie = next(c for c in anonymous_tab.context.cookies() if c["name"] == "kubekvm_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    anonymous_tab.get_by_role("button", name="Sign out").click()
    expect(anonymous_tab).to_have_url(re.compile("/login$"))
    anonymous_tab.goto("/")
    expect(anonymous_tab).to_have_url(re.compile("/login"))


def test_a_wrong_password_then_throttling(anonymous_tab: Any, server: Server) -> None:
    server.user("victim", "teacher")
    anonymous_tab.goto("/login")
    for attempt in range(5):
        anonymous_tab.get_by_label("Username").fill("victim")
        anonymous_tab.get_by_label("Password").fill(f"not-it-{attempt}")
        anonymous_tab.get_by_role("button", name="Sign in").click()
        expect(anonymous_tab.locator("#login-error")).to_have_text("Wrong username or password.")
    # Five failures lock the account out from this address for a while, whichever password
    # comes next (even the right one).
    anonymous_tab.get_by_label("Username").fill("victim")
    anonymous_tab.get_by_label("Password").fill(server.passwords["victim"])
    anonymous_tab.get_by_role("button", name="Sign in").click()
    expect(anonymous_tab.locator("#login-error")).to_have_text(
        re.compile(r"Too many failed sign-ins\. Try again in \d+ s\."))
    expect(anonymous_tab).to_have_url(re.compile("/login$"))


def test_a_teacher_cannot_open_another_teachers_lab(anonymous_tab: Any, server: Server, class_lab: str) -> None:
    sign_in(anonymous_tab, "tb", server.user("tb", "teacher"))
    answer = anonymous_tab.goto(f"/labs/{class_lab}")
    assert answer.status == 404
    expect(anonymous_tab.locator("h1")).to_have_text("Not found")
    expect(anonymous_tab.locator("main")).not_to_contain_text("stud1")
    anonymous_tab.goto("/")
    expect(anonymous_tab.locator(f"#lab-{class_lab}")).to_have_count(0)
    answer = anonymous_tab.goto(f"/labs/{class_lab}/edit")
    assert answer.status == 404


def test_a_student_sees_only_their_machine_and_resets_it(anonymous_tab: Any, server: Server, fake_host: FakeHost,
                                                         class_lab: str) -> None:
    tab = anonymous_tab
    sign_in(tab, "stud1", STUDENT_PASSWORD)
    expect(tab).to_have_url(re.compile("/my$"))
    rows = tab.locator("#my-machines tr")
    expect(rows).to_have_count(1)
    mine = data(server.graphql('{ machines(deployment: "class-a") { name student } }'))["machines"]
    name = next(m["name"] for m in mine if m["student"] == "stud1")
    other = next(m["name"] for m in mine if m["student"] == "stud2")
    row = tab.locator(f"#machine-{name}")
    expect(row.locator(".badge")).to_have_text("running")
    expect(tab.locator(f"#machine-{other}")).to_have_count(0)
    tab.evaluate("window.kept = 'still here'")
    tab.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Reset").click()
    expect(tab.locator(f"#machine-{name} .transition")).to_have_text("resetting…")
    expect(tab.locator("#flash")).to_contain_text(f"Resetting {name}")
    fake_host.converge("class-a")  # the host rebuilds it and reports it running: the row follows live
    expect(tab.locator(f"#machine-{name} .badge")).to_have_text("running")
    expect(tab.locator(f"#machine-{name} .transition")).to_have_count(0)
    assert tab.evaluate("window.kept") == "still here"
    # Teachers' pages are not for students; another student's machine does not exist for them.
    assert tab.goto(f"/labs/{class_lab}").status == 403
    status = tab.evaluate("""async (other) => (await fetch(`/machines/${other}/stop`, {method: "POST",
        headers: {"HX-Request": "true",
                  "X-CSRF-Token": document.querySelector('meta[name=csrf-token]').content}})).status""", other)
    assert status == 404


def test_a_form_without_the_csrf_token_is_refused(page: Any, class_lab: str) -> None:
    page.goto(f"/labs/{class_lab}")
    # What another site's page could make the browser send: the session cookie, no token.
    refused = page.evaluate(f"""async () => {{
        const answer = await fetch("/labs/{class_lab}/stop", {{method: "POST",
            body: new URLSearchParams({{next: "/"}})}});
        return [answer.status, await answer.text()];
    }}""")
    assert refused[0] == 403 and "security token (CSRF)" in refused[1]
    # The same form with the page's token (as its hidden field carries it without JavaScript).
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    assert token and len(token) > 20
    done = page.evaluate(f"""async (token) => (await fetch("/labs/{class_lab}/stop", {{method: "POST",
        body: new URLSearchParams({{next: "/", csrf_token: token}}), redirect: "manual"}})).type""", token)
    assert done == "opaqueredirect"  # the 303 of a form that was accepted

"""The console in Chromium, on a real guest: a student clicks Console on "My VMs", noVNC
connects through the server and the agent and draws the guest's screen; a classmate is refused
(FORBIDDEN); a ticket presented after it expired is refused; a machine that stops says so and
starts again from the console page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from pymongo import MongoClient

from kubekvm.credentials import token_hash
from tests.e2e.conftest import (
    Agent,
    add_tiny_template,
    gql,
    image_dir_with,
    lab_state,
    unique_lab,
    wait_host_ready,
    wait_until,
)
from tests.pages.conftest import sign_in
from tests.support.csp import RECORD, violations
from tests.support.processes import Server

pytestmark = [pytest.mark.qemu, pytest.mark.browser]

# Distinct colours on the console's canvas: 1 is a blank screen.
CANVAS_COLOURS = """() => {
    const canvas = document.querySelector('#console-screen canvas');
    if (!canvas || !canvas.width) { return 0; }
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < pixels.length; i += 4) { seen.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]); }
    return seen.size;
}"""
# A ticket asked for as the page asks for one (its CSRF token, its session).
ASK_TICKET = """async () => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const answer = await fetch(document.body.dataset.ticketUrl, {method: 'POST', headers: {'X-CSRF-Token': csrf}});
    return await answer.json();
}"""
# That ticket presented as the page presents it: the websocket's close code and reason.
PRESENT_TICKET = """async (ticket) => {
    const url = new URL(ticket.socket, location.href);
    url.protocol = 'ws:';
    return await new Promise((done) => {
        const socket = new WebSocket(url.href, ['binary', ticket.protocol]);
        socket.onclose = (event) => done([event.code, event.reason]);
    });
}"""
TICKET_AS_PAGE = """async (machine) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const answer = await fetch(`/machines/${machine}/console/ticket`, {method: 'POST', headers: {'X-CSRF-Token': csrf}});
    return [answer.status, (await answer.json()).error.code];
}"""


def colours_shown(tab: Any, *, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    colours = 0
    while time.monotonic() < deadline:
        colours = int(tab.evaluate(CANVAS_COLOURS))
        if colours > 1:
            return colours
        tab.wait_for_timeout(250)
    return colours


@pytest.mark.timeout(300)
def test_a_student_uses_the_console_of_their_vm(start_kubekvm: Callable[..., Server], agents: Callable[..., Agent],
                                                tiny_linux: Path, site: Path, browser: Any) -> None:
    server = start_kubekvm()
    add_tiny_template(server)
    agent = agents(server, site / "state", image_dir_with(site, tiny_linux), "--stop-grace", "5")
    wait_host_ready(server, agent.host_name)
    lab = unique_lab()
    mine, theirs = f"{lab}-a", f"{lab}-b"
    passwords = {name: server.user(name, "student") for name in (mine, theirs)}
    gql(server, "mutation($n: String!) { createDeployment(input: {name: $n, template: \"tiny-linux\", replicas: 2}) "
                "{ name } }", n=lab)
    gql(server, "mutation($n: String!, $s: [String!]!) { setRoster(name: $n, students: $s) { unbound } }",
        n=lab, s=[mine, theirs])
    vm = next(m["name"] for m in gql(server, "query($n: String!) { machines(deployment: $n) { name student } }",
                                     n=lab)["machines"] if m["student"] == mine)
    wait_until(lambda: (lab_state(server, lab) or {}).get("phase") == "ACTIVE", timeout=120, what="lab Active")

    student = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    student.add_init_script(RECORD)  # the console must run under the server's CSP
    classmate = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    try:
        tab = student.new_page()
        sign_in(tab, mine, passwords[mine])
        expect(tab).to_have_url(f"{server.url}/my")
        started = time.monotonic()
        with student.expect_page() as opened:
            tab.locator(f"#machine-{vm}-console").click()
        console = opened.value
        errors: list[str] = []
        console.on("pageerror", lambda error: errors.append(str(error)))
        expect(console.locator("#console-status")).to_have_text("Connected", timeout=120_000)
        connected = time.monotonic() - started
        colours = colours_shown(console)
        assert colours > 1, "the console shows a blank screen"
        print(f"\nclick → Connected in {connected:.2f} s; {colours} colours on the canvas")
        expect(console.locator("#console-cad")).to_be_enabled()
        assert console.title().startswith(vm)

        # A classmate: the page and a ticket are refused.
        other = classmate.new_page()
        sign_in(other, theirs, passwords[theirs])
        refused = other.goto(f"/machines/{vm}/console")
        assert refused is not None and refused.status == 403
        expect(other.locator("h1")).to_have_text("Not allowed")
        other.goto("/my")
        assert other.evaluate(TICKET_AS_PAGE, vm) == [403, "FORBIDDEN"]

        # A ticket presented after it expired is refused, and said why. Its lifetime is over
        # when its stored expiry (only the ticket's hash is kept) is a second past: aged so
        # rather than waited for, which a slow machine could not keep to.
        ticket = console.evaluate(ASK_TICKET)
        with MongoClient(server.database_uri) as client:
            aged = client[server.database_name]["console_tickets"].update_one(
                {"ticket_hash": token_hash(ticket["ticket"])},
                {"$set": {"expires": datetime.now(UTC) - timedelta(seconds=1)}})
        assert aged.modified_count == 1
        code, reason = console.evaluate(PRESENT_TICKET, ticket)
        assert code == 4401 and "expired" in reason

        # The machine stops: the console says so and offers to start it; starting it reconnects.
        tab.locator(f"#machine-{vm}-stop").click()
        expect(console.locator("#console-status")).to_have_text("Machine off", timeout=60_000)
        expect(console.locator("#console-message-text")).to_contain_text("stopped")
        console.locator("#console-start").click()
        expect(console.locator("#console-status")).to_have_text("Connected", timeout=120_000)
        assert colours_shown(console) > 1
        assert not errors, errors
        assert not violations(console) + violations(tab), "the console broke the Content-Security-Policy"
    finally:
        student.close()
        classmate.close()
    entries = gql(server, "query($a: String) { auditLog(actor: $a) { items { action target outcome } } }",
                  a=theirs)["auditLog"]["items"]
    assert {"action": "openConsole", "target": f"machine:{vm}", "outcome": "FORBIDDEN"} in entries


@pytest.mark.timeout(120)
def test_the_teachers_lab_page_has_a_console_button_per_machine(start_kubekvm: Callable[..., Server],
                                                               browser: Any) -> None:
    from tests.pages.fake_host import FakeHost

    server = start_kubekvm()
    add_tiny_template(server)
    FakeHost(server, name="console-page-host").register()
    teacher = server.user("console-teacher", "teacher")
    token = server.token_for("console-teacher", "teacher")
    lab = unique_lab()
    body = server.graphql("mutation($n: String!) { createDeployment(input: {name: $n, template: \"tiny-linux\", "
                          "replicas: 2}) { name } }", {"n": lab}, token=token)
    assert not body.get("errors"), body
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    try:
        tab = context.new_page()
        sign_in(tab, "console-teacher", teacher)
        tab.goto(f"/labs/{lab}")
        for index in (1, 2):
            link = tab.locator(f"#machine-{lab}-{index}-console")
            expect(link).to_have_attribute("href", f"/machines/{lab}-{index}/console")
            expect(link).to_have_attribute("target", "_blank")
        with context.expect_page() as opened:
            tab.locator(f"#machine-{lab}-1-console").click()
        console = opened.value
        # Not running yet (the stand-in host reported nothing): the page says it is starting.
        expect(console.locator("#console-message-text")).to_contain_text("starting")
        expect(console.locator(".console-back")).to_have_attribute("href", f"/labs/{lab}")
    finally:
        context.close()

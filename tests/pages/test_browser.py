"""The pages in Chromium: forms, live updates pushed over server-sent events, no reloads.

The fake host reports machine states while a page is open; the page must change by itself.
`window.kept` is set before the first action and read at the end: it survives only if htmx did
the work and the browser never loaded a page again.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.pages.fake_host import FakeHost, data
from tests.support.processes import Server

pytestmark = pytest.mark.browser


def mark(tab: Any) -> None:
    tab.evaluate("window.kept = 'still here'")


def assert_not_reloaded(tab: Any) -> None:
    assert tab.evaluate("window.kept") == "still here", "the page was reloaded"


def create_lab(tab: Any, *, name: str, replicas: int, title: str = "") -> None:
    tab.goto("/new-lab")
    mark(tab)
    tab.get_by_label("Name", exact=True).fill(name)
    tab.get_by_label("Title").fill(title)
    tab.get_by_label("Template").select_option("tiny-linux")
    tab.get_by_label("Replicas").fill(str(replicas))
    tab.get_by_role("button", name="Create lab").click()
    expect(tab).to_have_url(re.compile(f"/labs/{name}$"))
    expect(tab.locator("#flash")).to_contain_text(f"Lab {name} created")


def test_new_lab_goes_active_live(page: Any, server: Server, fake_host: FakeHost,
                                  tiny_template: str) -> None:
    create_lab(page, name="physics-1", replicas=3, title="Physics 1")
    status = page.locator("#lab-status .badge")
    expect(status).to_have_text("Pending")
    rows = page.locator("#machines tr")
    expect(rows).to_have_count(3)

    fake_host.converge("physics-1", only=["physics-1-1"])
    expect(page.locator("#machine-physics-1-1 .badge")).to_have_text("running")
    expect(page.locator("#lab-status .progress-text")).to_have_text("1/3 running")
    expect(status).to_have_text("Pending")

    fake_host.converge("physics-1")
    for index in (1, 2, 3):
        badge = page.locator(f"#machine-physics-1-{index} .badge")
        expect(badge).to_have_text("running")
        expect(badge).to_have_class(re.compile("state-running"))
    expect(status).to_have_text("Active")
    expect(page.locator("#lab-status .progress-text")).to_have_text("3/3 running")
    expect(page.locator("#lab-events")).to_contain_text("physics-1-3 is running")
    assert_not_reloaded(page)

    # The list shows it too, and follows it live.
    page.goto("/")
    card = page.locator("#lab-physics-1")
    expect(card.locator(".badge")).to_have_text("Active")
    expect(card.locator(".progress-text")).to_have_text("3/3 running")


def test_bad_input_is_explained_beside_the_field(page: Any, tiny_template: str) -> None:
    page.goto("/new-lab")
    mark(page)
    name = page.get_by_label("Name", exact=True)
    replicas = page.get_by_label("Replicas")
    cases = [
        ("Bad Name", "3", "name", "lowercase letters"),
        ("a;b", "3", "name", "lowercase letters"),
        ("a" * 41, "3", "name", "at most 40 characters"),
        ("fine-name", "0", "replicas", "between 1 and"),
        ("fine-name", "1000000000", "replicas", "between 1 and"),
    ]
    for typed_name, typed_replicas, field, message in cases:
        name.fill(typed_name)
        replicas.fill(typed_replicas)
        page.get_by_role("button", name="Create lab").click()
        error = page.locator(f"#{field}-error")
        expect(error).to_contain_text(message)
        # What the user typed is still there, and the field says it is wrong.
        expect(name).to_have_value(typed_name)
        expect(replicas).to_have_value(typed_replicas)
        expect(page.locator(f"#{field}")).to_have_attribute("aria-invalid", "true")
        expect(page.locator(f"#{field}")).to_be_focused()
    assert_not_reloaded(page)
    expect(page).to_have_url(re.compile("/new-lab$"))


def test_scaling_adds_and_removes_machines(page: Any, fake_host: FakeHost,
                                           tiny_template: str) -> None:
    create_lab(page, name="scale-me", replicas=2)
    fake_host.converge("scale-me")
    expect(page.locator("#lab-status .badge")).to_have_text("Active")

    # One machine at a time: stop one, reset the other (after the confirm() dialog).
    mark(page)
    page.locator("#machine-scale-me-1").get_by_role("button", name="Stop").click()
    expect(page.locator("#machine-scale-me-1 .transition")).to_have_text("stopping…")
    expect(page.locator("#flash")).to_contain_text("Stopping scale-me-1")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#machine-scale-me-2").get_by_role("button", name="Reset").click()
    expect(page.locator("#machine-scale-me-2 .transition")).to_have_text("resetting…")
    fake_host.converge("scale-me")
    expect(page.locator("#machine-scale-me-1 .badge")).to_have_text("shutoff")
    expect(page.locator("#machine-scale-me-1").get_by_role("button", name="Stop")).to_be_disabled()
    expect(page.locator("#machine-scale-me-2 .badge")).to_have_text("running")
    page.locator("#machine-scale-me-1").get_by_role("button", name="Start").click()
    fake_host.converge("scale-me")
    expect(page.locator("#machine-scale-me-1 .badge")).to_have_text("running")
    assert_not_reloaded(page)

    page.get_by_role("link", name="Edit scale-me").click()  # not "Edit timetable"
    expect(page.get_by_label("Template")).to_be_disabled()
    expect(page.get_by_text("A lab's template can't change")).to_be_visible()
    mark(page)
    page.get_by_label("Replicas").fill("4")
    page.get_by_role("button", name="Save changes").click()
    expect(page).to_have_url(re.compile("/labs/scale-me$"))
    expect(page.locator("#flash")).to_contain_text("scaling from 2 to 4")
    expect(page.locator("#machines tr")).to_have_count(4)
    fake_host.converge("scale-me")
    expect(page.locator("#machine-scale-me-4 .badge")).to_have_text("running")
    expect(page.locator("#lab-status .progress-text")).to_have_text("4/4 running")

    page.get_by_role("link", name="Edit scale-me").click()
    mark(page)
    page.get_by_label("Replicas").fill("1")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#machine-scale-me-3 .transition")).to_have_text("removing…")
    fake_host.converge("scale-me")  # the host reports the retired ones ABSENT
    expect(page.locator("#machines tr")).to_have_count(1)
    expect(page.locator("#machine-scale-me-1 .badge")).to_have_text("running")
    expect(page.locator("#lab-status .badge")).to_have_text("Active")
    assert_not_reloaded(page)


def test_stop_all_then_delete_with_typed_name(page: Any, fake_host: FakeHost,
                                              tiny_template: str) -> None:
    create_lab(page, name="stop-me", replicas=2)
    fake_host.converge("stop-me")
    expect(page.locator("#lab-status .badge")).to_have_text("Active")

    page.locator("#lab-status").get_by_role("button", name="Stop all").click()
    expect(page.locator("#flash")).to_contain_text("Stopping every machine")
    expect(page.locator("#lab-status .badge")).to_have_text("Pending")
    fake_host.converge("stop-me")
    expect(page.locator("#lab-status .badge")).to_have_text("Inactive")
    expect(page.locator("#machine-stop-me-2 .badge")).to_have_text("shutoff")

    # Start again from the list's card, then delete: running machines need the typed name.
    page.goto("/")
    mark(page)
    card = page.locator("#lab-stop-me")
    card.get_by_role("button", name="Start all").click()
    expect(page.locator("#flash")).to_contain_text("Starting every machine")
    fake_host.converge("stop-me")
    expect(card.locator(".badge")).to_have_text("Active")
    assert_not_reloaded(page)

    card.get_by_role("link", name="Delete").click()
    mark(page)
    page.get_by_role("button", name="Delete lab").click()
    expect(page.locator("#confirm-error")).to_contain_text("Type the lab's name")
    page.get_by_label("Type the lab's name").fill("stop-me")
    page.get_by_role("button", name="Delete lab").click()
    expect(page).to_have_url(re.compile("/$"))
    expect(page.locator("#flash")).to_contain_text("Deleting lab stop-me")
    card = page.locator("#lab-stop-me")
    expect(card.locator(".badge")).to_have_text("Deleting…")
    fake_host.converge("stop-me")  # the host removes the VMs and reports them gone
    expect(card).to_have_count(0)
    assert_not_reloaded(page)


def test_templates_page_refuses_to_delete_a_template_in_use(page: Any, tiny_template: str,
                                                            fake_host: FakeHost) -> None:
    create_lab(page, name="uses-tiny", replicas=1)
    page.goto("/templates")
    mark(page)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#template-tiny-linux").get_by_role("button", name="Delete").click()
    expect(page.locator("#flash")).to_contain_text("is used by lab(s)")
    expect(page.locator("#template-tiny-linux")).to_be_visible()

    page.get_by_role("link", name="New template").click()
    page.get_by_label("Name", exact=True).fill("spare")
    page.get_by_label("Image file").fill("spare.qcow2")
    page.get_by_label("Memory").fill("32")
    mark(page)
    page.get_by_role("button", name="Create template").click()
    expect(page.locator("#memoryMib-error")).to_contain_text("between 64 and")
    page.get_by_label("Memory").fill("256")
    page.get_by_role("button", name="Create template").click()
    expect(page).to_have_url(re.compile("/templates$"))
    expect(page.locator("#template-spare")).to_contain_text("256 MiB")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#template-spare").get_by_role("button", name="Delete").click()
    expect(page.locator("#flash")).to_contain_text("Template spare deleted")
    expect(page.locator("#template-spare")).to_have_count(0)
    assert_not_reloaded(page)


def test_hosts_and_server_pages(page: Any, server: Server, fake_host: FakeHost) -> None:
    data(server.graphql("mutation($input: OrphanReportInput!) { reportOrphans(input: $input) { name } }",
                        {"input": {"host": fake_host.name, "domains": ["kubekvm-old-lab-1"]}}))
    page.goto("/hosts")
    host = page.locator(f"#host-{fake_host.name}")
    expect(host.locator(".badge")).to_have_text("ready")
    expect(host).to_contain_text("tiny-linux.qcow2")
    expect(host).to_contain_text("kubekvm-old-lab-1")
    expect(host).to_contain_text("of 64 GiB")
    page.goto("/server")
    expect(page.locator("#server-hostname")).to_have_text(socket.gethostname())
    expect(page.get_by_text("change-streams")).to_be_visible()


def test_keyboard_reaches_everything_in_order(page: Any) -> None:
    page.goto("/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")  # from the main region: its first control
    expect(page.get_by_role("link", name="New lab").last).to_be_focused()
    page.goto("/new-lab")
    page.get_by_label("Name", exact=True).focus()
    for target in (page.get_by_label("Title"), page.get_by_label("Template"),
                   page.get_by_role("link", name="See the templates"), page.get_by_label("Replicas"),
                   page.get_by_role("button", name="Create lab"),
                   page.get_by_role("link", name="Cancel")):
        page.keyboard.press("Tab")
        expect(target).to_be_focused()

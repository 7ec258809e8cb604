"""Honest status and truthful messages in Chromium (issue 15): how long a machine and a lab have
been in their state, what they wait on, "unusually long", a lab's message derived from its
machines and the pending request (never kept from an earlier state), and a form that shows every
bad field at once. The host is the fake one (the agent's own GraphQL calls, no libvirt)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from agent import documents
from tests.pages.fake_host import FakeHost, data
from tests.support.processes import Server

CREATE = "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }"


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server]) -> Server:
    # Making a machine counts as unusually long after 0 s, so the warning is seen at once; a start
    # after 2 s, so the page's own clock is seen flagging it.
    return start_kubekvm(env={"KUBEKVM_SLOW_CREATE_SECONDS": "0", "KUBEKVM_SLOW_CHANGE_SECONDS": "2"})


def test_a_slow_machine_says_what_it_waits_on_and_the_live_page_follows(
        page: Any, server: Server, fake_host: FakeHost, tiny_template: str) -> None:
    data(server.graphql(CREATE, {"i": {"name": "slow-lab", "template": tiny_template, "replicas": 2}}))
    first, second = fake_host.machines("slow-lab")
    fake_host.report(first, "PENDING", "creating: cloning the disk from tiny-linux.qcow2")
    page.goto("/labs/slow-lab")
    row = page.locator("#machine-slow-lab-1 .since")
    expect(row).to_contain_text("creating for")
    expect(row).to_contain_text("waiting on fake-host-1: cloning the disk from tiny-linux.qcow2 (unusually long)")
    expect(row).to_have_class("since slow")
    expect(page.locator("#machine-slow-lab-2 .since")).to_contain_text(
        "waiting on fake-host-1 to copy the disk and define the VM")
    lab = page.locator("#lab-status .since")
    expect(lab).to_contain_text("Pending for")
    expect(lab).to_contain_text("unusually long")
    expect(page.locator("#lab-status .message")).to_contain_text(
        "0/2 running, 2 being made — slow-lab-1: creating: cloning the disk from tiny-linux.qcow2")

    # The live update redraws the row from the new state: at rest, nothing waited on.
    fake_host.report(first, "RUNNING")
    expect(row).to_have_text(re.compile(r"^for \d+ s$"))
    expect(row).to_have_class("since")
    # Between live updates the page's clock goes on (static/elapsed.js).
    expect(row).not_to_have_text("for 0 s", timeout=60_000)

    # "Start all" after the students powered off: a shutoff event that carries no generation
    # (the agent had not yet reported the domain) must not read "powered off by students".
    fake_host.report(second, "RUNNING")
    for machine in fake_host.machines("slow-lab"):
        fake_host.report(machine, "SHUTOFF")
    data(server.graphql('mutation { startDeployment(name: "slow-lab") { name } }'))
    first, second = fake_host.machines("slow-lab")
    fake_host.report(first, "RUNNING")
    data(server.graphql(documents.REPORT_MACHINE_STATE, documents.report_machine_state(
        machine_id=second["id"], host=fake_host.name, state="SHUTOFF", message=None, power_generation=None)))
    expect(page.locator("#lab-status .message")).to_have_text("1/2 running, 1 starting")
    starting = page.locator("#machine-slow-lab-2 .since")
    expect(starting).to_contain_text("starting for")
    expect(starting).to_contain_text("waiting on fake-host-1 to start it")
    # Past KUBEKVM_SLOW_CHANGE_SECONDS without news, the page flags it by itself.
    expect(starting).to_have_class("since slow", timeout=60_000)
    expect(starting.locator(".slow-note")).to_be_visible()

    # Being deleted: what it waits for, not "0/0 running".
    data(server.graphql('mutation { deleteDeployment(name: "slow-lab") { name } }'))
    page.goto("/labs/slow-lab")
    expect(page.locator("#lab-status .message")).to_have_text("removing 2 machine(s) from their hosts")
    expect(page.locator("#lab-status progress")).to_have_count(0)
    expect(page.locator("#machine-slow-lab-1 .since")).to_contain_text("removing for")
    fake_host.converge("slow-lab")


def test_the_new_lab_form_shows_every_bad_field_at_once_with_the_valid_name(
        page: Any, tiny_template: str) -> None:
    page.goto("/new-lab")
    page.locator("#name").fill("Redes 2025")
    page.locator("#replicas").fill("0")
    page.locator("#lab-form button[type=submit]").click()
    expect(page.locator("#name-error")).to_contain_text("Try: redes-2025")
    expect(page.locator("#replicas-error")).to_be_visible()
    expect(page.locator("#name")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#replicas")).to_have_attribute("aria-invalid", "true")


def test_the_new_lab_form_says_what_each_template_can_run_and_preselects_one_that_can(
        page: Any, server: Server, fake_host: FakeHost, tiny_template: str) -> None:
    # First by name, but no host has its image: it must not be the one preselected.
    data(server.graphql("mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }", {"i": {
        "name": "a-missing", "title": "A missing image", "os": "LINUX", "image": "nowhere.qcow2",
        "vcpus": 1, "memoryMib": 128, "diskGib": 1}}))
    page.goto("/new-lab")
    expect(page.locator("#template")).to_have_value(tiny_template)
    listing = page.locator("#template-availability")
    expect(listing.locator('li[data-template="a-missing"]')).to_contain_text(
        "cannot run now — no ready host has image nowhere.qcow2")
    expect(listing.locator(f'li[data-template="{tiny_template}"]')).to_contain_text("on 1 ready host with its image")
    expect(page.locator('#template option[value="a-missing"]')).to_contain_text("cannot run now")

"""Fixtures of the page tests: a fake host, a small template, and browser tabs (signed in or
not) in the session's one Chromium (`browser`, from `tests.support.browser`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pages.fake_host import FakeHost, data
from tests.support.browser import browser
from tests.support.processes import ROOT, Server

# Re-exported: tests/console and tests/security import the fixture from here (a plugin's fixture,
# it is everywhere anyway).
__all__ = ["browser"]

# The README's pictures (docs/screenshots) are rewritten only when asked: `make screenshots`
# sets KUBEKVM_SCREENSHOTS_DIR. Otherwise a test run leaves the tracked files alone and writes
# its pictures with its logs (tests/artifacts, ignored by git).
SCREENSHOTS = Path(os.environ.get("KUBEKVM_SCREENSHOTS_DIR") or ROOT / "tests" / "artifacts" / "screenshots")
TEMPLATE = {"name": "tiny-linux", "title": "Tiny Linux", "os": "LINUX",
            "image": "tiny-linux.qcow2", "vcpus": 1, "memoryMib": 128, "diskGib": 1,
            "description": "A few MiB of busybox: boots in a second, for tests and demos."}
CREATE_TEMPLATE = """
mutation($input: TemplateInput!) { createTemplate(input: $input) { name } }
"""


@pytest.fixture(scope="module")
def fake_host(server: Server) -> FakeHost:
    return FakeHost(server).register()


@pytest.fixture(scope="module")
def tiny_template(server: Server) -> str:
    data(server.graphql(CREATE_TEMPLATE, {"input": TEMPLATE}))
    return str(TEMPLATE["name"])


PAGES_ADMIN = "pages-admin"


def sign_in(tab: Any, name: str, password: str) -> None:
    """Through the login page, as a person would."""
    tab.goto("/login")
    tab.get_by_label("Username").fill(name)
    tab.get_by_label("Password").fill(password)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url(lambda url: "/login" not in url)


@pytest.fixture
def anonymous_tab(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh tab, signed in as nobody."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser tab on the module's server, signed in as an admin; fails the test on
    any script error (htmx reports a missing swap target or a bad fragment through
    console.error)."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    sign_in(tab, PAGES_ADMIN, server.user(PAGES_ADMIN, "admin"))
    problems: list[str] = []

    def console(message: Any) -> None:
        # Chromium logs every 4xx answer, and forms get deliberate 422s: responses are
        # checked below instead.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(f"console: {message.text}")

    def response(answer: Any) -> None:
        kind = answer.request.resource_type
        if answer.status >= 500 or (answer.status == 404 and kind not in ("xhr", "fetch", "document")):
            problems.append(f"{answer.status} for {kind} {answer.url}")

    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("console", console)
    tab.on("response", response)
    yield tab
    context.close()
    assert not problems, problems


def screenshot(tab: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

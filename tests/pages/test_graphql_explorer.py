"""The GraphQL explorer at /graphql works offline (issue 15): with every request to another
host refused by the browser, GraphiQL renders from this server's static/vendor files, runs a
query over the page's session and shows the answer, without one Content-Security-Policy
violation (its policy is the pages' own, plus the data: fonts of GraphiQL's stylesheet)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from playwright.sync_api import expect

from tests.pages.conftest import PAGES_ADMIN, sign_in
from tests.support.csp import RECORD, violations
from tests.support.processes import Server

pytestmark = pytest.mark.browser


def test_the_explorer_renders_and_runs_a_query_with_the_network_blocked(browser: Any, server: Server) -> None:
    own = urlsplit(server.url).netloc
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    context.add_init_script(RECORD)
    refused: list[str] = []
    asked: list[str] = []

    def only_this_server(route: Any) -> None:
        url = route.request.url
        asked.append(url)
        if urlsplit(url).netloc == own:
            route.continue_()
        else:
            refused.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", only_this_server)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(tab, PAGES_ADMIN, server.user(PAGES_ADMIN, "admin"))

    tab.goto("/graphql?q=" + quote("{ me { name role } serverInfo { version } }"))
    # GraphiQL replaced the page's "Loading…" with its editors.
    expect(tab.locator(".graphiql-loading")).to_have_count(0, timeout=60_000)
    expect(tab.locator(".graphiql-query-editor .CodeMirror")).to_be_visible()
    tab.locator(".graphiql-execute-button").click()
    expect(tab.locator(".result-window")).to_contain_text(f'"name": "{PAGES_ADMIN}"', timeout=60_000)
    expect(tab.locator(".result-window")).to_contain_text('"role": "ADMIN"')
    # The schema came through introspection too: the docs explorer lists the root types.
    tab.get_by_role("button", name="Show Documentation Explorer").click()
    expect(tab.locator(".graphiql-doc-explorer")).to_contain_text("Query", timeout=60_000)

    seen = violations(tab)
    context.close()
    assert refused == [], refused
    assert any("/static/vendor/graphiql/graphiql.min.js" in url for url in asked), asked
    assert seen == [], seen
    assert errors == [], errors

"""No page may load or link anything from another host: lab networks are often offline, and
a page that waits for a CDN is a page that does not work in class.

Every GET route of the pages is rendered (the test fails if a new route is not listed here),
the GraphQL explorer too, and the templates, stylesheets and scripts are scanned as written.
(tests/pages/test_graphql_explorer.py runs the explorer in Chromium with the network blocked.)"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.routing import Route

from kubekvm import pages
from kubekvm.config import Settings
from tests.pages.fake_host import FakeHost, data
from tests.support.processes import ROOT, Server

# src=, href=, action=, hx-get= ..., sse-connect=, and CSS url(...)
REFERENCE = re.compile(
    r"""(?:\b(?:src|href|action|formaction|poster|data|hx-(?:get|post|put|patch|delete)|sse-connect)\s*=\s*["']?|url\(\s*["']?)([^"'\s>)]+)""",
    re.IGNORECASE,
)


def external(references: list[str], *, own: str) -> list[str]:
    found = []
    for reference in references:
        parts = urlsplit(reference)
        if (parts.scheme in ("http", "https") or reference.startswith("//")) and parts.netloc != own:
            found.append(reference)
    return found


@pytest.fixture(scope="module")
def sample_lab(server: Server, fake_host: FakeHost, tiny_template: str) -> str:
    data(server.graphql(
        'mutation { createDeployment(input: {name: "url-scan", template: "tiny-linux", '
        "replicas: 1}) { name } }"))
    fake_host.converge("url-scan")
    return "url-scan"


def test_rendered_pages_reference_only_this_server(server: Server, sample_lab: str) -> None:
    paths = {
        "/": "/", "/labs": "/labs", "/new-lab": "/new-lab", "/labs/{name}": "/labs/url-scan",
        "/labs/{name}/edit": "/labs/url-scan/edit", "/labs/{name}/delete": "/labs/url-scan/delete",
        "/templates": "/templates", "/templates/new": "/templates/new",
        "/templates/{name}/edit": "/templates/tiny-linux/edit", "/hosts": "/hosts",
        "/server": "/server", "/login": "/login", "/setup": "/setup?code=x",
        "/set-password": "/set-password?code=x", "/account": "/account", "/my": "/my",
        "/users": "/users", "/audit": "/audit", "/images": "/images", "/templates/{name}/versions": "/templates/tiny-linux/versions",
        "/labs/{name}/version": "/labs/url-scan/version", "/machines/{name}/console": "/machines/url-scan-1/console",
        # Signing in with an OpenID provider (none configured here: the provider's own links, to
        # the university's sign-in, are the only foreign ones, and only where one is configured).
        "/login/oidc/{provider}": "/login/oidc/none", "/login/oidc/{provider}/callback": "/login/oidc/none/callback",
        "/signed-out": "/signed-out",
        # Shows a link just made, once; otherwise it sends you back to the lab's roster.
        "/labs/{name}/roster/{student}/link": "/labs/url-scan/roster/nobody/link",
        "/labs/{name}/timetable": "/labs/url-scan/timetable", "/operations": "/operations",
    }
    # Not pages: a download (CSV) has no links to scan.
    downloads = {"/labs/{name}/usage.csv"}
    routes = [r for r in pages.routes(settings=Settings()) if isinstance(r, Route)]
    gets = {r.path for r in routes if r.methods and "GET" in r.methods and r.path != "/events"}
    assert gets == set(paths) | downloads, "a page route is missing from this test"

    own = urlsplit(server.url).netloc
    with httpx.Client(base_url=server.url, timeout=60, headers=server.admin_headers,
                      follow_redirects=True) as client, httpx.Client(base_url=server.url, timeout=60) as nobody:
        assert not external(REFERENCE.findall(nobody.get("/login").text), own=own)
        # The GraphQL explorer is no page route but a page all the same (vendored GraphiQL).
        for path in [*paths.values(), "/labs/no-such-lab", "/graphql"]:
            html = client.get(path, headers={"Accept": "text/html"}).text
            references = REFERENCE.findall(html)
            assert references, f"{path} rendered no links at all?"
            assert not external(references, own=own), (path, external(references, own=own))
            for reference in references:
                if reference.startswith("/static/"):
                    assert client.get(reference).status_code == 200, reference


def test_the_scan_finds_outside_references() -> None:
    html = ('<script src="https://cdn.example/htmx.js"></script><a href="//x.example/">'
            '<link href="/static/app.css"><div style="background: url(http://x.example/a.png)">')
    assert external(REFERENCE.findall(html), own="127.0.0.1:8000") == [
        "https://cdn.example/htmx.js", "//x.example/", "http://x.example/a.png"]


def test_templates_and_static_files_as_written() -> None:
    files = [*Path(ROOT, "templates").rglob("*.html"), *Path(ROOT, "static").glob("*.css"),
             *Path(ROOT, "static").glob("*.js"), *Path(ROOT, "static", "vendor").rglob("*.css")]
    assert files
    for file in files:
        text = file.read_text()
        assert not external(REFERENCE.findall(text), own=""), file
        assert not re.search(r"@import|https?://", text), f"{file} names an outside URL"

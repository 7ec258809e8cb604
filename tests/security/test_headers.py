"""Security headers on every kind of answer (issue 11, item 9): whole pages, htmx fragments,
static files, GraphQL (JSON and the explorer page), probes, refusals and live streams; and HSTS
exactly when the server is reached over HTTPS.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from kubekvm.headers import POLICY
from tests.support.processes import Server

POLICY_PARTS = ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'",
                "object-src 'none'", "base-uri 'none'")


def assert_secured(answer: httpx.Response, *, hsts: bool = False) -> None:
    headers = answer.headers
    what = f"{answer.request.method} {answer.request.url} ({answer.status_code})"
    policy = headers.get("content-security-policy", "")
    for part in POLICY_PARTS:
        assert part in policy, (what, policy)
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, (what, policy)
    assert headers.get("x-content-type-options") == "nosniff", what
    assert headers.get("x-frame-options") == "DENY", what
    assert headers.get("referrer-policy") == "same-origin", what
    if hsts:
        assert re.fullmatch(r"max-age=\d{7,}; includeSubDomains", headers.get("strict-transport-security", "")), what
    else:
        assert "strict-transport-security" not in headers, what


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    server.user("headers-admin", "admin")
    client = server.session("headers-admin")
    yield client
    client.close()


def test_every_kind_of_answer_has_the_headers(server: Server, admin: httpx.Client) -> None:
    anonymous = httpx.Client(base_url=server.url, timeout=30)
    answers = {
        "login page": anonymous.get("/login"),
        "redirect to sign in": anonymous.get("/labs"),
        "labs page": admin.get("/"),
        "new-lab page": admin.get("/new-lab"),
        "not found page": admin.get("/labs/no-such-lab"),
        "htmx fragment (422)": admin.post("/labs", data={"name": "Bad Name", "replicas": "1"},
                                          headers={"HX-Request": "true"}),
        "stylesheet": anonymous.get("/static/app.css"),
        "script": anonymous.get("/static/vendor/htmx.min.js"),
        "graphql json": admin.post("/graphql", json={"query": "{ me { name } }"}),
        "graphql refusal": anonymous.post("/graphql", content=b"[]", headers={"Content-Type": "application/json"}),
        "probe": anonymous.get("/healthz"),
        "too large": anonymous.post("/graphql", content=b" " * (1024 * 1024 + 1),
                                    headers={"Content-Type": "application/json"}),
    }
    assert answers["labs page"].status_code == 200
    assert answers["htmx fragment (422)"].status_code == 422
    assert "<html" not in answers["htmx fragment (422)"].text
    assert answers["too large"].status_code == 413
    for answer in answers.values():
        assert_secured(answer)
    with admin.stream("GET", "/events") as stream:
        assert stream.status_code == 200
        assert_secured(stream)
    anonymous.close()


def test_the_graphql_explorer_runs_under_the_pages_policy(server: Server, admin: httpx.Client) -> None:
    """The explorer is vendored (static/vendor/graphiql) and started from a file: its policy is
    the pages' own, with only the data: fonts of GraphiQL's stylesheet added, and it holds no
    inline script or style and names no other host."""
    page = admin.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    assert_secured(page)
    policy = page.headers["content-security-policy"]
    assert "font-src 'self' data:" in policy
    assert policy.replace("font-src 'self' data:", "font-src 'self'") == POLICY
    assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", page.text), "an inline script"
    assert "<style" not in page.text and "style=" not in page.text
    assert "https://" not in page.text and "http://" not in page.text
    assert '/static/vendor/graphiql/graphiql.min.js' in page.text


def test_hsts_over_https_only(server: Server, start_kubekvm: Callable[..., Server]) -> None:
    plain = httpx.get(f"{server.url}/login", timeout=30)
    assert_secured(plain, hsts=False)
    # The trusted proxy (uvicorn's forwarded_allow_ips: loopback) says the browser came over HTTPS.
    proxied = httpx.get(f"{server.url}/login", headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert_secured(proxied, hsts=True)
    public = start_kubekvm(env={"KUBEKVM_PUBLIC_URL": "https://kubekvm.example.edu"})
    for path in ("/login", "/static/app.css", "/healthz"):
        assert_secured(httpx.get(f"{public.url}{path}", timeout=30), hsts=True)

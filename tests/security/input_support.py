"""What the input attack tests share: an admin's browser-like session and a snapshot of every
collection a refused request must leave as it was."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import httpx
from pymongo import MongoClient

from tests.support.processes import Server

# Everything a request could write, except the audit log (refusals are recorded there on
# purpose) and the sign-in and session bookkeeping.
WRITABLE = ("templates", "deployments", "machines", "hosts", "users", "api_tokens", "lab_events")

# Numbers as nobody types them: what `int()` takes or chokes on, and what overflows MongoDB.
HOSTILE_NUMBERS = ["+-5", "²", "٣", "1_0", "+5", " 5 ", "0x10", "1e3", "99999999999999999999", "1" * 5000]

# The fuzz tests' share of their full example counts in `make test` (KUBEKVM_FUZZ_SCALE
# overrides it: `make fuzz` runs 1, the full budget, outside CI).
FUZZ_SMOKE = "0.25"

TEMPLATE = {"name": "sec-tiny", "title": "Tiny", "os": "LINUX", "image": "tiny-linux.qcow2",
            "vcpus": 1, "memoryMib": 128, "diskGib": 1}


@cache
def _database_client(uri: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri)


@cache
def _http(base_url: str) -> httpx.Client:
    # One client per server: the fuzz sends hundreds of requests, each on a kept-alive connection.
    return httpx.Client(base_url=base_url, timeout=30)


def ensure_template(server: Server) -> None:
    """TEMPLATE on `server`, made unless an earlier module on the shared server made it."""
    body = post_graphql(server, "mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
                        {"i": TEMPLATE})
    errors = body.get("errors") or []
    assert not errors or errors[0]["extensions"]["code"] == "CONFLICT", body


def snapshot(server: Server) -> dict[str, list[dict[str, Any]]]:
    """Every document of every writable collection, in a stable order."""
    database = _database_client(server.database_uri)[server.database_name]
    return {name: sorted(database[name].find(), key=lambda d: str(d["_id"])) for name in WRITABLE}


def admin_session(server: Server, name: str = "sec-admin") -> httpx.Client:
    """An admin signed in through the login page, sending the CSRF token as htmx does; the
    requests are otherwise a plain browser's (no HX-Request), so forms answer whole pages."""
    server.user(name, "admin")
    return server.session(name)


def post_graphql(server: Server, query: str, variables: dict[str, Any] | None = None, *,
                 token: str | None = None) -> dict[str, Any]:
    """POST as the bootstrap admin (or `token`); any status but a 5xx, and a JSON body."""
    # json.dumps escapes what UTF-8 cannot carry (a lone surrogate becomes "\\ud800"), as any
    # client's JSON may.
    response = _http(server.url).post("/graphql", content=json.dumps({"query": query, "variables": variables or {}}),
                          headers={"Authorization": f"Bearer {token or server.admin_token}",
                                   "Content-Type": "application/json"}, timeout=30)
    assert response.status_code < 500, response.text
    body: dict[str, Any] = response.json()
    return body


def refused(body: dict[str, Any], *, field: str) -> dict[str, Any]:
    """The one error of a refused request: VALIDATION_FAILED naming `field`."""
    errors = body.get("errors")
    assert errors, body
    error: dict[str, Any] = errors[0]
    assert error["extensions"]["code"] == "VALIDATION_FAILED", body
    assert error["extensions"].get("field") == field, body
    assert not body.get("data"), body
    return error


def field_error(page: str, field: str) -> str:
    """The message shown beside a form's field, or AssertionError."""
    found = re.search(rf'id="{re.escape(field)}-error">([^<]*)<', page)
    assert found, f"no message beside {field}"
    return found.group(1)

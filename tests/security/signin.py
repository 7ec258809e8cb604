"""Signing in as a browser would, from a chosen client address, and reading what the server
stored: the helpers of the account attack tests.

The test servers believe X-Forwarded-For from 127.0.0.1 (uvicorn's `--forwarded-allow-ips`
default, as behind a proxy), so `address=` makes a request come from that client address.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from pymongo import MongoClient

from tests.support.processes import Server


def browser(server: Server, *, address: str | None = None) -> httpx.Client:
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def try_sign_in(client: httpx.Client, name: str, password: str) -> httpx.Response:
    """One sign-in through the login form (303: signed in; 401: wrong; 429: throttled)."""
    form = client.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf, "the login page has no CSRF token"
    return client.post("/login", data={"name": name, "password": password, "csrf_token": csrf.group(1)})


def signed_in(server: Server, name: str, password: str, *, address: str | None = None) -> httpx.Client:
    """A client signed in as `name`, with the session's CSRF token in its headers."""
    client = browser(server, address=address)
    answer = try_sign_in(client, name, password)
    assert answer.status_code == 303, answer.text
    client.headers["X-CSRF-Token"] = csrf_of(client)
    return client


def csrf_of(client: httpx.Client) -> str:
    page = client.get("/account")
    assert page.status_code == 200, page.status_code
    found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert found
    return found.group(1)


def who(client: httpx.Client, cookie: str | None = None) -> str | None:
    """The user the server takes this client (or a bare `cookie`) for, None if anonymous."""
    cookies = {"kubekvm_session": cookie} if cookie is not None else None
    if cookies is not None:
        answer = httpx.post(str(client.base_url).rstrip("/") + "/graphql", json={"query": "{ me { kind name } }"},
                            cookies=cookies, timeout=30)
    else:
        answer = client.post("/graphql", json={"query": "{ me { kind name } }"})
    me = answer.json()["data"]["me"]
    return str(me["name"]) if me["kind"] == "user" else None


def database(server: Server) -> Any:
    client: MongoClient[dict[str, Any]] = MongoClient(server.database_uri)
    return client, client[server.database_name]


def user_doc(server: Server, name: str) -> dict[str, Any]:
    client, db = database(server)
    with client:
        found = db["users"].find_one({"name": name})
    assert found is not None
    return dict(found)


def session_count(server: Server, name: str) -> int:
    client, db = database(server)
    with client:
        return int(db["sessions"].count_documents({"user": name}))

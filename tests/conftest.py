"""Shared fixtures: real database servers and real `kubekvm serve` processes; the hooks that
fail a run on a skip not in tests/skip-allowlist.txt (`tests.support.skips`); and the plugin that
fails it when the session leaves a process, domain or scratch folder behind
(`tests.support.leftovers_plugin`); the session's one Chromium (`tests.support.browser`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pymongo
import pytest

from tests.support.processes import (
    CHEAP_PASSWORD_HASHES,
    Server,
    generous_http_timeouts,
    share_tls_context,
    start_mongoeco,
    start_secantus,
    start_server,
)

# Every skip is printed with its reason, and one not in tests/skip-allowlist.txt fails the run.
from tests.support.skips import (  # noqa: F401 (pytest finds hooks by name)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
)

# Fails the run when it leaves a process, domain or scratch folder of its own behind; and one
# Chromium for the session's browser tests (`browser`: tests.support.browser).
pytest_plugins = ["tests.support.leftovers_plugin", "tests.support.browser"]

share_tls_context()
generous_http_timeouts()


@pytest.fixture(scope="session")
def secantus_uri() -> Iterator[str]:
    uri, child = start_secantus()
    yield uri
    child.stop()


@pytest.fixture(scope="session")
def mongoeco_uri() -> Iterator[str]:
    started = start_mongoeco()
    if started is None:
        pytest.skip("mongoeco needs .venv-mongoeco (Python 3.13): run scripts/setup test")
    uri, child = started
    yield uri
    child.stop()


@pytest.fixture(scope="module")
def start_kubekvm(secantus_uri: str) -> Iterator[Callable[..., Server]]:
    """Start `kubekvm serve` processes (default: on the shared SecantusDB, fresh database),
    stopped when the test module ends: an idle server still follows its change stream and
    renews its leases, and a hundred of them left running slow every later test down."""
    started: list[Server] = []
    joined: set[str] = set()  # databases of other servers (a second replica's): theirs to drop

    def start(**kwargs: object) -> Server:
        if kwargs.get("database_name"):
            joined.add(str(kwargs["database_name"]))
        kwargs.setdefault("database_uri", secantus_uri)
        kwargs["env"] = {**CHEAP_PASSWORD_HASHES, **(kwargs.get("env") or {})}  # type: ignore[dict-item]
        server = start_server(**kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    # What the module wrote goes too: the shared database server keeps it all in memory.
    with pymongo.MongoClient(secantus_uri, serverSelectionTimeoutMS=5000, timeoutMS=30000) as client:
        for name in {server.database_name for server in started if server.database_uri == secantus_uri} - joined:
            client.drop_database(name)


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server]) -> Server:
    """One server per test module, each on a database of its own."""
    return start_kubekvm()

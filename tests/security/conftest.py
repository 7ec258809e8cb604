"""tests/security's one shared `kubekvm serve`: the attack modules that need no settings of
their own run against the same server and database (a server start is seconds of CPU, and
there are a dozen modules). Each module makes users, labs and templates of its own names;
`input_support.ensure_template` makes the one template several of them act on. The fuzz
modules and those that plant documents or need other settings start servers of their own
(`start_kubekvm`): a fuzz's hostile writes and sign-in failures must not reach the others."""

from __future__ import annotations

from collections.abc import Iterator

import pymongo
import pytest

from tests.support.processes import CHEAP_PASSWORD_HASHES, Server, start_server


@pytest.fixture(scope="package")
def shared_server(secantus_uri: str) -> Iterator[Server]:
    server = start_server(database_uri=secantus_uri, env=dict(CHEAP_PASSWORD_HASHES))
    yield server
    server.stop()
    with pymongo.MongoClient(secantus_uri, serverSelectionTimeoutMS=5000, timeoutMS=30000) as client:
        client.drop_database(server.database_name)


@pytest.fixture(scope="module")
def server(shared_server: Server) -> Server:
    return shared_server

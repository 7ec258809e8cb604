"""The service layer in-process against each MongoDB-compatible server that runs here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from kubekvm.config import Settings
from kubekvm.database import connect
from kubekvm.events import EventFeed
from kubekvm.services import Services


@pytest.fixture(params=["secantus", "mongoeco"])
async def services(request: pytest.FixtureRequest) -> AsyncIterator[Services]:
    uri = request.getfixturevalue(f"{request.param}_uri")
    connection = await connect(uri, database=f"t{uuid.uuid4().hex[:12]}")
    services = Services(settings=Settings(max_replicas=200, host_timeout_seconds=30),
                        feed=EventFeed(), database_description=request.param)
    await services.templates.seed_templates()
    await services.templates.create_template(name="tiny-linux", title="Tiny Linux", description=None, os="linux",
                                   image="tiny-linux.qcow2", vcpus=1, memory_mib=128, disk_gib=1)
    yield services
    await connection.client.drop_database(connection.database.name)
    await connection.close()

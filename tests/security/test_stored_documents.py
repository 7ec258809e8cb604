"""Attack: a document the model does not expect, planted in the database (the 2019 application
this replaces wrote such labs), must not take a page, a query or a live stream down for
everyone. Each read skips it with a warning naming its _id, and shows the rest."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from pymongo import MongoClient

from tests.support.graphql import Subscriber, websocket_session
from tests.support.processes import Server

LEGACY_LAB = {"name": "D2", "type": "TecnologiaDeComputadores", "replicas": 2, "estado": "Pendiente"}


def _data(body: dict[str, Any]) -> dict[str, Any]:
    assert not body.get("errors"), body
    result: dict[str, Any] = body["data"]
    return result


def _plant(server: Server, collection: str, document: dict[str, Any]) -> ObjectId:
    with MongoClient(server.database_uri) as client:
        inserted = client[server.database_name][collection].insert_one(dict(document)).inserted_id
    assert isinstance(inserted, ObjectId)
    return inserted


def _logged(server: Server, text: str, *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.child.log.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


async def test_a_2019_lab_document_does_not_take_the_labs_down(start_kubekvm: Callable[..., Server]) -> None:
    server = start_kubekvm()
    _data(server.graphql('mutation { createDeployment(input: {name: "good", template: "redes-neuronales", '
                         'replicas: 1}) { name } }'))
    async with websocket_session(server.ws_url, server.admin_token) as session:
        events = Subscriber(session, "subscription { deploymentEvents { kind lab } }")
        # The subscription is live once a change made after it arrives (no sleep: an acknowledgement).
        attempts = itertools.count()
        await events.until_live(
            lambda: _data(server.graphql('mutation($t: String!) { updateDeployment(name: "good", input: {title: $t}) '
                                         '{ name } }', {"t": f"probe {next(attempts)}"})),
            lambda r: r["deploymentEvents"]["lab"] == "good")

        planted = _plant(server, "deployments", LEGACY_LAB)
        legacy_machine = _plant(server, "machines", {"name": "D2-1", "deployment": "D2", "estado": "Pendiente"})
        legacy_host = _plant(server, "hosts", {"name": "old-kvm", "cpus": "cuatro"})
        legacy_template = _plant(server, "templates", {"name": "old-tpl", "titulo": "Redes 2019"})
        legacy_user = _plant(server, "users", {"name": "viejo", "rol": "profesor"})

        listed = server.graphql("{ deployments { total items { name phase } } }")
        assert not listed.get("errors"), listed
        assert [lab["name"] for lab in listed["data"]["deployments"]["items"]] == ["good"]
        assert listed["data"]["deployments"]["total"] == 1, "the total counts a lab no read can show"
        assert not server.graphql("{ machines { name } }").get("errors")
        assert not server.graphql("{ hosts { name } }").get("errors")
        assert not server.graphql("{ templates { name } }").get("errors")
        assert not server.graphql("{ users { name } }").get("errors")
        assert _data(server.graphql('{ deployment(name: "good") { name } }'))["deployment"]["name"] == "good"
        one = server.graphql('{ deployment(name: "D2") { name } }')
        assert one["errors"][0]["extensions"]["code"] == "NOT_FOUND", one

        # The live stream outlives the planted document: a later change still arrives.
        _data(server.graphql('mutation { createDeployment(input: {name: "after", template: "redes-neuronales", '
                             'replicas: 1}) { name } }'))
        await events.wait_for(lambda r: r["deploymentEvents"]["lab"] == "after")
        await events.close()

    server.user("viewer-admin", "admin")
    browser = server.session("viewer-admin")
    try:
        for path in ("/labs", "/", "/hosts", "/templates", "/users", "/new-lab"):
            page = browser.get(path)
            assert page.status_code == 200, (path, page.status_code)
        assert "good" in browser.get("/labs").text
    finally:
        browser.close()

    for document in (planted, legacy_machine, legacy_host, legacy_template, legacy_user):
        assert _logged(server, f"_id={document}"), f"no warning names {document}"
    # Nothing was "repaired" behind the owner's back: the document is still there, untouched.
    with MongoClient(server.database_uri) as client:
        kept = client[server.database_name]["deployments"].find_one({"_id": planted})
    assert kept is not None and kept["estado"] == "Pendiente"
